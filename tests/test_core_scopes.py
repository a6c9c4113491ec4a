"""cad_core.resolve_scope on realistic key lists: SD1.5 UNet (ComfyUI names), Flux, SD3 MMDiT,
and an unknown architecture. Each key is tagged at construction with what it is, so the expected
selections here do not reuse the pack's regexes."""
import re

import pytest

from cad_pack.cad_core import SCOPE_PRESETS, CADError, resolve_scope

CTX = 768


# ---------------------------------------------------------------------------------------------- SD1.5
def sd15_keys(prefix="diffusion_model."):
    """(key, shape, tag) in model order. tags: ff, attn, linear (other 2-D), conv, norm, bias."""
    out = []

    def add(name, shape, tag):
        out.append((prefix + name, tuple(shape), tag))

    def resblock(p, cin, c, skip=False):
        add(f"{p}.in_layers.0.weight", (cin,), "norm")
        add(f"{p}.in_layers.0.bias", (cin,), "bias")
        add(f"{p}.in_layers.2.weight", (c, cin, 3, 3), "conv")
        add(f"{p}.in_layers.2.bias", (c,), "bias")
        add(f"{p}.emb_layers.1.weight", (c, 1280), "linear")
        add(f"{p}.emb_layers.1.bias", (c,), "bias")
        add(f"{p}.out_layers.0.weight", (c,), "norm")
        add(f"{p}.out_layers.0.bias", (c,), "bias")
        add(f"{p}.out_layers.3.weight", (c, c, 3, 3), "conv")
        add(f"{p}.out_layers.3.bias", (c,), "bias")
        if skip:
            add(f"{p}.skip_connection.weight", (c, cin, 1, 1), "conv")
            add(f"{p}.skip_connection.bias", (c,), "bias")

    def spatial_transformer(p, c):
        add(f"{p}.norm.weight", (c,), "norm")
        add(f"{p}.norm.bias", (c,), "bias")
        add(f"{p}.proj_in.weight", (c, c, 1, 1), "conv")
        add(f"{p}.proj_in.bias", (c,), "bias")
        t = f"{p}.transformer_blocks.0"
        for attn, kv in (("attn1", c), ("attn2", CTX)):
            add(f"{t}.{attn}.to_q.weight", (c, c), "attn")
            add(f"{t}.{attn}.to_k.weight", (c, kv), "attn")
            add(f"{t}.{attn}.to_v.weight", (c, kv), "attn")
            add(f"{t}.{attn}.to_out.0.weight", (c, c), "attn")
            add(f"{t}.{attn}.to_out.0.bias", (c,), "bias")
        add(f"{t}.ff.net.0.proj.weight", (8 * c, c), "ff")
        add(f"{t}.ff.net.0.proj.bias", (8 * c,), "bias")
        add(f"{t}.ff.net.2.weight", (c, 4 * c), "ff")
        add(f"{t}.ff.net.2.bias", (c,), "bias")
        for n in (1, 2, 3):
            add(f"{t}.norm{n}.weight", (c,), "norm")
            add(f"{t}.norm{n}.bias", (c,), "bias")
        add(f"{p}.proj_out.weight", (c, c, 1, 1), "conv")
        add(f"{p}.proj_out.bias", (c,), "bias")

    add("time_embed.0.weight", (1280, 320), "linear")
    add("time_embed.0.bias", (1280,), "bias")
    add("time_embed.2.weight", (1280, 1280), "linear")
    add("time_embed.2.bias", (1280,), "bias")
    add("input_blocks.0.0.weight", (320, 4, 3, 3), "conv")
    add("input_blocks.0.0.bias", (320,), "bias")
    chans = {1: (320, 320), 2: (320, 320), 4: (320, 640), 5: (640, 640), 7: (640, 1280), 8: (1280, 1280)}
    for i, (cin, c) in chans.items():
        resblock(f"input_blocks.{i}.0", cin, c, skip=cin != c)
        spatial_transformer(f"input_blocks.{i}.1", c)
    for i, c in ((3, 320), (6, 640), (9, 1280)):
        add(f"input_blocks.{i}.0.op.weight", (c, c, 3, 3), "conv")
        add(f"input_blocks.{i}.0.op.bias", (c,), "bias")
    for i in (10, 11):
        resblock(f"input_blocks.{i}.0", 1280, 1280)
    resblock("middle_block.0", 1280, 1280)
    spatial_transformer("middle_block.1", 1280)
    resblock("middle_block.2", 1280, 1280)
    for i in range(12):
        c = (1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320)[i]
        resblock(f"output_blocks.{i}.0", 2 * c, c, skip=True)
        if i >= 3:
            spatial_transformer(f"output_blocks.{i}.1", c)
        if i in (2, 5, 8):
            j = 1 if i == 2 else 2
            add(f"output_blocks.{i}.{j}.conv.weight", (c, c, 3, 3), "conv")
    add("out.0.weight", (320,), "norm")
    add("out.0.bias", (320,), "bias")
    add("out.2.weight", (4, 320, 3, 3), "conv")
    add("out.2.bias", (4,), "bias")
    return out


def named(tagged):
    return [(k, s) for k, s, _ in tagged]


def with_tag(tagged, *tags):
    return [k for k, _, t in tagged if t in tags]


@pytest.mark.parametrize("prefix", ["diffusion_model.", ""])
def test_sd15_presets(prefix):
    tagged = sd15_keys(prefix)
    ns = named(tagged)
    assert len({k for k, _ in ns}) == len(ns)

    ff = resolve_scope(ns, "ff")
    assert ff == with_tag(tagged, "ff")                         # exactly the ff weights, in model order
    assert len(ff) == 32
    shapes = dict(ns)
    assert sum(shapes[k][0] * shapes[k][1] for k in ff) == 148_684_800   # docs/method.md, section 4
    assert all(k.endswith(("ff.net.0.proj.weight", "ff.net.2.weight")) for k in ff)

    attn = resolve_scope(ns, "attention")
    assert attn == with_tag(tagged, "attn")
    assert len(attn) == 16 * 8
    for block in {k.split(".transformer_blocks")[0] for k in attn}:
        assert sum(1 for k in attn if k.startswith(block + ".")) == 8

    both = resolve_scope(ns, "ff+attention")
    assert both == with_tag(tagged, "ff", "attn")               # the union, in model order
    assert set(both) == set(ff) | set(attn)

    lin = resolve_scope(ns, "all_linear")
    assert lin == with_tag(tagged, "ff", "attn", "linear")      # every 2-D weight; no convs, norms, biases
    assert all(len(shapes[k]) == 2 for k in lin)


def test_regex_scope():
    ns = named(sd15_keys())
    keys = [k for k, _ in ns]
    got = resolve_scope(ns, "regex", r"\.attn2\.to_k\.weight$")
    assert got == [k for k in keys if k.endswith(".attn2.to_k.weight")] and len(got) == 16
    got = resolve_scope(ns, "regex", r"middle_block\.1\..*ff\.net\.2\.weight")
    assert got == ["diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"]


@pytest.mark.parametrize("bad", ["ff.net.(", "[unclosed", "*ff"])
def test_invalid_regex(bad):
    with pytest.raises(CADError) as e:
        resolve_scope(named(sd15_keys()), "regex", bad)
    assert "not a valid regular expression" in str(e.value) and bad in str(e.value)


def test_empty_regex_and_unknown_scope():
    ns = named(sd15_keys())
    with pytest.raises(CADError, match="needs a pattern"):
        resolve_scope(ns, "regex", "  ")
    with pytest.raises(CADError) as e:
        resolve_scope(ns, "mlp")
    assert "'mlp'" in str(e.value) and all(p in str(e.value) for p in SCOPE_PRESETS)


def test_empty_match_lists_what_exists():
    ns = named(sd15_keys())
    with pytest.raises(CADError) as e:
        resolve_scope(ns, "regex", r"\.mlp\.fc1\.weight$")
    msg = str(e.value)
    assert "matched no weights" in msg and r"\.mlp\.fc1\.weight$" in msg
    assert f"{len(ns)} parameters" in msg
    assert "net.2.weight" in msg or "to_q.weight" in msg or "0.bias" in msg   # name endings that do exist
    assert "diffusion_model." in msg                                           # and example names
    # a UNet without transformer blocks: the ff preset finds nothing, and says so
    convs_only = [(k, s) for k, s, t in sd15_keys() if ".transformer_blocks." not in k]
    with pytest.raises(CADError) as e:
        resolve_scope(convs_only, "ff")
    assert "matched no weights" in str(e.value) and "Scope 'ff'" in str(e.value)


# ---------------------------------------------------------------------------------------------- Flux
def flux_keys():
    out = []

    def add(k, s, t):
        out.append(("diffusion_model." + k, s, t))

    h = 3072
    add("img_in.weight", (h, 64), "linear")
    add("img_in.bias", (h,), "bias")
    add("time_in.in_layer.weight", (h, 256), "linear")
    add("time_in.out_layer.weight", (h, h), "linear")
    add("txt_in.weight", (h, 4096), "linear")
    for i in range(2):
        for side in ("img", "txt"):
            p = f"double_blocks.{i}.{side}"
            add(f"{p}_mod.lin.weight", (6 * h, h), "linear")
            add(f"{p}_mod.lin.bias", (6 * h,), "bias")
            add(f"{p}_attn.qkv.weight", (3 * h, h), "attn")
            add(f"{p}_attn.qkv.bias", (3 * h,), "bias")
            add(f"{p}_attn.norm.query_norm.scale", (128,), "norm")
            add(f"{p}_attn.norm.key_norm.scale", (128,), "norm")
            add(f"{p}_attn.proj.weight", (h, h), "attn")
            add(f"{p}_attn.proj.bias", (h,), "bias")
            add(f"{p}_mlp.0.weight", (4 * h, h), "ff")
            add(f"{p}_mlp.0.bias", (4 * h,), "bias")
            add(f"{p}_mlp.2.weight", (h, 4 * h), "ff")
            add(f"{p}_mlp.2.bias", (h,), "bias")
    for i in range(3):
        p = f"single_blocks.{i}"
        add(f"{p}.linear1.weight", (3 * h + 4 * h, h), "ff")
        add(f"{p}.linear1.bias", (7 * h,), "bias")
        add(f"{p}.linear2.weight", (h, h + 4 * h), "ff")
        add(f"{p}.linear2.bias", (h,), "bias")
        add(f"{p}.norm.query_norm.scale", (128,), "norm")
        add(f"{p}.modulation.lin.weight", (3 * h, h), "linear")
    add("final_layer.linear.weight", (64, h), "linear")
    add("final_layer.adaLN_modulation.1.weight", (2 * h, h), "linear")
    return out


def test_flux_presets():
    tagged = flux_keys()
    ns = named(tagged)
    ff = resolve_scope(ns, "ff")
    assert ff == with_tag(tagged, "ff") and len(ff) == 2 * 4 + 3 * 2
    assert resolve_scope(ns, "attention") == with_tag(tagged, "attn")
    assert resolve_scope(ns, "ff+attention") == with_tag(tagged, "ff", "attn")
    assert resolve_scope(ns, "all_linear") == with_tag(tagged, "ff", "attn", "linear")


# ---------------------------------------------------------------------------------------------- SD3 MMDiT
def mmdit_keys(blocks=3):
    out = []

    def add(k, s, t):
        out.append(("diffusion_model." + k, s, t))

    h = 1536
    add("x_embedder.proj.weight", (h, 16, 2, 2), "conv")
    add("t_embedder.mlp.0.weight", (h, 256), "linear")
    add("t_embedder.mlp.2.weight", (h, h), "linear")
    add("y_embedder.mlp.0.weight", (h, 2048), "linear")
    add("context_embedder.weight", (h, 4096), "linear")
    for i in range(blocks):
        last = i == blocks - 1
        for side in ("context_block", "x_block"):
            p = f"joint_blocks.{i}.{side}"
            pre_only = last and side == "context_block"
            add(f"{p}.adaLN_modulation.1.weight", ((2 if pre_only else 6) * h, h), "linear")
            add(f"{p}.attn.qkv.weight", (3 * h, h), "attn")
            add(f"{p}.attn.qkv.bias", (3 * h,), "bias")
            add(f"{p}.attn.ln_q.weight", (64,), "norm")
            if not pre_only:
                add(f"{p}.attn.proj.weight", (h, h), "attn")
                add(f"{p}.mlp.fc1.weight", (4 * h, h), "ff")
                add(f"{p}.mlp.fc1.bias", (4 * h,), "bias")
                add(f"{p}.mlp.fc2.weight", (h, 4 * h), "ff")
            if side == "x_block" and i == 0:                # SD3.5-medium style dual attention
                add(f"{p}.attn2.qkv.weight", (3 * h, h), "attn")
                add(f"{p}.attn2.proj.weight", (h, h), "attn")
    add("final_layer.linear.weight", (64, h), "linear")
    return out


def test_mmdit_presets():
    tagged = mmdit_keys()
    ns = named(tagged)
    ff = resolve_scope(ns, "ff")
    assert ff == with_tag(tagged, "ff") and len(ff) == 2 * (2 * 3 - 1)
    assert not any("t_embedder" in k or "y_embedder" in k for k in ff)
    assert resolve_scope(ns, "attention") == with_tag(tagged, "attn")
    assert resolve_scope(ns, "all_linear") == with_tag(tagged, "ff", "attn", "linear")


# ---------------------------------------------------------------------------------------------- unknown
def unknown_keys():
    out = [("x_embedder.weight", (2304, 64))]
    for i in range(4):
        out += [(f"layers.{i}.attention.qkv.weight", (3 * 2304, 2304)),
                (f"layers.{i}.attention.out.weight", (2304, 2304)),
                (f"layers.{i}.feed_forward.w1.weight", (6144, 2304)),
                (f"layers.{i}.feed_forward.w2.weight", (2304, 6144)),
                (f"layers.{i}.attention_norm1.weight", (2304,))]
    return out


def test_names_without_a_preset_resolve_by_module_name():
    """A Lumina-like model (no record): ff = the feed_forward matrices, attention = the attention ones."""
    ns = unknown_keys()
    assert resolve_scope(ns, "ff") == [k for k, _ in ns if ".feed_forward." in k]
    assert resolve_scope(ns, "attention") == [k for k, s in ns if ".attention." in k and len(s) == 2]
    assert set(resolve_scope(ns, "ff+attention")) == set(resolve_scope(ns, "ff")) | set(resolve_scope(ns, "attention"))


def test_unknown_architecture_all_linear_and_regex_still_work():
    ns = unknown_keys()
    assert resolve_scope(ns, "all_linear") == [k for k, s in ns if len(s) == 2]
    assert resolve_scope(ns, "regex", r"feed_forward\.w[12]\.weight$") == \
        [k for k, _ in ns if re.search(r"feed_forward\.w[12]", k)]


def test_presets_keep_only_2d_weights():
    # a conv-shaped weight under an ff name (e.g. a 1x1-conv port) is not a linear component
    tagged = sd15_keys()
    ns = [(k, s + (1, 1)) if k.endswith("middle_block.1.transformer_blocks.0.ff.net.2.weight") else (k, s)
          for k, s, _ in tagged]
    ff = resolve_scope(ns, "ff")
    assert len(ff) == 31 and not any(k.endswith("middle_block.1.transformer_blocks.0.ff.net.2.weight") for k in ff)


def test_an_architecture_with_nothing_recognisable_keeps_a_clear_error():
    shapes = [("diffusion_model.stem.weight", (8, 4)), ("diffusion_model.units.0.lin_a.weight", (8, 8)),
              ("diffusion_model.units.0.lin_b.weight", (8, 8)), ("diffusion_model.head.weight", (4, 8))]
    for scope in ("ff", "attention", "ff+attention"):
        with pytest.raises(CADError) as e:
            resolve_scope(shapes, scope)
        message = str(e.value)
        assert "no preset" in message and "no feed-forward or attention layers could be told" in message
        assert "scope 'regex'" in message and "units.0.lin_a" in message


def test_generic_names_need_a_block_and_two_dimensions():
    from cad_pack.cad_core.scopes import scope_notice
    shapes = [("diffusion_model.layers.0.feed_forward.w1.weight", (16, 8)), ("diffusion_model.layers.0.ffn_norm.weight", (8,)),
              ("diffusion_model.layers.1.attention.qkv.weight", (24, 8)), ("diffusion_model.final_mlp.weight", (4, 8)),
              ("diffusion_model.blocks.2.offset.weight", (8, 8)), ("diffusion_model.blocks.2.img_mlp.0.weight", (32, 8))]
    assert resolve_scope(shapes, "ff") == ["diffusion_model.layers.0.feed_forward.w1.weight",
                                           "diffusion_model.blocks.2.img_mlp.0.weight"]
    assert resolve_scope(shapes, "attention") == ["diffusion_model.layers.1.attention.qkv.weight"]
    assert "no 'ff' preset: CAD chose 2 matrices" in scope_notice(shapes, "ff", resolve_scope(shapes, "ff"))
    unet = [("diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight", (4, 16))]
    assert scope_notice(unet, "ff", resolve_scope(unet, "ff")) == ""      # a record decided: nothing to say
