"""The attribution map: cad_core.block_map rows, and the CAD Attribution Map node's picture and UI payload."""
import json
import os

import numpy as np
import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, CADError, Mask, MaskInfo, block_map, short_block_name

K_IN1_A = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
K_IN1_B = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"
K_IN10 = "diffusion_model.input_blocks.10.1.transformer_blocks.0.ff.net.2.weight"
K_MID = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
K_OUT = "diffusion_model.output_blocks.2.1.transformer_blocks.0.ff.net.2.weight"
SHAPES = {K_OUT: (4, 6), K_IN10: (3, 5), K_MID: (5, 5), K_IN1_A: (4, 8), K_IN1_B: (8, 4)}
BLOCK_OF = {K_IN1_A: "input_blocks.1", K_IN1_B: "input_blocks.1", K_IN10: "input_blocks.10",
            K_MID: "middle_block", K_OUT: "output_blocks.2"}


def random_attribution(fingerprint="fp-A", seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    scores = {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}
    return Attribution(scores, fingerprint, AttributionInfo(objective="concept_gap", scope="ff"))


def ix(*values):
    return torch.tensor(values, dtype=torch.int64)


def mask_of(indices, fingerprint="fp-A", shapes=SHAPES):
    return Mask(dict(indices), dict(shapes), fingerprint, MaskInfo(mode="erase", ratio=0.1, granularity="global"))


# ---------------------------------------------------------------------------------------------- cad_core
def test_rows_hold_the_clamped_score_sums_of_each_block_in_block_order():
    attribution = random_attribution()
    result = block_map(attribution)
    assert [r["block"] for r in result["rows"]] == ["input_blocks.1", "input_blocks.10", "middle_block",
                                                    "output_blocks.2"]
    assert [r["label"] for r in result["rows"]] == ["in 1", "in 10", "mid", "out 2"]
    for row in result["rows"]:
        keys = [k for k, b in BLOCK_OF.items() if b == row["block"]]
        positive = sum(float(attribution.scores[k].clamp(min=0).sum()) for k in keys)
        negative = sum(float(attribution.scores[k].clamp(max=0).sum()) for k in keys)
        assert row["positive_mass"] == pytest.approx(positive, rel=1e-6) and row["positive_mass"] > 0
        assert row["negative_mass"] == pytest.approx(negative, rel=1e-6) and row["negative_mass"] < 0
        assert row["weights"] == sum(attribution.scores[k].numel() for k in keys)
        assert row["selected"] is None and row["share"] is None
    assert result["rows"][0]["weights"] == 64                  # both input_blocks.1 matrices in one row
    assert result["weights"] == attribution.total_weights and result["mask"] is None
    assert result["positive_mass"] == pytest.approx(sum(r["positive_mass"] for r in result["rows"]))
    assert (result["objective"], result["scope"]) == ("concept_gap", "ff")


def test_rows_equal_the_attribution_summary():
    attribution = random_attribution(seed=3)
    summary = attribution.summary()
    rows = block_map(attribution)["rows"]
    assert [(r["block"], r["positive_mass"], r["negative_mass"], r["weights"]) for r in rows] == [
        (b["block"], b["positive_mass"], b["negative_mass"], b["weights"]) for b in summary["blocks"]]


def test_shares_are_selected_over_block_weights():
    attribution = random_attribution()
    mask = mask_of({K_IN1_A: ix(0, 3, 9), K_IN1_B: ix(1), K_MID: ix(*range(10)), K_OUT: ix()})
    result = block_map(attribution, mask)
    by_block = {r["block"]: r for r in result["rows"]}
    assert {b: r["selected"] for b, r in by_block.items()} == {
        "input_blocks.1": 4, "input_blocks.10": 0, "middle_block": 10, "output_blocks.2": 0}
    assert by_block["input_blocks.1"]["share"] == 4 / 64
    assert by_block["middle_block"]["share"] == 10 / 25
    assert by_block["input_blocks.10"]["share"] == 0.0
    assert result["mask"]["selected"] == 14 and result["mask"]["mode"] == "erase"
    assert result["mask"]["percent_of_scope"] == pytest.approx(100 * 14 / attribution.total_weights)


def test_a_mask_of_a_narrower_scope_counts_against_the_attribution_blocks():
    attribution = random_attribution()
    narrower = {K_MID: SHAPES[K_MID]}
    result = block_map(attribution, mask_of({K_MID: ix(2, 4)}, shapes=narrower))
    assert [r["selected"] for r in result["rows"]] == [0, 0, 2, 0]
    assert result["rows"][2]["share"] == 2 / 25


def test_a_mask_of_another_model_is_refused_naming_both_fingerprints():
    with pytest.raises(CADError) as error:
        block_map(random_attribution("fp-A"), mask_of({K_MID: ix(1)}, fingerprint="fp-B"))
    assert "fp-A" in str(error.value) and "fp-B" in str(error.value) and "another model" in str(error.value)


def test_a_mask_of_another_scope_or_shape_is_refused():
    attribution = random_attribution(shapes={K_MID: (5, 5)})
    with pytest.raises(CADError, match="does not score.*another scope"):
        block_map(attribution, mask_of({K_OUT: ix(1)}))
    with pytest.raises(CADError, match=r"shape \(25, 1\)"):
        block_map(attribution, mask_of({K_MID: ix(1)}, shapes={K_MID: (25, 1)}))


@pytest.mark.parametrize("block,short", [
    ("input_blocks.4", "in 4"), ("middle_block", "mid"), ("output_blocks.11", "out 11"),
    ("double_blocks.3", "double 3"), ("single_blocks.37", "single 37"), ("joint_blocks.0", "joint 0"),
    ("time_embed", "time_embed")])
def test_short_block_names(block, short):
    assert short_block_name(block) == short


# ---------------------------------------------------------------------------------------------- the node
@pytest.fixture
def map_node(tmp_path):
    """The node class, with ComfyUI's temp folder (its preview PNGs) inside the test's tmp_path."""
    import folder_paths
    from cad_pack.nodes.map_node import CADAttributionMap

    previous = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    yield CADAttributionMap
    folder_paths.set_temp_directory(previous)


def colour_pixels(image, rgb, tolerance=2):
    pixels = (image[0].numpy() * 255).round()
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_map_node_draws_an_image_comfyui_can_use(map_node):
    from cad_pack.nodes.map_render import BACKGROUND, NEGATIVE, POSITIVE, SELECTED

    attribution = random_attribution()
    out = map_node.execute(attribution=attribution, width=640, height=320)
    image = out.args[0]
    assert image.shape == (1, 320, 640, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert colour_pixels(image, BACKGROUND) < 0.95 * 320 * 640         # not blank
    assert colour_pixels(image, POSITIVE) > 500 and colour_pixels(image, NEGATIVE) > 500
    assert colour_pixels(image, SELECTED) == 0                          # no share panel, no legend entry for it
    rows = out.ui["cad_map"][0]["rows"]
    assert [(r["block"], r["positive_mass"], r["negative_mass"], r["weights"]) for r in rows] == [
        (b["block"], b["positive_mass"], b["negative_mass"], b["weights"]) for b in attribution.summary()["blocks"]]
    assert "text" not in out.ui  # the picture and the on-node chart carry the numbers
    preview = out.ui["images"][0]
    assert preview["type"] == "temp" and preview["filename"].endswith(".png")
    import folder_paths
    assert os.path.isfile(os.path.join(folder_paths.get_temp_directory(), preview["subfolder"], preview["filename"]))
    json.dumps(out.ui)                                                  # what the websocket sends must be JSON


def test_map_node_with_a_mask_adds_the_selected_share_panel(map_node):
    from cad_pack.nodes.map_render import SELECTED

    attribution = random_attribution()
    mask = mask_of({K_IN1_A: ix(*range(20)), K_MID: ix(*range(12))})
    plain = map_node.execute(attribution=attribution, width=640, height=320).args[0]
    out = map_node.execute(attribution=attribution, width=640, height=320, mask=mask)
    masked = out.args[0]
    assert colour_pixels(masked, SELECTED) > 500 > colour_pixels(plain, SELECTED)
    assert not torch.equal(plain, masked)
    rows = out.ui["cad_map"][0]["rows"]
    assert [r["selected"] for r in rows] == [20, 0, 12, 0]
    assert [r["share"] for r in rows] == [20 / 64, 0.0, 12 / 25, 0.0]
    assert out.ui["cad_map"][0]["mask"]["selected"] == 32


def test_map_node_refuses_a_mask_of_another_model(map_node):
    with pytest.raises(CADError, match="another model"):
        map_node.execute(attribution=random_attribution("fp-A"), width=512, height=256,
                         mask=mask_of({K_MID: ix(1)}, fingerprint="fp-B"))


def test_map_node_draws_many_blocks_and_checks_its_size(map_node):
    flux = {f"diffusion_model.double_blocks.{i}.img_mlp.0.weight": (4, 4) for i in range(19)}
    flux.update({f"diffusion_model.single_blocks.{i}.linear1.weight": (4, 4) for i in range(38)})
    out = map_node.execute(attribution=random_attribution(shapes=flux), width=1024, height=512)
    assert out.args[0].shape == (1, 512, 1024, 3) and len(out.ui["cad_map"][0]["rows"]) == 57
    assert out.ui["cad_map"][0]["rows"][19]["label"] == "single 0"
    assert map_node.validate_inputs(width=1024, height=512) is True
    assert "width" in map_node.validate_inputs(width=100, height=512)


def bar_heights(picture, rgb, anchored):
    """Heights in pixels of the bars of one colour, left to right, measured at each bar's centre column. Only bars
    standing on (anchored="bottom") or hanging from ("top") the most common baseline count: legend swatches do not."""
    pixels = np.asarray(picture).astype(int) if not torch.is_tensor(picture) else \
        (picture[0].numpy() * 255).round().astype(int)
    hit = np.abs(pixels - np.array(rgb)).max(axis=-1) <= 2
    columns = np.where(hit.any(axis=0))[0]
    runs = np.split(columns, np.where(np.diff(columns) > 1)[0] + 1) if columns.size else []
    spans = []
    for run in runs:
        ys = np.where(hit[:, run[len(run) // 2]])[0]
        spans.append((ys.min(), ys.max()))
    if not spans:
        return []
    edge = 1 if anchored == "bottom" else 0
    baseline = np.bincount([span[edge] for span in spans]).argmax()
    return [int(bottom - top + 1) for top, bottom in spans if (top, bottom)[edge] == baseline]


def assert_heights_follow(heights, values):
    """Bar heights in proportion to the values they draw (to the pixel)."""
    values = [abs(v) for v in values if v]
    assert len(heights) == len(values) > 0, (heights, values)
    tallest = max(heights)
    for height, value in zip(heights, values):
        assert abs(height - tallest * value / max(values)) <= 2, (heights, values)


def test_map_of_an_all_zero_attribution_draws_no_bars():
    from cad_pack.nodes.map_render import MUTED, NEGATIVE, POSITIVE, render_block_map

    zero = Attribution({K_MID: torch.zeros(5, 5)}, "fp", AttributionInfo(objective="concept_gap", scope="ff"))
    picture = np.asarray(render_block_map(block_map(zero), 512, 256)).astype(int)
    some = np.asarray(render_block_map(block_map(random_attribution(shapes={K_MID: (5, 5)})), 512, 256)).astype(int)
    assert picture.shape == (256, 512, 3)
    for colour in (POSITIVE, NEGATIVE):
        drawn = np.abs(picture - np.array(colour)).max(axis=-1) <= 2
        in_other = np.abs(some - np.array(colour)).max(axis=-1) <= 2
        # only the legend's swatch: what the zero map draws in a bar colour, the other map draws there too,
        # and the other map has its bars besides
        assert drawn.any() and not (drawn & ~in_other).any() and in_other.sum() > 2 * drawn.sum()
    # the note "every score is zero" in the middle of the chart: grey text (anti-aliased toward MUTED)
    middle = picture[80:176, 128:384]
    grey = (np.ptp(middle, axis=-1) <= 8) & (middle.min(axis=-1) >= MUTED[0] - 8) & (middle.max(axis=-1) <= 230)
    assert grey.sum() > 50, "no 'every score is zero' note in the middle of the chart"


def test_map_of_a_real_attribution_run(map_node):
    from cad_pack.nodes.attribute_node import CADAttribute
    from cad_pack.nodes.mask_nodes import CADEraseMask
    from tiny_models import conditioning, empty_latent, tiny_sd15

    with torch.inference_mode():
        attributed = CADAttribute.execute(model=tiny_sd15(seed=5), positive=conditioning(1), base=conditioning(2),
                                          latent=empty_latent(), objective="concept_gap", steps=1, guidance=3.0,
                                          seed=0, samples=1, scope="ff", schedule="single")
        attribution = attributed.args[0]
        mask = CADEraseMask.execute(attribution=attribution, ratio=0.05, granularity="global").args[0]
        out = map_node.execute(attribution=attribution, width=1024, height=512, mask=mask)
    summary = attributed.ui["cad_summary"][0]
    rows = out.ui["cad_map"][0]["rows"]
    assert [r["block"] for r in rows] == [b["block"] for b in summary["blocks"]]
    assert [r["positive_mass"] for r in rows] == [b["positive_mass"] for b in summary["blocks"]]
    assert sum(r["selected"] for r in rows) == mask.count > 0
    assert out.args[0].shape == (1, 512, 1024, 3)
    # the picture draws these numbers: bar heights in proportion to each block's masses and mask share
    from cad_pack.nodes.map_render import NEGATIVE, POSITIVE, SELECTED
    assert_heights_follow(bar_heights(out.args[0], POSITIVE, "bottom"), [r["positive_mass"] for r in rows])
    assert_heights_follow(bar_heights(out.args[0], NEGATIVE, "top"), [r["negative_mass"] for r in rows])
    assert_heights_follow(bar_heights(out.args[0], SELECTED, "bottom"), [r["share"] for r in rows])
