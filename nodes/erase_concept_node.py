"""CAD Erase Concept: erase typed concepts and keep typed others. The cross-attention K/V matrices a CAD
attribution locates are solved in closed form; in robust mode (the default) the image-pathway weights it locates
are also fine-tuned against an attacker in the loop, so a learned embedding cannot bring the concept back
(docs/method.md, "Closed-form edit" and "Robust erase"). Every default comes from cad_core.EraseSettings."""
import comfy.utils
from comfy_api.latest import io

from ..cad_core import CADError
from ..cad_core.erase_settings import ERASE_MODES, EraseSettings, erase_default
from .bridge.edits import apply_edit, erase_concept
from .cad_types import CadAttribution, CadEdit
from .ui_text import bounded
from .validation import check_numbers, require_numbers


def _lines(text, name: str) -> list[str]:
    """Every line of a prompt input, stripped (blank ones too)."""
    if not isinstance(text, str):
        raise CADError(f"{name} must be text, one prompt per line; got {type(text).__name__}.")
    return [line.strip() for line in text.replace("\r\n", "\n").split("\n")]


def prompt_lines(text, name: str) -> list[str]:
    """The prompts of `erase` or `keep`: one per line, blank lines skipped."""
    return [line for line in _lines(text, name) if line]


def paired_guides(erase: list[str], guide_text: str) -> list[str]:
    """The guide of each erased prompt: none typed = the empty prompt for all, one line = that for all, else one
    line per erased prompt (a blank line is the empty prompt: with exactly one line per erased prompt, a blank
    last line counts too; otherwise blank lines at the ends are dropped)."""
    guides = _lines(guide_text, "guide")
    if len(erase) > 1 and len(guides) == len(erase):
        return guides
    while guides and not guides[-1]:
        guides.pop()
    while guides and not guides[0]:
        guides.pop(0)
    if not guides:
        return [""] * len(erase)
    if len(guides) == 1:
        return guides * len(erase)
    if len(guides) != len(erase):
        raise CADError(f"guide has {len(guides)} lines but erase has {len(erase)}: give one guide line per erased "
                       f"prompt, a single line for all of them, or leave guide empty (the empty prompt).")
    return guides


class CADEraseConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADEraseConcept", display_name="CAD Erase Concept", category="CAD",
            description=("Erases the concepts you type and keeps the ones you list. Where the attribution says the "
                         "concept lives, the weights change so that the erased prompts act like their guide and the "
                         "kept prompts act as before: cross-attention K/V in closed form, and in robust mode also "
                         "the image-pathway weights, trained so that no embedding brings the concept back. Returns "
                         "an edited copy of the model; the input model is untouched."),
            inputs=[
                io.Model.Input("model", tooltip="The model to edit (the one the attribution was made on)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: it encodes the prompts below."),
                CadAttribution.Input("attribution", tooltip="CAD Attribute of the concept, scope 'all_linear' "
                                     "(robust mode needs more than K/V)."),
                io.String.Input("erase", multiline=True, default="",
                                tooltip="Prompts that show the concept, one per line, e.g. 'a cat'."),
                io.String.Input("keep", multiline=True, default="",
                                tooltip="Prompts to keep as they are, one per line, e.g. 'a dog'."),
                io.String.Input("guide", multiline=True, default="", optional=True,
                                tooltip="What each erased prompt should look like instead: one line each, one for "
                                "all, or empty for the empty prompt."),
                io.Combo.Input("mode", options=list(ERASE_MODES), default=erase_default("mode"), optional=True,
                               tooltip="robust: also train the image pathway against an attacker (seconds to "
                               "minutes); closed form: K/V only, instant."),
                io.Int.Input("train_steps", default=erase_default("train_steps"), min=1, max=5000, optional=True,
                             tooltip="Robust mode: training steps (more holds better and takes longer)."),
                io.Float.Input("overshoot", default=erase_default("overshoot"), min=0.0, max=4.0, step=0.05, optional=True,
                               tooltip="How far past the guide to aim, away from the concept: 0 maps onto the guide."),
                io.Float.Input("preserve", default=erase_default("preserve"), min=0.0, max=100.0, step=0.05, optional=True,
                               tooltip="How strongly the kept prompts hold their outputs."),
                io.Int.Input("text_rows", default=erase_default("text_rows"), min=1, max=4096, optional=True,
                             tooltip="Token positions of each prompt used (77 = all of a CLIP prompt)."),
                io.Float.Input("mass_share", default=erase_default("mass_share"), min=0.01, max=1.0, step=0.01, optional=True,
                               tooltip="Edit the fewest K/V matrices holding this share of the concept's positive "
                               "CAD mass."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="Scales the change: 1 is the solved edit, 0 changes nothing."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The edited model; sample it as usual."),
                     CadEdit.Output(display_name="edit", tooltip="The weight change; connect to Save CAD Edit as "
                                    "LoRA to keep it.")],
        )

    @classmethod
    def validate_inputs(cls, overshoot=None, preserve=None, text_rows=None, mass_share=None, strength=None,
                        train_steps=None):
        return check_numbers(cls, overshoot=overshoot, preserve=preserve, text_rows=text_rows, mass_share=mass_share,
                             strength=strength, train_steps=train_steps)

    @classmethod
    def execute(cls, model, clip, attribution, erase, keep, guide="", mode=erase_default("mode"),
                train_steps=erase_default("train_steps"), overshoot=erase_default("overshoot"),
                preserve=erase_default("preserve"), text_rows=erase_default("text_rows"),
                mass_share=erase_default("mass_share"), strength=1.0) -> io.NodeOutput:
        require_numbers(cls, overshoot=overshoot, preserve=preserve, text_rows=text_rows, mass_share=mass_share,
                        strength=strength, train_steps=train_steps)
        settings = EraseSettings(mode=mode, train_steps=train_steps, overshoot=overshoot, preserve=preserve,
                                 text_rows=text_rows, mass_share=mass_share)
        erased, kept = prompt_lines(erase, "erase"), prompt_lines(keep, "keep")
        if not erased:
            raise CADError("erase is empty: type the prompts that show the concept to erase, one per line (e.g. "
                           "'a cat').")
        if not kept:
            raise CADError("keep is empty: type at least one prompt to keep as it is (e.g. 'a dog'), one per line. "
                           "Without one, nothing holds the rest of the model in place.")
        progress = comfy.utils.ProgressBar(1)
        edit = erase_concept(model, clip, attribution, erased, paired_guides(erased, guide or ""), kept, settings,
                             on_progress=lambda done, total: progress.update_absolute(done, total))
        text = edit.summary_text()
        return io.NodeOutput(apply_edit(model, edit, strength), edit,
                             ui=bounded({"cad_edit": [edit.summary()], "text": [text]}))
