"""Fuzzing the CAD file loaders (hypothesis, a fixed number of derandomized cases, so CI is repeatable).

Whatever the bytes, load_attribution / load_mask / read_kind either return a usable object or raise the
pack's own CADFileError with a message; no safetensors, torch, json or Python error may escape, and
nothing in a file is ever executed. N = 4 strategies x FUZZ_EXAMPLES cases (stated in the note).
"""
import json
import os
import struct
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cad_pack.cad_core import (Attribution, AttributionInfo, CADFileError, Mask, MaskInfo, load_attribution, load_mask,
                               read_kind, save_attribution, save_mask)
from cad_pack.cad_core.serialization import _metadata

FUZZ_EXAMPLES = 150
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])
KEY_A = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
KEY_B = "diffusion_model.output_blocks.0.1.transformer_blocks.0.attn2.to_k.weight"
FINGERPRINT = "0123456789abcdef"
WORKDIR = tempfile.mkdtemp(prefix="cad_fuzz_")
TARGET = os.path.join(WORKDIR, "fuzzed.safetensors")


def _valid_files():
    g = torch.Generator().manual_seed(0)
    a = Attribution({KEY_A: torch.randn((6, 5), generator=g), KEY_B: torch.randn((3, 4), generator=g)}, FINGERPRINT,
                    AttributionInfo(objective="concept_gap", scope="ff", steps=3, guidance=3.0))
    m = Mask({KEY_A: torch.tensor([0, 3, 29]), KEY_B: torch.tensor([1, 2])}, {KEY_A: (6, 5), KEY_B: (3, 4)}, FINGERPRINT,
             MaskInfo(mode="erase", ratio=0.1, granularity="per_row", scoped_weights=42))
    out = {}
    for name, obj, save in (("attribution", a, save_attribution), ("mask", m, save_mask)):
        path = os.path.join(WORKDIR, f"valid_{name}.safetensors")
        save(obj, path)
        with open(path, "rb") as f:
            out[name] = f.read()
    return out


VALID = _valid_files()


def check_only_clear_errors(data: bytes, expected_fingerprint=None):
    with open(TARGET, "wb") as f:
        f.write(data)
    outcomes = []
    for load in (load_attribution, load_mask):
        try:
            loaded = load(TARGET, expected_fingerprint)
        except CADFileError as e:
            assert str(e).strip(), "a CADFileError without a message"
            outcomes.append("refused")
            continue
        # What the Load nodes do with a loaded file right away must work too.
        summary, text = loaded.summary(), loaded.summary_text()
        json.dumps(summary, allow_nan=False)  # the UI's JSON carries the summary
        assert isinstance(text, str)
        if isinstance(loaded, Mask):
            loaded.check_valid()
        else:
            loaded.check_usable()
        outcomes.append("loaded")
    event(f"attribution {outcomes[0]}, mask {outcomes[1]}")
    try:
        assert read_kind(TARGET) in ("attribution", "mask")
    except CADFileError:
        pass
    return outcomes


# --- 1. mutations of valid files ------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("header_length"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("header_text"), st.integers(0, 10_000), st.text(min_size=1, max_size=16)),
)


def mutate(data: bytes, op) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[:op[1] % (len(data) + 1)]
    if kind == "flip":
        if not data:
            return data
        b = bytearray(data)
        for pos, value in op[1]:
            b[pos % len(b)] = value
        return bytes(b)
    if kind == "insert":
        pos = op[1] % (len(data) + 1)
        return data[:pos] + op[2] + data[pos:]
    if kind == "header_length":
        return struct.pack("<Q", op[1]) + data[8:]
    # replace text inside the JSON header and restate its length
    if len(data) < 8:
        return data
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].decode("utf-8", "replace")
    pos = op[1] % (len(header) + 1)
    header = (header[:pos] + op[2] + header[pos + len(op[2]):]).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


@SETTINGS
@given(which=st.sampled_from(["attribution", "mask"]), ops=st.lists(mutation, min_size=1, max_size=3),
       check_model=st.booleans())
def test_fuzz_mutated_valid_files(which, ops, check_model):
    data = VALID[which]
    for op in ops:
        data = mutate(data, op)
    check_only_clear_errors(data, FINGERPRINT if check_model else None)


# --- 2. well-formed safetensors with arbitrary headers and metadata --------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
metadata_value = st.one_of(
    st.text(max_size=24),
    json_values.map(json.dumps),
    st.sampled_from(["attribution", "mask", "lora", "", "1", "0", "-1", "2", "999", "1.0", " 1", "NaN",
                     '{"x": NaN}', '{"x": Infinity}', '{"a": 1e999}', "[" * 5000, '{"k": [2, -3]}',
                     json.dumps({KEY_A: [6, 5], KEY_B: [3, 4]}), json.dumps({KEY_A: [6.0, 5]}),
                     json.dumps({KEY_A: ["6", 5]}), json.dumps({KEY_A: [True, 5]}),
                     json.dumps({"scoped_weights": "many"}), json.dumps({"scoped_weights": -4})]))
metadata = st.dictionaries(
    st.sampled_from(["cad.kind", "cad.format_version", "cad.fingerprint", "cad.pack_version", "cad.meta",
                     "cad.shapes", "format", "other"]),
    metadata_value, max_size=8)
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "C64",
          "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "ZZ", ""]
tensor_spec = st.tuples(
    st.sampled_from([KEY_A, KEY_B, "x", "", "__metadata__x", "diffusion_model.input_blocks.²"]),
    st.sampled_from(DTYPES),
    st.lists(st.integers(-2, 7), max_size=3),
    st.booleans())  # True: consistent data_offsets for dtype/shape; False: arbitrary ones


def build_safetensors(meta, specs, payload_seed, offsets_noise):
    header, payload = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    sizes = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2}
    for key, dtype, shape, consistent in specs:
        count = 1
        for d in shape:
            count *= max(d, 0)
        nbytes = count * sizes.get(dtype, 1) if consistent else (offsets_noise % 97)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(payload), len(payload) + nbytes]}
        payload += bytes((payload_seed + i * 31) % 256 for i in range(nbytes))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@SETTINGS
@given(meta=st.one_of(st.none(), metadata, metadata.map(lambda m: {**_metadata("mask", FINGERPRINT, {}), **m}),
                      metadata.map(lambda m: {**_metadata("attribution", FINGERPRINT, {}), **m})),
       specs=st.lists(tensor_spec, max_size=3), payload_seed=st.integers(0, 255), offsets_noise=st.integers(0, 10**6),
       check_model=st.booleans())
def test_fuzz_arbitrary_headers_and_metadata(meta, specs, payload_seed, offsets_noise, check_model):
    data = build_safetensors(meta, specs, payload_seed, offsets_noise)
    check_only_clear_errors(data, FINGERPRINT if check_model else None)


# --- 3. real tensors with random values, dtypes and metadata ---------------------------------------

INDEX_DTYPES = [torch.int32, torch.int64, torch.int16, torch.uint8, torch.float32, torch.bool]
SCORE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32]


@SETTINGS
@given(kind=st.sampled_from(["attribution", "mask"]),
       overrides=st.dictionaries(st.sampled_from(["cad.kind", "cad.format_version", "cad.fingerprint", "cad.meta",
                                                  "cad.shapes", "cad.pack_version"]), metadata_value, max_size=2),
       scores=st.lists(st.floats(width=32), min_size=0, max_size=12),
       indices=st.lists(st.integers(-3, 40), max_size=8), sort_unique=st.booleans(),
       dtype_pick=st.integers(0, 5), shape=st.sampled_from([[6, 5], [3, 4], [0], [30], [6, 5, 1], []]),
       check_model=st.booleans())
def test_fuzz_real_tensors_with_random_metadata(kind, overrides, scores, indices, sort_unique, dtype_pick, shape,
                                               check_model):
    from safetensors.torch import save_file
    meta = _metadata(kind, FINGERPRINT, {"mode": "erase", "scoped_weights": 30} if kind == "mask" else {"scope": "ff"})
    if kind == "mask":
        meta["cad.shapes"] = json.dumps({KEY_A: shape})
        values = sorted(set(indices)) if sort_unique else indices
        dtype = INDEX_DTYPES[dtype_pick % len(INDEX_DTYPES)]
        if dtype in (torch.uint8, torch.bool):
            values = [abs(v) for v in values]
        tensors = {KEY_A: torch.tensor(values, dtype=torch.int64).to(dtype)}
    else:
        tensors = {KEY_A: torch.tensor(scores, dtype=torch.float32).to(SCORE_DTYPES[dtype_pick % len(SCORE_DTYPES)])}
    meta.update(overrides)
    with tempfile.NamedTemporaryFile(dir=WORKDIR, suffix=".safetensors", delete=False) as f:
        path = f.name
    try:
        save_file(tensors, path, metadata=meta)
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.remove(path)
    check_only_clear_errors(data, FINGERPRINT if check_model else None)


# --- 4. random bytes ------------------------------------------------------------------------------

@SETTINGS
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"{", struct.pack("<Q", 2)]),
       data=st.binary(max_size=512))
def test_fuzz_random_bytes(prefix, data):
    assert check_only_clear_errors(prefix + data) == ["refused", "refused"]


# --- targeted cases the random search is unlikely to hit -------------------------------------------

@pytest.mark.parametrize("meta,phrase", [
    ({"cad.meta": "[" * 100_000 + "]" * 100_000}, "malformed 'cad.meta'"),  # RecursionError in json
    ({"cad.meta": '{"seconds": NaN}'}, "malformed 'cad.meta'"),
    ({"cad.meta": '{"seconds": 1e999}'}, "malformed 'cad.meta'"),
    ({"cad.meta": '{"seed": ' + "9" * 5000 + "}"}, "malformed 'cad.meta'"),  # int too long for Python to parse
    ({"cad.shapes": "[" * 100_000}, "cad.shapes"),
    ({"cad.shapes": json.dumps({KEY_A: [1e999]}).replace("inf", "1e999")}, "cad.shapes"),
    ({"cad.shapes": json.dumps({KEY_A: [2.5, 2]})}, "cad.shapes"),
    ({"cad.shapes": json.dumps({KEY_A: [-1, 2]})}, "cad.shapes"),
    ({"cad.meta": json.dumps({"scoped_weights": "many"})}, "scoped_weights"),
    ({"cad.meta": json.dumps({"scoped_weights": 1.5})}, "scoped_weights"),
])
def test_hostile_mask_metadata_is_refused(tmp_path, meta, phrase):
    base = _metadata("mask", FINGERPRINT, {})
    base["cad.shapes"] = json.dumps({KEY_A: [6, 5]})
    path = str(tmp_path / "hostile.safetensors")
    from safetensors.torch import save_file
    save_file({KEY_A: torch.tensor([1, 2], dtype=torch.int32)}, path, metadata={**base, **meta})
    with pytest.raises(CADFileError, match=phrase):
        load_mask(path)


def test_float_mask_indices_are_refused_not_truncated(tmp_path):
    from safetensors.torch import save_file
    meta = _metadata("mask", FINGERPRINT, {})
    meta["cad.shapes"] = json.dumps({KEY_A: [6, 5]})
    path = str(tmp_path / "float_indices.safetensors")
    save_file({KEY_A: torch.tensor([0.9, 2.7])}, path, metadata=meta)
    with pytest.raises(CADFileError, match="expected integer indices"):
        load_mask(path)
