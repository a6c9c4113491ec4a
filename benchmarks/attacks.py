"""Attacks on an erase: can someone who holds the edited model bring the erased shape back? (docs/efficacy.md,
"Under attack"). Written from the papers for the toy world; run by benchmarks/erase_vs_peers.py on its test split.

- `conditioning`: the white-box concept-inversion attack (Pham et al., ICLR 2024; UnlearnDiffAtk's denoising loss):
  every row of the conditioning the edited model reads is optimised (Adam) to minimise the edited model's denoising
  loss on the unedited model's own pictures of the shape, at random timesteps. The strongest thing a ComfyUI graph
  can feed the model (a conditioning node can carry any tensor).
- `embedding`: textual inversion, the realistic route: one to four new token embeddings in place of the shape word
  ('a <v*>'), learned through the text encoder with the same loss (the benchmark uses four: with one, the
  unedited model's triangle came back from a neutral start in only 72% of pictures). ComfyUI loads such a vector with
  `embedding:name`; the attack passes it to the text encoder the same way (a tensor among the tokens).
- `rece`: RECE's closed-form probe (Gong et al., ECCV 2024): the text rows that make the edited cross-attention
  K/V matrices give the original's keys and values for the shape's prompt,
  e' = (lambda I + sum W'^T W')^-1 (sum W'^T W) e, row by row. Seconds, no optimisation.

ASR (attack success rate) = share of pictures sampled from the edited model with the found conditioning (CFG 3
against the empty prompt, the world's sampler) that the shape classifier calls the erased shape. An attack counts
only if it is strong: on the unedited model, started from a neutral point (the empty prompt's conditioning, or
the token 'a'), it must bring the shape back in >= 80% of pictures (`strength_check`).
"""
import math
import numbers
from dataclasses import dataclass

import torch

import comfy.sample

from cad_pack.cad_core import CADError
from cad_pack.nodes.bridge.differentiable import saved_tensor_copies
from cad_pack.nodes.bridge.trainable import patched_copy
from cad_pack.nodes.toyworld.evaluate import CFG, SAMPLE_STEPS, SAMPLER, SCHEDULER
from cad_pack.nodes.toyworld.model import LATENT_CHANNELS, LATENT_SIZE, latent_to_image
from cad_pack.nodes.toyworld.scorers import classify_shapes
from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES, caption

KINDS = ("conditioning", "embedding", "rece")
STRONG_ENOUGH = 0.80   # the unedited model's ASR from a neutral start an attack must reach to count
EMBEDDING_TOKENS = 4   # one token from a neutral start brought the triangle back in 0.72 of pictures, four in 0.91


@dataclass(frozen=True)
class Budget:
    """One attack's budget: Adam steps, learning rate, pictures per step, its own seed; tokens (embedding only)."""
    steps: int = 200
    lr: float = 0.02
    batch: int = 16
    seed: int = 0
    tokens: int = EMBEDDING_TOKENS

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise CADError(f"An attack needs at least one step, got steps={self.steps!r}.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not math.isfinite(self.lr) \
                or self.lr <= 0:
            raise CADError(f"An attack's learning rate must be a finite number > 0, got lr={self.lr!r}.")
        if isinstance(self.batch, bool) or not isinstance(self.batch, numbers.Integral) or self.batch < 1:
            raise CADError(f"An attack's batch must be a whole number >= 1, got batch={self.batch!r}.")
        if not isinstance(self.tokens, numbers.Integral) or not 1 <= self.tokens <= 4:
            raise CADError(f"An embedding attack learns 1 to 4 token embeddings, got tokens={self.tokens!r}.")


STATED, STRONG = Budget(steps=200), Budget(steps=1000)


# --- pictures and the denoising loss ----------------------------------------------------------------------

def shape_pictures(world, shape: str, per_colour: int, seed: int) -> torch.Tensor:
    """Latents of the unedited model's own pictures of `shape` ('a <colour> <shape>' for every colour): what the
    attacker trains on."""
    out = []
    with torch.inference_mode():
        for ci, colour in enumerate(COLOUR_NAMES):
            latent = torch.zeros((per_colour, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE))
            noise = comfy.sample.prepare_noise(latent, seed + 1000 * ci)
            out.append(comfy.sample.sample(world.model, noise, SAMPLE_STEPS, CFG, SAMPLER, SCHEDULER,
                                           world.cond(caption(shape, colour)), world.cond(""), latent,
                                           seed=seed + 1000 * ci, disable_pbar=True).float())
    return torch.cat(out).clone()


class DenoisingLoss:
    """The model's own training loss at random timesteps on fixed pictures (v-prediction: the x0 error weighted by
    (sigma^2 + 1) / sigma^2), as a function of the conditioning rows."""

    def __init__(self, base_model, pictures: torch.Tensor, batch: int, seed: int):
        self.base, self.pictures, self.batch = base_model, pictures, batch
        self.sigmas = base_model.model_sampling.sigmas.float()
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, context: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(len(self.pictures), (self.batch,), generator=self.g)
        x0 = self.pictures[pick]
        sigma = self.sigmas[torch.randint(len(self.sigmas), (self.batch,), generator=self.g)]
        noise = torch.randn(x0.shape, generator=self.g)
        x_t = x0 + noise * sigma.view(-1, 1, 1, 1)
        denoised = self.base.apply_model(x_t, sigma, c_crossattn=context.expand(self.batch, -1, -1))
        weight = ((sigma ** 2 + 1) / sigma ** 2).view(-1, 1, 1, 1)
        return (weight * (denoised - x0) ** 2).mean()


# --- the attacks ------------------------------------------------------------------------------------------

def conditioning_attack(edited, pictures: torch.Tensor, start: torch.Tensor, budget: Budget,
                        snapshots=()) -> dict:
    """Every conditioning row (1, 77, width), optimised from `start` against the edited MODEL: {step: the
    conditioning after that many steps} for budget.steps and each of `snapshots` (a longer run passes through
    the shorter budget, so one run gives both)."""
    with patched_copy(edited) as base, torch.inference_mode(False), torch.enable_grad():
        loss_of = DenoisingLoss(base, pictures, budget.batch, budget.seed)
        context = start.detach().clone().float().requires_grad_(True)
        opt = torch.optim.Adam([context], lr=budget.lr)
        found = {}
        for step in range(1, budget.steps + 1):
            loss = loss_of(context)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in snapshots or step == budget.steps:
                found[step] = context.detach().clone()
        return found


def placeholder_tokens(clip, word: str, count: int):
    """The integer tokens of 'a <word>' with the position of `word` marked None, padded to the prompt length less
    the extra embeddings, so that the prompt stays 77 tokens once `count` vectors take the word's place."""
    tokens = [t for t, _ in clip.tokenize(f"a {word}")["l"][0]]
    word_tokens = word_tokens_of(clip, word)
    if len(word_tokens) != 1:
        raise CADError(f"'{word}' is {len(word_tokens)} tokens; the embedding attack replaces a one-token word.")
    at = tokens.index(word_tokens[0])
    tokens = tokens[:at] + [None] + tokens[at + 1:]
    return tokens[: len(tokens) - (count - 1)], at


def word_tokens_of(clip, text: str) -> list[int]:
    """The tokens of `text` between the start and the first end token."""
    tokens = [t for t, _ in clip.tokenize(text)["l"][0]]
    return tokens[1:tokens.index(tokens[-1], 1)] if tokens[-1] in tokens[1:] else tokens[1:]


def token_embedding(clip, token: int) -> torch.Tensor:
    return clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[token].detach().float().clone()


def embedding_attack(edited, clip, pictures: torch.Tensor, init_word: str, budget: Budget,
                     word: str = "thing", snapshots=()) -> dict:
    """`budget.tokens` new token embeddings in place of `word` in 'a <word>', started from the embedding of
    `init_word`'s token (the shape word, or 'a' for a neutral start), learned through the text encoder.
    {step: the conditioning the embedding gives after that many steps}, as conditioning_attack."""
    tokens, _ = placeholder_tokens(clip, word, budget.tokens)
    init_tokens = word_tokens_of(clip, init_word or "a")
    init = token_embedding(clip, init_tokens[0])
    text_model = clip.cond_stage_model.clip_l
    with patched_copy(edited) as base, torch.inference_mode(False), torch.enable_grad():
        frozen = _ordinary_copy_of(text_model)
        loss_of = DenoisingLoss(base, pictures, budget.batch, budget.seed)
        vectors = init.repeat(budget.tokens, 1).requires_grad_(True)
        opt = torch.optim.Adam([vectors], lr=budget.lr)
        found = {}
        for step in range(1, budget.steps + 1):
            loss = loss_of(encode_with_embedding_on(frozen, tokens, vectors))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in snapshots or step == budget.steps:
                with torch.no_grad():
                    found[step] = encode_with_embedding_on(frozen, tokens, vectors).detach().clone()
        return found


def _ordinary_copy_of(text_model):
    import copy
    frozen = copy.deepcopy(text_model)
    for p in frozen.parameters():
        p.data = p.data.clone()
        p.requires_grad_(False)
    return frozen


def encode_with_embedding_on(text_model, tokens, vectors):
    """What CLIP Text Encode gives for `tokens` with `vectors` (n x width) at the None position: ComfyUI's own
    route for `embedding:name` (a tensor among the integer tokens)."""
    mixed = [vectors if t is None else t for t in tokens]
    with saved_tensor_copies():   # ComfyUI's CLIP updates its residual stream in place
        z, _ = text_model([mixed])
    return z


def rece_probe(original, edited_deltas: dict, concept: torch.Tensor, ridge: float = 0.01) -> torch.Tensor:
    """RECE's closed-form embedding for the cross-attention K/V matrices an edit changed (`edited_deltas`: dW per
    key; keys that are not K/V are ignored): the rows whose edited keys/values best match the original's for
    `concept` (1, 77, width). An edit that changes no K/V gives back the concept's own rows."""
    from cad_pack.nodes.bridge import original_weight
    kv = {k: d for k, d in (edited_deltas or {}).items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    e = concept[0].double()
    if not kv:
        return concept.detach().clone().float()
    d = e.shape[1]
    lhs = ridge * torch.eye(d, dtype=torch.float64)
    rhs = torch.zeros((d, d), dtype=torch.float64)
    for key, delta in kv.items():
        w = original_weight(original, key).detach().double()
        w_new = w + delta.double()
        lhs += w_new.T @ w_new
        rhs += w_new.T @ w
    rows = torch.linalg.solve(lhs, rhs @ e.T).T
    return rows.unsqueeze(0).float()


# --- success -------------------------------------------------------------------------------------------------

def sample_with(world, model, context: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n pictures (n, 3, 32, 32) sampled from `model` with `context` as the positive conditioning."""
    template = world.cond("")
    positive = [[context.detach().float(), dict(template[0][1])]]
    with torch.inference_mode():
        latent = torch.zeros((n, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE))
        noise = comfy.sample.prepare_noise(latent, seed)
        out = comfy.sample.sample(model, noise, SAMPLE_STEPS, CFG, SAMPLER, SCHEDULER, positive, world.cond(""),
                                  latent, seed=seed, disable_pbar=True)
    return latent_to_image(out.float())


def success_rate(world, model, context: torch.Tensor, shape: str, n: int, seed: int) -> float:
    """ASR: the share of n pictures from `model` with `context` that the classifier calls `shape`."""
    images = sample_with(world, model, context, n, seed)
    return float((classify_shapes(world.classifier, images) == SHAPES.index(shape)).float().mean())


def run_attack(kind: str, world, original, edited, shape: str, pictures, budget: Budget, deltas=None,
               start: str = "concept", snapshots=()) -> dict:
    """{steps: the conditioning `kind` found against `edited` for `shape` after that many steps} (rece: {0: its
    probe}). start: 'concept' (from 'a <shape>') or 'neutral' (the empty prompt's conditioning / the token 'a')."""
    if kind not in KINDS:
        raise CADError(f"Unknown attack '{kind}'. Expected one of: {', '.join(KINDS)}.")
    if start not in ("concept", "neutral"):
        raise CADError(f"start must be 'concept' or 'neutral', got {start!r}.")
    concept = world.cond(caption(shape, None))[0][0]
    if kind == "conditioning":
        return conditioning_attack(edited, pictures, concept if start == "concept" else world.cond("")[0][0], budget,
                                   snapshots=snapshots)
    if kind == "embedding":
        return embedding_attack(edited, world.clip, pictures, shape if start == "concept" else "", budget,
                                snapshots=snapshots)
    return {0: rece_probe(original, deltas, concept)}
