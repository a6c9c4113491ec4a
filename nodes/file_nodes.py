"""Save / Load nodes for attributions and masks, kept under models/cad/ (safetensors, no pickle)."""
import os

import folder_paths
from comfy_api.latest import io

from ..cad_core import CADError, load_attribution, load_mask, save_attribution, save_mask
from .cad_types import CadAttribution, CadMask
from .bridge import fingerprint_of
from .validation import check_choices

FOLDER = "cad"
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def cad_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]


def save_path(filename_prefix: str) -> str:
    """A new numbered file for the prefix inside models/cad; prefixes that escape the folder are refused."""
    root = os.path.abspath(folder_paths.get_folder_paths(FOLDER)[0])
    if os.path.isabs(filename_prefix) or ".." in filename_prefix.replace("\\", "/").split("/"):
        raise CADError(f"filename_prefix '{filename_prefix}' must be a relative name inside models/{FOLDER}/ "
                       f"(no absolute paths, no '..'), e.g. 'cad/cat_erase'.")
    try:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
    except Exception as e:  # ComfyUI raises a bare Exception for paths outside the folder
        raise CADError(f"Cannot save with filename_prefix '{filename_prefix}': {e}") from None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}_{counter:05}_.safetensors")


def _saved_ui(path):
    root = os.path.abspath(folder_paths.get_folder_paths(FOLDER)[0])
    rel = os.path.relpath(path, root)
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
                            [CadAttribution.Input("attribution", tooltip="From CAD Attribute."),
                             _prefix_input("cad/attribution")], [], is_output_node=True)

    @classmethod
    def execute(cls, attribution, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui=_saved_ui(save_attribution(attribution, save_path(filename_prefix))))


class CADSaveMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _file_schema("CADSaveMask", "Save CAD Mask", "Writes a mask to models/cad/ to share or reuse.",
                            [CadMask.Input("mask", tooltip="From a CAD mask node."), _prefix_input("cad/mask")],
                            [], is_output_node=True)

    @classmethod
    def execute(cls, mask, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui=_saved_ui(save_mask(mask, save_path(filename_prefix))))


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
        expected = fingerprint_of(model) if model is not None else None
        loaded = cls.LOAD(_resolve(file), expected)
        return io.NodeOutput(loaded, ui={cls.UI_KEY: [loaded.summary()], "text": [loaded.summary_text()]})


class CADLoadAttribution(_LoadCADFile):
    LOAD, UI_KEY = staticmethod(load_attribution), "cad_summary"

    @classmethod
    def define_schema(cls):
        return _file_schema("CADLoadAttribution", "Load CAD Attribution",
                            "Reads an attribution saved by Save CAD Attribution.", [_file_input(), _model_check_input()],
                            [CadAttribution.Output(display_name="attribution", tooltip="The loaded scores.")])


class CADLoadMask(_LoadCADFile):
    LOAD, UI_KEY = staticmethod(load_mask), "cad_mask"

    @classmethod
    def define_schema(cls):
        return _file_schema("CADLoadMask", "Load CAD Mask", "Reads a mask saved by Save CAD Mask.",
                            [_file_input(), _model_check_input()],
                            [CadMask.Output(display_name="mask", tooltip="The loaded mask.")])
