"""Attribution and mask files: safetensors (no pickle, nothing executed) with JSON metadata.

Layout: one tensor per weight key (fp32 scores, or int32 flat indices for masks) and string
metadata `cad.kind`, `cad.format_version`, `cad.fingerprint`, `cad.pack_version`, `cad.meta` (JSON of the
AttributionInfo or MaskInfo record),
and for masks `cad.shapes` (JSON {key: shape}).
"""
import contextlib
import json
import math
import os
import tempfile

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .attribution import Attribution
from .attribution_info import AttributionInfo
from .errors import CADError, CADFileError
from .fingerprint import ModelFingerprints, require_same_model
from .mask import Mask
from .mask_info import MaskInfo
from .version import FORMAT_VERSION, PACK_VERSION

KINDS = ("attribution", "mask")


def save_attribution(attribution: Attribution, path: str) -> str:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in attribution.scores.items()}
    return _write(path, tensors, _metadata("attribution", attribution.fingerprint, attribution.info.to_json_dict()))


def save_mask(mask: Mask, path: str) -> str:
    tensors = {k: v.to("cpu", torch.int32).contiguous() for k, v in mask.indices.items()}
    meta = _metadata("mask", mask.fingerprint, mask.info.to_json_dict())
    meta["cad.shapes"] = json.dumps({k: list(s) for k, s in mask.shapes.items()})
    return _write(path, tensors, meta)


def load_attribution(path: str, expected_fingerprint: "str | ModelFingerprints | None" = None) -> Attribution:
    tensors, meta = _read(path, "attribution", expected_fingerprint)
    for k, t in tensors.items():
        if not t.is_floating_point():
            raise CADFileError(f"{_name(path)}: attribution entry '{k}' holds {t.dtype} values, expected floats.")
    attribution = Attribution({k: t.float() for k, t in tensors.items()}, meta["fingerprint"],
                              _info(AttributionInfo, meta["meta"], path))
    try:
        attribution.check_usable()
    except CADError as e:
        raise CADFileError(f"{_name(path)}: {e}") from None
    return attribution


def load_mask(path: str, expected_fingerprint: "str | ModelFingerprints | None" = None) -> Mask:
    tensors, meta = _read(path, "mask", expected_fingerprint)
    try:
        shapes = _shapes(_strict_json(meta["raw"]["cad.shapes"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        raise CADFileError(f"{_name(path)}: the mask's 'cad.shapes' metadata is missing or malformed "
                           f"(expected a JSON object of weight name -> list of non-negative integers).") from None
    for k, t in tensors.items():
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CADFileError(f"{_name(path)}: mask entry '{k}' holds {t.dtype} values, expected integer indices.")
    info = _info(MaskInfo, meta["meta"], path)
    if info.scoped_weights is not None and info.scoped_weights < 0:
        raise CADFileError(f"{_name(path)}: the mask's 'scoped_weights' metadata is {info.scoped_weights!r}, "
                           f"expected a count.")
    mask = Mask({k: t.long() for k, t in tensors.items()}, shapes, meta["fingerprint"], info)
    try:
        mask.check_valid()
    except CADError as e:
        raise CADFileError(f"{_name(path)}: {e}") from None
    return mask


def read_kind(path: str) -> str:
    """'attribution' or 'mask', from the header alone (cheap; used to route a loaded file)."""
    return _header(path)["cad.kind"]


def _info(record, meta: dict, path: str):
    """The typed record of a file's 'cad.meta' (AttributionInfo or MaskInfo), or a CADFileError naming the file."""
    try:
        return record.from_json_dict(meta)
    except CADError as e:
        raise CADFileError(f"{_name(path)}: {e}") from None
    except RecursionError:
        raise CADFileError(f"{_name(path)} has malformed 'cad.meta' metadata (nested too deeply).") from None


def _metadata(kind: str, fingerprint: str, meta: dict) -> dict:
    return {"cad.kind": kind, "cad.format_version": str(FORMAT_VERSION), "cad.fingerprint": fingerprint,
            "cad.pack_version": PACK_VERSION, "cad.meta": json.dumps(meta, default=_jsonable)}


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def _strict_json(text: str):
    """JSON from a file's metadata, as a JSON parser in the browser would accept it.

    NaN/Infinity (and numbers that overflow to inf) are refused: a summary carrying them would break the
    UI's JSON. Nesting too deep for the parser is a malformed file, not a RecursionError.
    """
    def finite(token):
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {token}")
        return value

    def refuse(token):
        raise ValueError(f"non-finite number {token}")

    try:
        return json.loads(text, parse_float=finite, parse_constant=refuse)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _shapes(value) -> dict:
    """{weight name: shape} from 'cad.shapes'; every dimension a non-negative integer."""
    if not isinstance(value, dict):
        raise ValueError("not an object")
    shapes = {}
    for key, shape in value.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ValueError(f"bad shape for {key}")
        shapes[key] = tuple(shape)
    return shapes


def _write(path: str, tensors: dict, metadata: dict) -> str:
    """Never replaces a file: the name is taken by exclusive creation (FileExistsError if it exists), and the
    data goes to a temporary file next to it that is then moved onto the name, so an interrupted save leaves no
    half-written file under it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".cad-", suffix=".partial")
    os.close(handle)
    try:
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    except BaseException:
        for leftover in (partial, path):
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise
    return path


def _header(path: str) -> dict:
    if not os.path.isfile(path):
        raise CADFileError(f"CAD file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parser failure means "not readable"
        raise CADFileError(f"{_name(path)} is not a readable safetensors file (truncated or another format?): "
                           f"{_reason(e)}") from None
    if "cad.kind" not in raw:
        raise CADFileError(f"{_name(path)} is a safetensors file but not a CAD attribution or mask (no 'cad.kind' "
                           f"metadata). Did you pick a checkpoint or LoRA? Save CAD files with the CAD Save nodes.")
    if raw["cad.kind"] not in KINDS:
        raise CADFileError(f"{_name(path)} has unknown CAD kind '{raw['cad.kind']}' (expected attribution or mask).")
    try:
        version = int(raw.get("cad.format_version", ""))
    except ValueError:
        raise CADFileError(f"{_name(path)} has a missing or malformed 'cad.format_version'.") from None
    if version > FORMAT_VERSION:
        raise CADFileError(f"{_name(path)} uses CAD file format {version}, newer than this pack understands "
                           f"({FORMAT_VERSION}). Update the CAD node pack to load it.")
    if version < 1:
        raise CADFileError(f"{_name(path)} has an invalid CAD file format version {version}.")
    return raw


def _read(path: str, kind: str, expected_fingerprint):
    raw = _header(path)
    if raw["cad.kind"] != kind:
        raise CADFileError(f"{_name(path)} is a CAD {raw['cad.kind']} file, but a CAD {kind} was expected here. "
                           f"Use the Load CAD {raw['cad.kind'].capitalize()} node for it.")
    fingerprint = raw.get("cad.fingerprint", "")
    if expected_fingerprint is not None:
        require_same_model(fingerprint, expected_fingerprint, _name(path), "this model",
                           "Attribute this model again, or load the checkpoint it was made for.", CADFileError)
    try:
        meta = _strict_json(raw.get("cad.meta", "{}"))
        if not isinstance(meta, dict):
            raise ValueError
    except ValueError:
        raise CADFileError(f"{_name(path)} has malformed 'cad.meta' metadata (expected a JSON object without "
                           f"NaN/Infinity).") from None
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parser failure means "not readable"
        raise CADFileError(f"{_name(path)} could not be read completely (truncated or corrupt?): "
                           f"{_reason(e)}") from None
    if not tensors:
        raise CADFileError(f"{_name(path)} holds no tensors; it is not a usable CAD {kind}.")
    return tensors, {"fingerprint": fingerprint, "meta": meta, "raw": raw}


def _name(path: str) -> str:
    return os.path.basename(path)


def _reason(error: Exception) -> str:
    """The parser's own words; the exception type too where it is not one the parser documents."""
    if isinstance(error, (SafetensorError, OSError, ValueError)):
        return str(error)
    return f"{type(error).__name__}: {error}"
