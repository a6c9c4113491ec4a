"""Bad and hostile files and file names for the Save/Load CAD nodes, through the real ComfyUI server.

Each is refused with a clear message at validation (400) or by the node that reads or writes it;
nothing is written outside models/cad/ and output/; nothing in a file is executed (no pickle).
"""
import json
import os
import pickle
import tempfile
import uuid

import pytest
import torch
from safetensors.torch import save_file

from cad_pack.cad_core import Attribution, AttributionInfo, Mask, MaskInfo, save_attribution, save_mask
from cad_pack.cad_core.serialization import _metadata

from robustness_graphs import server_model_fingerprint, snapshot_files, with_branches

pytestmark = pytest.mark.server

KEY = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
SHAPE = (320, 1280)
OTHER_MODEL = "fedcba9876543210"
ALLOWED = ("models/cad", "output", "temp", "user")  # user/: ComfyUI's own database and settings


def cad_dir(server):
    path = os.path.join(server.base_dir, "models", "cad")
    os.makedirs(path, exist_ok=True)
    return path


def outside_allowed(server):
    return snapshot_files(server.base_dir, skip=ALLOWED)


class Marker:
    """Unpickling this creates a file: proof that a loader executed pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_payload(kind, marker):
    if kind == "pickle":
        return pickle.dumps({"diffusion_model.x": Marker(marker)}, protocol=2)
    with tempfile.TemporaryDirectory() as d:  # torch.save: a zip holding a pickle
        path = os.path.join(d, "payload.pt")
        torch.save({"diffusion_model.x": Marker(marker)}, path)
        with open(path, "rb") as f:
            return f.read()


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
def test_pickle_payload_renamed_to_safetensors_is_refused_and_never_executed(comfy_server, kind):
    scratch = tempfile.mkdtemp(prefix="cad_pickle_")
    # The payload is live: unpickling it really writes its marker.
    live_marker = os.path.join(scratch, "executed_here")
    data = pickle_payload(kind, live_marker)
    if kind == "pickle":
        pickle.loads(data)
    else:
        with tempfile.NamedTemporaryFile(suffix=".pt") as f:
            f.write(data)
            f.flush()
            torch.load(f.name, weights_only=False)
    assert os.path.exists(live_marker)

    marker = os.path.join(scratch, "executed_by_server")
    name = f"payload_{kind}.safetensors"
    with open(os.path.join(cad_dir(comfy_server), name), "wb") as f:
        f.write(pickle_payload(kind, marker))
    for loader in ("CADLoadMask", "CADLoadAttribution"):
        message = expect_load_error(comfy_server, loader, name, with_model=False)
        assert "not a readable safetensors file" in message, message
    assert not os.path.exists(marker), "the server executed a pickle payload"


def safetensors_bytes(tensors, metadata):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        save_file(tensors, path, metadata=metadata)
        with open(path, "rb") as f:
            return f.read()


def valid_mask(fingerprint):
    return Mask({KEY: torch.arange(0, 4000, 7)}, {KEY: SHAPE}, fingerprint, MaskInfo(mode="erase", ratio=0.01))


def valid_attribution(fingerprint):
    scores = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return Attribution({KEY: scores}, fingerprint, AttributionInfo(objective="concept_gap", scope="ff"))


def put(save, obj, folder, name):
    """The test's own copy of a file in the server's folder (saves never replace a file, so an earlier copy goes)."""
    path = os.path.join(folder, name)
    if os.path.exists(path):
        os.remove(path)
    return save(obj, path)


def file_bytes(save, obj):
    with tempfile.TemporaryDirectory() as d:
        path = save(obj, os.path.join(d, "f.safetensors"))
        with open(path, "rb") as f:
            return f.read()


def bad_files(fingerprint):
    """name -> (bytes, loader node, connect model?, phrase the error must contain)."""
    mask_meta = _metadata("mask", fingerprint, {"mode": "erase"})
    mask_meta["cad.shapes"] = json.dumps({KEY: list(SHAPE)})
    indices = {KEY: torch.arange(0, 100, dtype=torch.int32)}
    good_mask = file_bytes(save_mask, valid_mask(fingerprint))
    good_attribution = file_bytes(save_attribution, valid_attribution(fingerprint))
    return {
        "truncated_mask": (good_mask[:len(good_mask) // 2], "CADLoadMask", False, "truncated"),
        "truncated_attribution": (good_attribution[:len(good_attribution) * 2 // 3], "CADLoadAttribution", False,
                                  "truncated"),
        "png_renamed": (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "CADLoadMask", False, "not a readable safetensors file"),
        "text_file": (b"this is not a CAD file\n" * 20, "CADLoadAttribution", False, "not a readable safetensors file"),
        "empty": (b"", "CADLoadMask", False, "not a readable safetensors file"),
        "lora_like_no_metadata": (safetensors_bytes({"lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, None),
                                  "CADLoadMask", False, "not a CAD attribution or mask"),
        "unknown_kind": (safetensors_bytes(indices, {**mask_meta, "cad.kind": "lora"}), "CADLoadMask", False,
                         "unknown CAD kind 'lora'"),
        "missing_version": (safetensors_bytes(indices, {k: v for k, v in mask_meta.items()
                                                        if k != "cad.format_version"}),
                            "CADLoadMask", False, "missing or malformed 'cad.format_version'"),
        "future_version": (safetensors_bytes(indices, {**mask_meta, "cad.format_version": "2"}), "CADLoadMask", False,
                           "newer than this pack understands"),
        "missing_shapes": (safetensors_bytes(indices, {k: v for k, v in mask_meta.items() if k != "cad.shapes"}),
                           "CADLoadMask", False, "'cad.shapes' metadata is missing or malformed"),
        "meta_not_json": (safetensors_bytes(indices, {**mask_meta, "cad.meta": "{mode: erase"}), "CADLoadMask", False,
                          "malformed 'cad.meta'"),
        "meta_with_nan": (safetensors_bytes(indices, {**mask_meta, "cad.meta": '{"ratio": NaN}'}), "CADLoadMask", False,
                          "malformed 'cad.meta'"),
        "indices_out_of_range": (safetensors_bytes({KEY: torch.tensor([5, 409600], dtype=torch.int32)}, mask_meta),
                                 "CADLoadMask", False, "outside its weight"),
        "mask_for_another_model": (file_bytes(save_mask, valid_mask(OTHER_MODEL)), "CADLoadMask", True,
                                   "made for another model"),
        "attribution_for_another_model": (file_bytes(save_attribution, valid_attribution(OTHER_MODEL)),
                                          "CADLoadAttribution", True, "made for another model"),
        "attribution_as_mask": (good_attribution, "CADLoadMask", False, "but a CAD mask was expected"),
        "mask_as_attribution": (good_mask, "CADLoadAttribution", False, "but a CAD attribution was expected"),
    }


def load_graph(server, loader, file, with_model):
    """loader -> (Erase Mask) -> Apply CAD Mask -> KSampler -> SaveImage, on the test checkpoint."""
    load = {"class_type": loader, "inputs": {"file": file}}
    if with_model:
        load["inputs"]["model"] = ["1", 0]
    nodes = {"L": load}
    if loader == "CADLoadAttribution":
        nodes["E"] = {"class_type": "CADEraseMask", "inputs": {"attribution": ["L", 0], "ratio": 0.01,
                                                               "granularity": "per_matrix"}}
    nodes["A"] = {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": [list(nodes)[-1], 0],
                                                           "strength": 1.0}}
    return with_branches(server.ckpt_name, {"loaded": nodes})


def expect_load_error(server, loader, file, with_model):
    result = server.run(load_graph(server, loader, file, with_model), timeout=300)
    assert result["status"] == "error", (file, result["status"])
    error = result["error"]
    assert error["node_id"] == "L", error
    assert error["exception_type"].endswith("CADFileError"), error["exception_type"]
    return error["exception_message"]


def test_bad_files_are_refused_with_clear_messages(comfy_server):
    fingerprint = server_model_fingerprint(comfy_server)
    before = outside_allowed(comfy_server)
    cases = bad_files(fingerprint)
    for name, (data, _, _, _) in cases.items():
        with open(os.path.join(cad_dir(comfy_server), f"bad_{name}.safetensors"), "wb") as f:
            f.write(data)
    put(save_mask, valid_mask(fingerprint), cad_dir(comfy_server), "good_mask.safetensors")
    put(save_attribution, valid_attribution(fingerprint), cad_dir(comfy_server), "good_attribution.safetensors")

    observed = {}
    for name, (_, loader, with_model, phrase) in cases.items():
        message = expect_load_error(comfy_server, loader, f"bad_{name}.safetensors", with_model)
        observed[name] = message.strip()
        assert phrase in message, (name, message)
        assert f"bad_{name}.safetensors" in message or "another model" in message, (name, message)
    # The same graphs run with good files: the refusals above are about the files.
    for loader, file in (("CADLoadMask", "good_mask.safetensors"), ("CADLoadAttribution", "good_attribution.safetensors")):
        result = comfy_server.run(load_graph(comfy_server, loader, file, with_model=True), timeout=300)
        assert result["status"] == "success", result["error"]
    assert outside_allowed(comfy_server) == before
    print("\n" + "\n".join(f"{k}: {v}" for k, v in observed.items()))


@pytest.mark.parametrize("loader", ["CADLoadMask", "CADLoadAttribution"])
@pytest.mark.parametrize("file", ["../../outside.safetensors", "/etc/passwd", "..\\..\\x.safetensors",
                                  "cad/../../../x.safetensors", "", 7])
def test_file_widget_outside_the_cad_folder_fails_validation(comfy_server, loader, file):
    status, body = comfy_server.post_prompt(load_graph(comfy_server, loader, file, with_model=False))
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"]["L"]["errors"]
    assert any(e["type"] == "custom_validation_failed" and "not one of" in e["details"] for e in errors), errors


ESCAPES = ["../../escape_rel", "../../../escape_deeper", "cad/../../../escape_mixed", "..", "../",
           "..\\..\\escape_backslash", "cad/./../../escape_dot"]


@pytest.mark.parametrize("what", ["attribution", "mask"])
def test_save_refuses_prefixes_that_leave_the_cad_folder(comfy_server, what):
    folder = cad_dir(comfy_server)
    source = f"good_{what}.safetensors"
    fingerprint = server_model_fingerprint(comfy_server)
    if what == "mask":
        put(save_mask, valid_mask(fingerprint), folder, source)
    else:
        put(save_attribution, valid_attribution(fingerprint), folder, source)
    absolute = os.path.join(tempfile.gettempdir(), f"cad_escape_{uuid.uuid4().hex}")
    before = outside_allowed(comfy_server)
    cad_before = set(os.listdir(folder))
    for prefix in ESCAPES + [absolute, absolute + "/sub/file"]:
        loader, saver = ("CADLoadMask", "CADSaveMask") if what == "mask" else ("CADLoadAttribution", "CADSaveAttribution")
        graph = {"L": {"class_type": loader, "inputs": {"file": source}},
                 "S": {"class_type": saver, "inputs": {what: ["L", 0], "filename_prefix": prefix}}}
        status, body = comfy_server.post_prompt(graph)     # refused when queued (the prefix is a widget) ...
        if status == 200:                                    # ... or, had it passed, when the node runs
            entry = comfy_server.wait(body["prompt_id"], timeout=300)
            assert entry["status"]["status_str"] == "error", (prefix, entry["status"])
            message = dict(entry["status"]["messages"])["execution_error"]["exception_message"]
        else:
            assert status == 400 and list(body["node_errors"]) == ["S"], (prefix, body)
            message = json.dumps(body["node_errors"]["S"])
        assert "must be a relative name inside models/cad" in message or "Cannot save" in message, (prefix, message)
    assert not os.path.exists(absolute)
    assert set(os.listdir(folder)) == cad_before
    assert outside_allowed(comfy_server) == before
    parents = [os.path.dirname(comfy_server.base_dir), os.path.dirname(os.path.dirname(comfy_server.base_dir))]
    for parent in parents:
        assert not [n for n in os.listdir(parent) if n.startswith("escape_")], parent
