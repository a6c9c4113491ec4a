"""Save CAD Mask as LoRA / Save CAD Edit as LoRA: an edit as a file that ComfyUI's own LoraLoader (and other UIs'
loaders) apply; Load CAD Edit: such a file applied again with CAD's check that it belongs to the model."""
import os

from comfy_api.latest import io

import folder_paths

from ..cad_core import CADError
from ..cad_core.edit import edit_as_lora, load_edit_lora
from ..cad_core.export import save_lora
from .bridge import model_fingerprints
from .bridge.edits import apply_edit
from .bridge.export import lora_from_mask
from .bridge.files import folder_relative, prefix_problem, save_new_file
from .cad_types import CadEdit, CadMask
from .ui_text import bounded
from .validation import check_choices, check_numbers, require_numbers

LORAS = "loras"


def _prefix_input(default):
    return io.String.Input("filename_prefix", default=default,
                           tooltip="File name inside models/loras/; a counter and .safetensors are added.")


def _lora_name_output():
    return io.String.Output(display_name="lora_name", tooltip="The file's name as LoraLoader lists it.")


def _save(tensors, filename_prefix, source, what) -> io.NodeOutput:
    """Write `tensors` as a new LoRA file in models/loras/ and report it on the node."""
    path = save_new_file(filename_prefix, lambda p: save_lora(tensors, p, source), folder=LORAS)
    name = folder_relative(path, LORAS)
    text = (f"saved models/{LORAS}/{name}: {len(tensors)} matrices, {what}, {os.path.getsize(path) / 2**20:,.1f} "
            f"MiB. Load it with LoraLoaderModelOnly on the same model.")
    return io.NodeOutput(name, ui=bounded({"cad_saved": [{"file": name, "folder": LORAS}], "text": [text]}))


class _SaveAsLoRA(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, filename_prefix=None):
        return True if filename_prefix is None else (prefix_problem(filename_prefix, LORAS) or True)


class CADSaveMaskAsLoRA(_SaveAsLoRA):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADSaveMaskAsLoRA", display_name="Save CAD Mask as LoRA", category="CAD/files",
            description=(
                "Writes the mask's edit as a LoRA file in models/loras/: for every matrix the mask touches, a full "
                "'diff' that is minus the weight on the masked entries and 0 elsewhere. Loaded with LoraLoader "
                "(or LoraLoaderModelOnly) on the same checkpoint at strength_model 1, it gives exactly the weights "
                "Apply CAD Mask gives at strength 1; strength s scales the masked entries by (1 - s), like Apply "
                "CAD Mask's strength. Use it to take the edit to another workflow or UI."),
            inputs=[
                io.Model.Input("model", tooltip="The model the mask was made for, with the LoRAs you will load "
                               "before this file already applied."),
                CadMask.Input("mask", tooltip="From CAD Erase Mask, CAD Amplify Mask or Load CAD Mask."),
                _prefix_input("cad_erase"),
            ],
            outputs=[_lora_name_output()],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, mask, filename_prefix) -> io.NodeOutput:
        return _save(lora_from_mask(model, mask), filename_prefix, mask, f"{mask.count:,} masked weights")


class CADSaveEditAsLoRA(_SaveAsLoRA):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADSaveEditAsLoRA", display_name="Save CAD Edit as LoRA", category="CAD/files",
            description=(
                "Writes the weight change of CAD Erase Concept as a LoRA file in models/loras/: one 'diff' per edited "
                "matrix. Loaded with LoraLoaderModelOnly on the same checkpoint at strength_model s, it makes the "
                "same change as CAD Erase Concept at strength s."),
            inputs=[CadEdit.Input("edit", tooltip="From CAD Erase Concept."), _prefix_input("cad_erase_concept")],
            outputs=[_lora_name_output()],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, edit, filename_prefix) -> io.NodeOutput:
        return _save(edit_as_lora(edit), filename_prefix, edit, f"{edit.weights_changed:,} weights changed")


class CADLoadEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADLoadEdit", display_name="Load CAD Edit", category="CAD/files",
            description=(
                "Applies a LoRA file that Save CAD Edit as LoRA (or Save CAD Mask as LoRA) wrote, to a copy of the "
                "model, after checking that the file was made for this model. The input model is untouched."),
            inputs=[
                io.Model.Input("model", tooltip="The model the edit was made for (checked by fingerprint)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(LORAS),
                               tooltip="A LoRA file in models/loras/ written by Save CAD Edit as LoRA or "
                               "Save CAD Mask as LoRA."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Scales the change: 1 is the saved edit, 0 changes nothing."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The edited model; sample it as usual."),
                     CadEdit.Output(display_name="edit", tooltip="The loaded weight change.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name, strength=None):
        problem = check_choices(lora_name=(lora_name, folder_paths.get_filename_list(LORAS)))
        return problem if problem is not True else check_numbers(cls, strength=strength)

    @classmethod
    def fingerprint_inputs(cls, lora_name, **kwargs):
        path = folder_paths.get_full_path(LORAS, lora_name)
        return os.path.getmtime(path) if path else lora_name

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        require_numbers(cls, strength=strength)
        path = folder_paths.get_full_path(LORAS, lora_name)
        if path is None:
            raise CADError(f"'{lora_name}' is not in models/{LORAS}/. Put the file there and refresh (press R).")
        edit = load_edit_lora(path, model_fingerprints(model))
        return io.NodeOutput(apply_edit(model, edit, strength), edit,
                             ui=bounded({"cad_edit": [edit.summary()], "text": [edit.summary_text()]}))
