"""cad_core.model_fingerprint: stable, dtype-tolerant as documented, and sensitive to weights/shapes."""
import re

import torch

from cad_pack.cad_core import model_fingerprint
from cad_pack.cad_core.fingerprint import SAMPLED_KEYS, SAMPLED_VALUES, sampled_keys


def make_weights(n_keys=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"diffusion_model.input_blocks.{i}.1.proj.weight": torch.randn(24, 16, generator=g) for i in range(n_keys)}


def fp(weights, shapes=None):
    named = [(k, tuple(v.shape)) for k, v in weights.items()] if shapes is None else shapes
    return model_fingerprint(named, lambda k: weights[k])


def test_format_and_stability():
    w = make_weights()
    a = fp(w)
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    assert fp(w) == a
    assert fp({k: v.clone() for k, v in w.items()}) == a                     # identical copy
    assert fp(dict(reversed(list(w.items())))) == a                          # key order does not matter


def test_fp16_copy_of_fp32_weights_has_the_same_fingerprint():
    # values are rounded through fp16, so an fp16 copy of fp32 weights rounds to the same bits
    w = make_weights()
    assert fp({k: v.half() for k, v in w.items()}) == fp(w)


def test_bf16_copy_matches_when_values_are_exact_in_bf16():
    # "mostly agree" for bf16: guaranteed when the fp32 values are already bf16-representable
    w = {k: v.bfloat16().float() for k, v in make_weights().items()}
    assert fp({k: v.bfloat16() for k, v in w.items()}) == fp(w)


def test_changed_sampled_value_changes_fingerprint():
    w = make_weights()
    base = fp(w)
    keys = sampled_keys(list(w))
    assert len(keys) == SAMPLED_KEYS
    for key in (keys[0], keys[-1]):
        for pos in (0, SAMPLED_VALUES - 1):
            w2 = {k: v.clone() for k, v in w.items()}
            w2[key].view(-1)[pos] += 0.5
            assert fp(w2) != base, (key, pos)


def test_changed_shape_or_name_changes_fingerprint():
    w = make_weights()
    base = fp(w)
    key = next(iter(w))
    shapes = [(k, tuple(v.shape)) for k, v in w.items()]
    shapes[5] = (shapes[5][0], (16, 24))                                     # same numel, other shape
    assert fp(w, shapes) != base
    w2 = dict(w)
    w2[key + "_renamed"] = w2.pop(key)
    assert fp(w2) != base
    w3 = dict(w)
    w3["diffusion_model.extra.weight"] = torch.zeros(3)                        # one more parameter
    assert fp(w3) != base


def test_different_models_differ():
    assert fp(make_weights(seed=0)) != fp(make_weights(seed=1))


def test_sampled_keys_spread_over_the_model():
    keys = [f"k{i:03d}" for i in range(100)]
    chosen = sampled_keys(keys[::-1])
    assert chosen == sorted(chosen) and len(chosen) == SAMPLED_KEYS
    assert chosen[0] == "k000" and chosen[-1] >= "k084"                      # evenly spaced, not the first 8
    assert sampled_keys(["b", "a"]) == ["a", "b"]
