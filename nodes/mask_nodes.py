"""CAD Erase Mask / CAD Amplify Mask (select components) and CAD Combine Masks (union)."""
from comfy_api.latest import io

from ..cad_core import GRANULARITIES, PROTECT_MODES, select_protected, union
from .cad_types import CadAttribution, CadMask
from .validation import check_choices, check_numbers
from .ui_text import bounded

_GRANULARITY_TIP = ("per_row: in each output row, int(ratio * row width) entries (the reference's default; rows "
                    "narrower than 1/ratio select nothing). per_matrix: int(ratio * size) per weight matrix. "
                    "global: int(ratio * all scoped weights) over the whole scope.")


_PROTECT_MODE_TIP = (
    "subtract: rank components by their share of this concept minus protect_weight x their share of the protected "
    "one (each attribution divided by its own total), so components that carry both drop down the list and the "
    "selection still reaches the ratio. drop: never select a component with a positive score for the protected "
    "concept (on small models that vetoes most of what matters, so it erases little). On the toy world, subtract "
    "kept the other shapes far better than no protection at the same count of weights: README, 'Selective erase'.")


def _mask_schema(node_id, display_name, description, ratio_tip):
    return io.Schema(
        node_id=node_id, display_name=display_name, category="CAD", description=description,
        inputs=[
            CadAttribution.Input("attribution", tooltip="From CAD Attribute or Load CAD Attribution."),
            io.Float.Input("ratio", default=0.001, min=0.000001, max=1.0, step=0.0001, tooltip=ratio_tip),
            io.Combo.Input("granularity", options=list(GRANULARITIES), default="per_row", tooltip=_GRANULARITY_TIP),
            CadAttribution.Input("protect", optional=True,
                                 tooltip="Attribution of a concept to keep, made like the concept's (same model, "
                                 "scope and objective). How it is kept: protect_mode."),
            CadAttribution.Input("protect_2", optional=True, tooltip="A second concept to keep."),
            CadAttribution.Input("protect_3", optional=True,
                                 tooltip="A third concept to keep. Give each kept concept its own input: summed "
                                 "into one attribution, they protect each other less."),
            io.Combo.Input("protect_mode", options=list(PROTECT_MODES), default="subtract", optional=True,
                           tooltip=_PROTECT_MODE_TIP),
            io.Float.Input("protect_weight", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                           tooltip="subtract only: how much of the protected concept's share is taken off. 0 "
                           "ignores the protect input; higher keeps the protected concept safer and erases less."),
        ],
        outputs=[CadMask.Output(display_name="mask", tooltip="Selected components; connect to Apply CAD Mask, "
                                "Save CAD Mask or CAD Combine Masks.")],
    )


class CADEraseMask(io.ComfyNode):
    MODE = "erase"

    @classmethod
    def define_schema(cls):
        return _mask_schema(
            "CADEraseMask", "CAD Erase Mask",
            "Selects the components that carry the concept most (largest positive scores). Ablating them "
            "erases the concept.",
            "Fraction of weights to select (0.001 = 0.1%, the reference default). Only positive scores qualify.")

    @classmethod
    def validate_inputs(cls, granularity, ratio=None, protect_mode="subtract", protect_weight=1.0):
        problem = check_choices(granularity=(granularity, GRANULARITIES), protect_mode=(protect_mode, PROTECT_MODES))
        return problem if problem is not True else check_numbers(cls, ratio=ratio, protect_weight=protect_weight)

    @classmethod
    def execute(cls, attribution, ratio, granularity, protect=None, protect_2=None, protect_3=None,
                protect_mode="subtract", protect_weight=1.0) -> io.NodeOutput:
        keep = [p for p in (protect, protect_2, protect_3) if p is not None]
        mask = select_protected(attribution, cls.MODE, ratio, granularity, keep, protect_mode, protect_weight)
        mask.check_nonempty()
        return io.NodeOutput(mask, ui=bounded({"cad_mask": [mask.summary()], "text": [mask.summary_text()]}))


class CADAmplifyMask(CADEraseMask):
    MODE = "amplify"

    @classmethod
    def define_schema(cls):
        return _mask_schema(
            "CADAmplifyMask", "CAD Amplify Mask",
            "Selects the components that suppress the concept most (most negative scores). Ablating them "
            "strengthens the concept. Use an attribution made with objective concept_likelihood (the paper's "
            "choice), or concept_gap to make a concept come through with less guidance (CFG).",
            "Fraction of weights to select (0.001 = 0.1%). Only negative scores qualify.")


class CADCombineMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADCombineMasks", display_name="CAD Combine Masks", category="CAD",
            description="Union of two masks of the same model, e.g. to erase two concepts at once.",
            inputs=[CadMask.Input("mask_a", tooltip="From CAD Erase Mask, CAD Amplify Mask, Load CAD Mask or another "
                                   "CAD Combine Masks."),
                    CadMask.Input("mask_b", tooltip="Another mask of the same model, e.g. the erase mask of a "
                                  "second concept.")],
            outputs=[CadMask.Output(display_name="mask",
                                    tooltip="Components selected by either mask; connect to Apply CAD Mask.")],
        )

    @classmethod
    def execute(cls, mask_a, mask_b) -> io.NodeOutput:
        mask = union([mask_a, mask_b])
        return io.NodeOutput(mask, ui=bounded({"cad_mask": [mask.summary()], "text": [mask.summary_text()]}))
