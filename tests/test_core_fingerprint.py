"""cad_core.model_fingerprint: stable, dtype-tolerant as documented, sensitive to weights and shapes anywhere in
the model (scheme v2); files with the older kind (v1) are still matched to their model."""
import re

import pytest
import torch

from cad_pack.cad_core import CADError, ModelFingerprints, model_fingerprint, require_same_model
from cad_pack.cad_core.fingerprint import (SAMPLED_KEYS, SAMPLED_VALUES, STRIDED_VALUES, legacy_fingerprint,
                                           sampled_keys, scheme_of)


def make_weights(n_keys=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"diffusion_model.input_blocks.{i}.1.proj.weight": torch.randn(24, 16, generator=g) for i in range(n_keys)}


def fp(weights, shapes=None):
    named = [(k, tuple(v.shape)) for k, v in weights.items()] if shapes is None else shapes
    return model_fingerprint(named, lambda k: weights[k])


def test_format_and_stability():
    w = make_weights()
    a = fp(w)
    assert re.fullmatch(r"v2-[0-9a-f]{16}", a) and scheme_of(a) == "v2"
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


def fine_tuned(weights, key, scale=1e-2, seed=9):
    """What a fine-tune does to the tensors it trains: every value moves a little."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in weights.items()}
    out[key] += scale * torch.randn(out[key].shape, generator=g)
    return out


def test_a_fine_tune_of_any_one_tensor_changes_the_fingerprint():
    w = make_weights()
    base = fp(w)
    for key in w:
        assert fp(fine_tuned(w, key)) != base, key


def test_v1_missed_fine_tunes_of_tensors_it_did_not_sample():
    """Why the scheme changed (issue: a fine-tune touching other weights accepted masks made for the original)."""
    w = make_weights()
    named = [(k, tuple(v.shape)) for k, v in w.items()]
    unsampled = next(k for k in w if k not in sampled_keys(list(w)))
    tuned = fine_tuned(w, unsampled)
    assert legacy_fingerprint(named, lambda k: tuned[k]) == legacy_fingerprint(named, lambda k: w[k])
    assert fp(tuned) != fp(w)


def test_strided_sample_reaches_the_end_of_every_tensor():
    w = {"diffusion_model.big.weight": torch.zeros(4 * STRIDED_VALUES + 3), "diffusion_model.small.weight": torch.zeros(5)}
    base = fp(w)
    for key, pos in (("diffusion_model.big.weight", -1), ("diffusion_model.big.weight", 0),
                     ("diffusion_model.small.weight", 2)):
        w2 = {k: v.clone() for k, v in w.items()}
        w2[key][pos] = 1.0
        assert fp(w2) != base, (key, pos)


def test_large_tensors_are_sampled_up_to_their_last_element():
    """SDXL has tensors of 29,491,200 values; a float32 index would round past the end of them."""
    big = torch.zeros(29_491_200, dtype=torch.float16)
    base = fp({"diffusion_model.big.weight": big})
    big[-1] = 1.0
    assert fp({"diffusion_model.big.weight": big}) != base


def test_files_with_v1_fingerprints_still_match_their_model_and_no_other():
    w, other = make_weights(), make_weights(seed=1)
    named = [(k, tuple(v.shape)) for k, v in w.items()]
    old_file = legacy_fingerprint(named, lambda k: w[k])
    assert re.fullmatch(r"[0-9a-f]{16}", old_file) and scheme_of(old_file) == "v1"
    model = ModelFingerprints(named, lambda k: w[k])
    require_same_model(old_file, model, "The file", "this model", "")                     # accepted
    require_same_model(fp(w), model, "The file", "this model", "")
    with pytest.raises(CADError, match="made for another model"):
        require_same_model(old_file, ModelFingerprints(named, lambda k: other[k]), "The file", "this model", "")
    with pytest.raises(CADError, match="fingerprints of different kinds"):
        require_same_model(old_file, fp(w), "One mask", "the other", "")           # two files: cannot compare


def test_v1_changed_sampled_value_changes_its_fingerprint():
    w = make_weights()
    named = [(k, tuple(v.shape)) for k, v in w.items()]
    base = legacy_fingerprint(named, lambda k: w[k])
    keys = sampled_keys(list(w))
    assert len(keys) == SAMPLED_KEYS
    for key in (keys[0], keys[-1]):
        for pos in (0, SAMPLED_VALUES - 1):
            w2 = {k: v.clone() for k, v in w.items()}
            w2[key].view(-1)[pos] += 0.5
            assert legacy_fingerprint(named, lambda k: w2[k]) != base, (key, pos)


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
