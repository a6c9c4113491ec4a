"""CAD Erase Mask / CAD Amplify Mask (select components) and CAD Combine Masks (union)."""
from comfy_api.latest import io

from ..cad_core import GRANULARITIES, PROTECT_MODES, select_protected, union
from .cad_types import CadAttribution, CadMask
from .validation import check_choices, check_numbers
from .ui_text import bounded

_GRANULARITY_TIP = "How the ratio is counted: per output row (per_row, the reference's), per_matrix, or global."


_PROTECT_MODE_TIP = ("subtract: rank by this concept's share minus the protected one's; drop: veto any component "
                     "the protected concept uses.")


def _mask_schema(node_id, display_name, description, ratio_tip):
    return io.Schema(
        node_id=node_id, display_name=display_name, category="CAD", description=description,
        inputs=[
            CadAttribution.Input("attribution", tooltip="From CAD Attribute or Load CAD Attribution."),
            io.Float.Input("ratio", default=0.001, min=0.000001, max=1.0, step=0.0001, tooltip=ratio_tip),
            io.Combo.Input("granularity", options=list(GRANULARITIES), default="per_row", tooltip=_GRANULARITY_TIP),
            CadAttribution.Input("protect", optional=True,
                                 tooltip="Attribution of a concept to keep, made like the concept's (same model, "
                                 "scope and objective); see protect_mode."),
            CadAttribution.Input("protect_2", optional=True, tooltip="A second concept to keep."),
            CadAttribution.Input("protect_3", optional=True,
                                 tooltip="A third concept to keep; give each kept concept its own input rather than "
                                 "a sum."),
            io.Combo.Input("protect_mode", options=list(PROTECT_MODES), default="subtract", optional=True,
                           tooltip=_PROTECT_MODE_TIP),
            io.Float.Input("protect_weight", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                           tooltip="subtract only: how much of the protected share is taken off; 0 ignores protect, "
                           "higher keeps the protected concept safer."),
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
            "Fraction of weights to select, among positive scores only (0.001 = 0.1%, the reference default).")

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
            "Fraction of weights to select, among negative scores only (0.001 = 0.1%).")


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
