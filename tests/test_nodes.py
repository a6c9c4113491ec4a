"""The node classes called as ComfyUI calls them (execute classmethods), without a server."""
import asyncio

import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, CADError
from cad_pack.nodes.apply_node import ApplyCADMask
from cad_pack.nodes.attribute_node import CADAttribute
from cad_pack.nodes.mask_nodes import CADAmplifyMask, CADCombineMasks, CADEraseMask
from cad_pack.nodes.bridge import fingerprint_of

from tiny_models import conditioning, empty_latent, tiny_sd15

KEY = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"


def scores_attribution(values, fingerprint="f" * 16, objective="concept_gap"):
    return Attribution({KEY: torch.tensor(values, dtype=torch.float32)}, fingerprint,
                       AttributionInfo(objective=objective))


def test_entrypoint_lists_the_design_card_nodes(cad_pack):
    nodes = asyncio.run(asyncio.run(cad_pack.comfy_entrypoint()).get_node_list())
    ids = {n.define_schema().node_id: n.define_schema().display_name for n in nodes}
    assert ids["CADAttribute"] == "CAD Attribute" and ids["CADEraseMask"] == "CAD Erase Mask"
    assert ids["CADAmplifyMask"] == "CAD Amplify Mask" and ids["ApplyCADMask"] == "Apply CAD Mask"
    assert ids["CADAttributionMap"] == "CAD Attribution Map" and ids["CADSumAttributions"] == "CAD Sum Attributions"
    assert not hasattr(cad_pack, "NODE_CLASS_MAPPINGS")  # V1 mappings would make ComfyUI skip V3


def test_erase_and_amplify_pick_opposite_signs_and_report_counts():
    attribution = scores_attribution([[3.0, -1.0, 2.0, -4.0], [-2.0, 5.0, -0.5, 1.0]])
    erase = CADEraseMask.execute(attribution=attribution, ratio=0.5, granularity="per_row")
    amplify = CADAmplifyMask.execute(attribution=attribution, ratio=0.5, granularity="per_row")
    assert erase.args[0].indices[KEY].tolist() == [0, 2, 5, 7]
    assert amplify.args[0].indices[KEY].tolist() == [1, 3, 4, 6]
    assert erase.ui["cad_mask"][0]["selected"] == 4 and erase.ui["cad_mask"][0]["percent_of_scope"] == 50.0


def test_erase_with_protect_drop_vetoes_what_the_other_concept_needs():
    target = scores_attribution([[3.0, 2.0, 1.0, 0.5]])
    other = scores_attribution([[1.0, -1.0, 0.2, -3.0]])
    mask = CADEraseMask.execute(attribution=target, ratio=1.0, granularity="per_row", protect=other,
                                protect_mode="drop").args[0]
    assert mask.indices[KEY].tolist() == [1, 3] and mask.info.protected_dropped == 2


def test_erase_with_protect_subtract_ranks_by_margin_and_still_reaches_the_ratio():
    # shares of the target: 4/8.5, 3/8.5, 1/8.5, 0.5/8.5; of the kept concepts (largest of the two): 0.1/2.1, 2/2.1,
    # 3/3, 0 -> margins 0.42, -0.60, -0.88, 0.06: entries 0 and 3. 'drop' vetoes both of the target's top two.
    target = scores_attribution([[4.0, 3.0, 1.0, 0.5]])
    kept = scores_attribution([[0.1, 2.0, -1.0, -1.0]]), scores_attribution([[0.0, 0.0, 3.0, 0.0]])
    mask = CADEraseMask.execute(attribution=target, ratio=0.5, granularity="per_row", protect=kept[0],
                                protect_2=kept[1]).args[0]
    assert mask.indices[KEY].tolist() == [0, 3]
    assert mask.info.protect_mode == "subtract" and mask.info.protected == 2
    with pytest.raises(CADError, match="selects no weights"):
        CADEraseMask.execute(attribution=target, ratio=0.5, granularity="per_row", protect=kept[0],
                             protect_mode="drop")
    # weight 0 ignores the protected concepts: the plain top two
    plain = CADEraseMask.execute(attribution=target, ratio=0.5, granularity="per_row", protect=kept[0],
                                 protect_weight=0.0).args[0]
    assert plain.indices[KEY].tolist() == [0, 1]


def test_empty_selection_is_an_error_not_a_silent_no_op():
    attribution = scores_attribution([[1.0] * 8])
    with pytest.raises(CADError, match="selects no weights"):
        CADEraseMask.execute(attribution=attribution, ratio=0.001, granularity="per_row")


def test_combine_masks_is_the_union():
    a = CADEraseMask.execute(attribution=scores_attribution([[3.0, 0.0, 0.0, 1.0]]), ratio=0.25,
                             granularity="per_row").args[0]
    b = CADEraseMask.execute(attribution=scores_attribution([[0.0, 0.0, 2.0, 1.0]]), ratio=0.25,
                             granularity="per_row").args[0]
    assert CADCombineMasks.execute(mask_a=a, mask_b=b).args[0].indices[KEY].tolist() == [0, 2]


def test_nodes_chain_on_a_real_model_patcher():
    mp = tiny_sd15(seed=12)
    with torch.inference_mode():
        out = CADAttribute.execute(model=mp, positive=conditioning(1), base=conditioning(2), latent=empty_latent(),
                                   objective="concept_gap", steps=2, guidance=3.0, seed=0, samples=1, scope="attention",
                                   schedule="single")
        attribution = out.args[0]
        assert attribution.fingerprint == fingerprint_of(mp) and len(attribution.scores) == 7 * 8
        assert out.ui["cad_summary"][0]["weights"] == attribution.total_weights
        assert "CAD attribution (concept_gap, scope attention)" in out.ui["text"][0]
        mask = CADEraseMask.execute(attribution=attribution, ratio=0.05, granularity="global").args[0]
        edited = ApplyCADMask.execute(model=mp, mask=mask, strength=1.0).args[0]
    assert edited is not mp and set(edited.patches) == {k for k, v in mask.indices.items() if v.numel()}
    assert mp.patches == {}


@pytest.mark.parametrize("bad", [{"scope": "regex", "scope_regex": "nothing_here"}, {"scope": "regex", "scope_regex": "("}])
def test_attribute_node_rejects_bad_scopes_clearly(bad):
    mp = tiny_sd15(seed=13)
    kwargs = dict(model=mp, positive=conditioning(1), base=conditioning(2), latent=empty_latent(),
                  objective="concept_gap", steps=1, guidance=3.0, seed=0, samples=1, schedule="single")
    with pytest.raises(CADError, match="matched no weights|not a valid regular expression"):
        with torch.inference_mode():
            CADAttribute.execute(**kwargs, **bad)


def test_validate_inputs_rejects_unknown_combo_values():
    assert CADAttribute.validate_inputs(objective="concept_gap", scope="ff", schedule="single") is True
    assert "scope 'everything'" in CADAttribute.validate_inputs(objective="concept_gap", scope="everything",
                                                                schedule="single")
    assert "granularity" in CADEraseMask.validate_inputs(granularity="per_pixel")


def test_sum_attributions_node_adds_scores_and_reports_the_total():
    from cad_pack.nodes.sum_node import CADSumAttributions
    a, b = scores_attribution([[3.0, -1.0]]), scores_attribution([[1.0, 4.0]])
    out = CADSumAttributions.execute(attribution_a=a, attribution_b=b)
    assert out.args[0].scores[KEY].tolist() == [[4.0, 3.0]]
    summary = out.ui["cad_summary"][0]
    assert summary["positive_mass"] == 7.0 and summary["negative_mass"] == 0.0
    with pytest.raises(CADError, match="another model"):
        CADSumAttributions.execute(attribution_a=a, attribution_b=scores_attribution([[1.0, 1.0]], "0" * 16))
