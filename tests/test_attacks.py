"""benchmarks/attacks.py, the cheap parts (the attacks' runs are in make test-slow): the embedding attack feeds
ComfyUI's CLIP exactly as an `embedding:` file does (the shape word's own vector gives CLIP Text Encode's
conditioning bit for bit), RECE's probe undoes what a K/V edit did to the concept's keys and values, and a budget
that cannot attack is refused with the reason."""
import math

import pytest
import torch

from benchmarks import attacks, peers
from cad_pack.cad_core import CADError
from cad_pack.nodes.bridge import original_weight
from cad_pack.nodes.toyworld.evaluate import ToyWorld


@pytest.fixture(scope="module")
def world():
    return ToyWorld.load()


def test_the_embedding_route_is_clip_text_encode_for_the_word_it_replaces(world):
    tokens, _ = attacks.placeholder_tokens(world.clip, "square", 1)
    vector = attacks.token_embedding(world.clip, attacks.word_tokens_of(world.clip, "square")[0])[None]
    got = attacks.encode_with_embedding_on(world.clip.cond_stage_model.clip_l, tokens, vector)
    assert torch.equal(got, world.cond("a square")[0][0])
    two, _ = attacks.placeholder_tokens(world.clip, "square", 2)
    assert len(two) == len(tokens) - 1            # two vectors take one word's place: still 77 positions
    with pytest.raises(CADError, match="one-token word"):
        attacks.placeholder_tokens(world.clip, "a red", 1)


def test_rece_probe_gives_back_the_keys_and_values_a_kv_edit_took_away(world):
    concept = world.cond("a square")[0][0]
    assert torch.equal(attacks.rece_probe(world.model, {}, concept), concept)   # nothing edited: the prompt itself
    deltas = peers.uce(world, "square")
    probe = attacks.rece_probe(world.model, deltas, concept, ridge=1e-4)

    def kv_error(rows):
        total = 0.0
        for key, d in deltas.items():
            w = original_weight(world.model, key).detach().float()
            total += float(((rows[0] @ (w + d).T) - (concept[0] @ w.T)).pow(2).sum())
        return total
    assert kv_error(probe) < 0.1 * kv_error(concept)


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "at least one step"), ({"lr": float("nan")}, "learning rate must be a finite number"),
    ({"lr": 0.0}, "learning rate"), ({"batch": 0}, "batch must be a whole number"),
    ({"tokens": 5}, "1 to 4 token embeddings")])
def test_a_budget_that_cannot_attack_is_refused(changes, message):
    with pytest.raises(CADError, match=message):
        attacks.Budget(**changes)
    assert attacks.STATED.steps >= 200 and attacks.STRONG.steps >= 1000 and math.isclose(attacks.STATED.lr, 0.02)


def test_an_unknown_attack_or_start_is_refused(world):
    with pytest.raises(CADError, match="Unknown attack 'guess'"):
        attacks.run_attack("guess", world, world.model, world.model, "square", None, attacks.STATED)
    with pytest.raises(CADError, match="start must be"):
        attacks.run_attack("conditioning", world, world.model, world.model, "square", None, attacks.STATED,
                           start="middle")
