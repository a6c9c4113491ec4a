"""Per-block rows for the attribution map: where the concept's positive and negative mass sits, and
which share of each block a mask selects."""
from .attribution import Attribution
from .errors import CADError
from .fingerprint import require_same_model
from .mask import Mask


def block_map(attribution: Attribution, mask: Mask | None = None) -> dict:
    """Rows in block order, one per block the attribution scores.

    Each row: block, label (short name for axes), positive_mass (sum of alpha > 0), negative_mass
    (sum of alpha < 0, so <= 0), weights; with a mask also selected and share = selected / weights
    (None without a mask). The masses are Attribution.summary()'s, so the map and the summary agree.
    """
    summary = attribution.summary()
    selected = _selected_per_block(attribution, mask) if mask is not None else {}
    rows = []
    for block in summary["blocks"]:
        row = {"block": block["block"], "label": block["label"],
               "positive_mass": block["positive_mass"], "negative_mass": block["negative_mass"],
               "weights": block["weights"], "selected": None, "share": None}
        if mask is not None:
            row["selected"] = selected.get(block["block"], 0)
            row["share"] = row["selected"] / block["weights"] if block["weights"] else 0.0
        rows.append(row)
    return {
        "objective": summary["objective"], "scope": summary["scope"], "weights": summary["weights"],
        "positive_mass": summary["positive_mass"], "negative_mass": summary["negative_mass"],
        "mask": _mask_totals(mask) if mask is not None else None, "rows": rows,
    }


def _selected_per_block(attribution: Attribution, mask: Mask) -> dict[str, int]:
    check_mask_matches(attribution, mask)
    return {row["block"]: row["selected"] for row in mask.per_block()}


def check_mask_matches(attribution: Attribution, mask: Mask) -> None:
    """The mask must select among the weights this attribution scores, on the same model."""
    require_same_model(mask.fingerprint, attribution.fingerprint, "The mask", "the attribution",
                       "Connect a mask made from this attribution (or from another attribution of the same model), "
                       "or leave the mask input empty.")
    unscored = [key for key in mask.shapes if key not in attribution.scores]
    if unscored:
        raise CADError(
            f"The mask covers {len(unscored)} weight matrices this attribution does not score, e.g. "
            f"'{unscored[0]}': it comes from an attribution with another scope. Connect a mask made from "
            f"this attribution, or an attribution whose scope includes the mask's weights.")
    for key, shape in mask.shapes.items():
        if tuple(shape) != tuple(attribution.scores[key].shape):
            raise CADError(
                f"The mask records shape {tuple(shape)} for '{key}' but the attribution scores a weight of "
                f"shape {tuple(attribution.scores[key].shape)}. They are not from the same model; connect "
                f"a mask made from this attribution.")


def _mask_totals(mask: Mask) -> dict:
    summary = mask.summary()
    return {name: summary[name] for name in ("mode", "ratio", "granularity", "selected", "scoped_weights",
                                             "percent_of_scope")}
