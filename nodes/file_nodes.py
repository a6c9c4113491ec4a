"""Save / Load nodes for attributions and masks, kept under models/cad/ (safetensors, no pickle)."""
from comfy_api.latest import io

from ..cad_core import load_attribution, load_mask, save_attribution, save_mask
from .cad_types import CadAttribution, CadMask
from .bridge import model_fingerprints
from .bridge.files import FOLDER, cad_file_changed, cad_file_path, cad_files, folder_relative, prefix_problem, \
    save_new_file
from .validation import check_choices
from .ui_text import bounded

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


def _prefix_valid(filename_prefix):
    """validate_inputs of the Save nodes (a linked prefix arrives as None and is checked when the node runs)."""
    return True if filename_prefix is None else (prefix_problem(filename_prefix) or True)


def _file_listed(file):
    return check_choices(file=(file, cad_files()))


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
        return cad_file_changed(file)

    @classmethod
    def execute(cls, file, model=None) -> io.NodeOutput:
        expected = model_fingerprints(model) if model is not None else None
        loaded = cls.LOAD(cad_file_path(file), expected)
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
