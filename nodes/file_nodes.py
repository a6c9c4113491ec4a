"""Save / Load nodes for attributions and masks, kept under models/cad/ (safetensors, no pickle)."""
import os

import folder_paths
from comfy_api.latest import io

from ..cad_core import CADError, load_attribution, load_mask, save_attribution, save_mask
from .cad_types import CadAttribution, CadMask
from .bridge import model_fingerprints
from .validation import check_choices
from .ui_text import bounded

FOLDER = "cad"
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def cad_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]


def prefix_problem(filename_prefix, folder: str = FOLDER) -> str | None:
    """Why a filename_prefix cannot name a file in models/<folder>/, or None."""
    if not isinstance(filename_prefix, str):
        return f"filename_prefix must be text, got {type(filename_prefix).__name__}."
    shown = repr(filename_prefix if len(filename_prefix) <= 80 else filename_prefix[:80] + "…")
    bad = sorted({f"U+{ord(c):04X}" for c in filename_prefix if ord(c) < 32 or ord(c) == 127})
    if bad:
        return (f"filename_prefix {shown} contains control characters ({', '.join(bad[:5])}), which no file name "
                f"may hold. Use letters, digits, '_', '-' and '/' for subfolders, e.g. 'cad/cat_erase'.")
    parts = filename_prefix.replace("\\", "/").split("/")
    if os.path.isabs(filename_prefix) or ".." in parts:
        return (f"filename_prefix {shown} must be a relative name inside models/{folder}/ (no absolute paths, "
                f"no '..'), e.g. 'cad/cat_erase'.")
    if not parts[-1].strip(". "):
        return (f"filename_prefix {shown} has no file name (it is empty or only dots), so the file would be hidden "
                f"or nameless. Give it a name, e.g. 'cad/cat_erase'.")
    return None


def save_new_file(filename_prefix: str, write, folder: str = FOLDER) -> str:
    """write(path) into a new numbered file for the prefix inside models/<folder> (ComfyUI's first path for that
    model folder), never over an existing one: the counter moves on while a name is taken (cad_core's writers
    create files exclusively)."""
    problem = prefix_problem(filename_prefix, folder)
    if problem:
        raise CADError(problem)
    root = _folder_root(folder)
    try:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
    except Exception as e:  # ComfyUI raises a bare Exception for paths outside the folder
        raise CADError(f"Cannot save with filename_prefix '{filename_prefix}': {e}") from None
    os.makedirs(folder, exist_ok=True)
    for number in range(counter, counter + 100_000):
        try:
            return write(os.path.join(folder, f"{name}_{number:05}_.safetensors"))
        except FileExistsError:
            continue
    raise CADError(f"models/{folder}/ already holds 100,000 files named '{name}_NNNNN_': choose another prefix.")


def _folder_root(folder: str) -> str:
    """Where new files of a model folder go: ComfyUI's first path for it."""
    return os.path.abspath(folder_paths.get_folder_paths(folder)[0])


def folder_relative(path: str, folder: str = FOLDER) -> str:
    """A file save_new_file wrote, named as ComfyUI lists the files of that model folder."""
    return os.path.relpath(path, _folder_root(folder))


def _saved_ui(path):
    rel = folder_relative(path)
    return {"cad_saved": [{"file": rel}], "text": [f"saved models/{FOLDER}/{rel}"]}


def _file_schema(node_id, display_name, description, inputs, outputs, is_output_node=False):
    return io.Schema(node_id=node_id, display_name=display_name, category="CAD/files", description=description,
                     inputs=inputs, outputs=outputs, is_output_node=is_output_node)


def _prefix_input(default):
    return io.String.Input("filename_prefix", default=default,
                           tooltip=f"File name inside models/{FOLDER}/; a counter and .safetensors are added.")


def _file_input():
    return io.Combo.Input("file", options=cad_files(), tooltip=f"A CAD .safetensors file in models/{FOLDER}/.")


def _model_check_input():
    return io.Model.Input("model", optional=True,
                          tooltip="If connected, the file is refused unless it was made for this model.")


def _resolve(file):
    path = folder_paths.get_full_path(FOLDER, file)
    if path is None:
        raise CADError(f"'{file}' is not in models/{FOLDER}/. Put CAD files there and refresh (press R).")
    return path


def _prefix_valid(filename_prefix):
    """validate_inputs of the Save nodes (a linked prefix arrives as None and is checked when the node runs)."""
    return True if filename_prefix is None else (prefix_problem(filename_prefix) or True)


def _file_listed(file):
    return check_choices(file=(file, cad_files()))


def _file_changed(file, **_):
    path = folder_paths.get_full_path(FOLDER, file)
    return os.path.getmtime(path) if path else file


class CADSaveAttribution(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _file_schema("CADSaveAttribution", "Save CAD Attribution",
                            "Writes an attribution to models/cad/ so it can be reused without recomputing.",
                            [CadAttribution.Input("attribution", tooltip="From CAD Attribute or CAD Sum Attributions."),
                             _prefix_input("cad/attribution")], [], is_output_node=True)

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return _prefix_valid(filename_prefix)

    @classmethod
    def execute(cls, attribution, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui=bounded(_saved_ui(save_new_file(filename_prefix, lambda p: save_attribution(attribution, p)))))


class CADSaveMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _file_schema("CADSaveMask", "Save CAD Mask", "Writes a mask to models/cad/ to share or reuse.",
                            [CadMask.Input("mask", tooltip="From CAD Erase Mask, CAD Amplify Mask or CAD Combine "
                                           "Masks."),
                             _prefix_input("cad/mask")],
                            [], is_output_node=True)

    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return _prefix_valid(filename_prefix)

    @classmethod
    def execute(cls, mask, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui=bounded(_saved_ui(save_new_file(filename_prefix, lambda p: save_mask(mask, p)))))


class _LoadCADFile(io.ComfyNode):
    """Shared by the Load nodes: validate the file choice, reload when the file changes, check the model."""

    LOAD = None      # cad_core loader: (path, expected_fingerprint) -> Attribution | Mask
    UI_KEY = None

    @classmethod
    def validate_inputs(cls, file):
        return _file_listed(file)

    @classmethod
    def fingerprint_inputs(cls, file, **kwargs):
        return _file_changed(file)

    @classmethod
    def execute(cls, file, model=None) -> io.NodeOutput:
        expected = model_fingerprints(model) if model is not None else None
        loaded = cls.LOAD(_resolve(file), expected)
        return io.NodeOutput(loaded, ui=bounded({cls.UI_KEY: [loaded.summary()], "text": [loaded.summary_text()]}))


class CADLoadAttribution(_LoadCADFile):
    LOAD, UI_KEY = staticmethod(load_attribution), "cad_summary"

    @classmethod
    def define_schema(cls):
        return _file_schema("CADLoadAttribution", "Load CAD Attribution",
                            "Reads an attribution saved by Save CAD Attribution.", [_file_input(), _model_check_input()],
                            [CadAttribution.Output(display_name="attribution",
                                                   tooltip="The loaded scores; connect to CAD Erase/Amplify Mask.")])


class CADLoadMask(_LoadCADFile):
    LOAD, UI_KEY = staticmethod(load_mask), "cad_mask"

    @classmethod
    def define_schema(cls):
        return _file_schema("CADLoadMask", "Load CAD Mask", "Reads a mask saved by Save CAD Mask.",
                            [_file_input(), _model_check_input()],
                            [CadMask.Output(display_name="mask",
                                            tooltip="The loaded mask; connect to Apply CAD Mask.")])
