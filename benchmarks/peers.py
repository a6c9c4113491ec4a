"""The erase methods CAD is measured against, written from their papers for the toy world (docs/method.md,
sections 6 and 7). Not part of the pack: benchmarks/erase_vs_peers.py runs them beside CAD on the same seeds.

- UCE (Gandikota et al., WACV 2024): a closed-form edit of every cross-attention K and V so that the concept's
  text rows map to a guide's while kept concepts' rows map as before. The solve is cad_core.closed_form's, the one
  the pack's CAD-located edit uses on fewer matrices, so two rows of the table differ only in where they edit.
- ESD-x (Gandikota et al., ICCV 2023): fine-tune the cross-attention weights so that the model's prediction for
  the concept follows the frozen original's negatively guided prediction, eps(x, '') - eta (eps(x, c) - eps(x, '')),
  at points x_t of the original's own sampling trajectories for the concept. ESD-u: the same on the weights outside
  cross-attention (the paper's 'noxattn').
- RECE (Gong et al., ECCV 2024): UCE, then rounds of its closed-form adversarial embedding erased too.
- SalUn (Fan et al., ICLR 2024): a saliency mask from the forget loss's gradient, then the masked weights trained
  so the concept's prompts predict as another concept's do on the same pictures, with a retain loss.

Each returns weight changes {key: dW}; apply_deltas patches a clone of the MODEL with them as ComfyUI 'diff'
patches (what a LoRA loader does), so every method is sampled through the same ComfyUI path.
"""
import copy

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from cad_pack.cad_core.closed_form import closed_form_edit
from cad_pack.cad_core.edit import WeightEdit
from cad_pack.cad_core.erase_settings import DEFAULT_ERASE
from cad_pack.nodes.bridge import fingerprint_of, original_weight, patchable_weights
from cad_pack.nodes.bridge.edits import apply_edit
from cad_pack.nodes.toyworld.evaluate import CFG, SAMPLE_STEPS, SAMPLER, SCHEDULER
from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES, caption

CROSS_ATTENTION_KV = ("attn2.to_k.", "attn2.to_v.")


def kv_keys(model) -> list[str]:
    """Every cross-attention K and V weight: the matrices that read the text encoder's rows."""
    return [k for k, _ in patchable_weights(model) if k.endswith(".weight") and any(m in k for m in CROSS_ATTENTION_KV)]


def erase_prompts(target: str) -> list[tuple[str, str]]:
    """(prompt, guide) pairs that name the shape: 'a <colour> <shape>' -> 'a <colour>' (the colour stays) and
    'a <shape>' -> '' ."""
    return [(caption(target, c), caption(None, c)) for c in COLOUR_NAMES] + [(caption(target, None), "")]


def kept_prompts(target: str) -> list[str]:
    """Every prompt of the world that does not name the shape."""
    return [caption(s, c) for s in SHAPES if s != target for c in (*COLOUR_NAMES, None)] + \
        [caption(None, c) for c in COLOUR_NAMES] + [""]


class TextRows:
    """The text encoder's rows of a prompt (what cross-attention K/V read), the first `rows` token positions."""

    def __init__(self, world, rows: int):
        self.world, self.rows = world, rows

    def __call__(self, prompts) -> torch.Tensor:
        return torch.cat([self.world.cond(p)[0][0][0, :self.rows].float() for p in prompts])


def closed_form_inputs(world, target: str, rows: int):
    """(erase, guide, keep) input rows of the closed form for erasing `target`."""
    text = TextRows(world, rows)
    pairs = erase_prompts(target)
    return text([p for p, _ in pairs]), text([g for _, g in pairs]), text(kept_prompts(target))


def uce(world, target: str, keys=None, rows: int = 77, preserve: float = 1.0, ridge: float = DEFAULT_ERASE.ridge,
        overshoot: float = 0.0) -> dict:
    """UCE's edit of `keys` (default: every cross-attention K and V)."""
    keys = keys or kv_keys(world.model)
    erase, guide, keep = closed_form_inputs(world, target, rows)
    weights = {k: original_weight(world.model, k).float() for k in keys}
    return closed_form_edit(weights, erase, guide, keep, preserve, ridge, overshoot)


def esd_trains(name: str, variant: str) -> bool:
    """Which parameters ESD fine-tunes: 'x' every cross-attention ('attn2') weight and bias; 'u' the
    unconditioned ones, as the paper's code selects them: everything but cross-attention, the time embedding and
    the output layer."""
    if variant == "x":
        return ".attn2." in name
    return ".attn2." not in name and not name.startswith(("time_embed.", "out."))


def esd_x(world, target: str, steps: int = 200, lr: float = 3e-4, eta: float = 1.0, batch: int = 8,
          seed: int = 0, trajectories: int = 4, variant: str = "x") -> dict:
    """ESD-x (variant 'x'; ESD-u with 'u'): fine-tune the parameters esd_trains picks for `steps` Adam steps.

    Points x_t: the frozen original's euler trajectories (the pictures' sampler, steps and CFG) for each prompt
    naming the shape, `trajectories` seeds each. Loss: the model's own training loss (v-prediction: the
    x0-error weighted by (sigma^2 + 1) / sigma^2) between the trained model's prediction for the prompt and the
    frozen original's negatively guided one."""
    comfy.model_management.unload_all_models()  # a patched clone sampled last may still hold its weights in place
    original = world.model.model
    trained = copy.deepcopy(original)
    names = [n for n, _ in trained.diffusion_model.named_parameters() if esd_trains(n, variant)]
    for n, p in trained.diffusion_model.named_parameters():
        p.requires_grad_(n in names)
    params = [p for n, p in trained.diffusion_model.named_parameters() if n in names]
    prompts = [p for p, _ in erase_prompts(target)]
    pool = _trajectory_points(world, prompts, trajectories, seed)
    empty = world.cond("")[0][0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        pick = torch.randint(len(pool), (batch,), generator=g)
        x = torch.stack([pool[i][0] for i in pick])
        sigma = torch.stack([pool[i][1] for i in pick])
        context = torch.cat([world.cond(prompts[pool[i][2]])[0][0] for i in pick])
        with torch.no_grad():
            with_concept = original.apply_model(x, sigma, c_crossattn=context)
            without = original.apply_model(x, sigma, c_crossattn=empty.expand_as(context))
            target_x0 = without - eta * (with_concept - without)
        weight = ((sigma ** 2 + 1) / sigma ** 2).view(-1, 1, 1, 1)
        loss = (weight * (trained.apply_model(x, sigma, c_crossattn=context) - target_x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = dict(original.diffusion_model.named_parameters())
    return {f"diffusion_model.{n}": (p.detach() - before[n].detach()).float()
            for n, p in trained.diffusion_model.named_parameters() if n in names}


def rece(world, target: str, rounds: int = 2, rows: int = 77, preserve: float = 1.0,
         ridge: float = DEFAULT_ERASE.ridge, overshoot: float = 0.0, probe_ridge: float = 0.01) -> dict:
    """RECE (Gong et al., ECCV 2024): UCE on every cross-attention K/V, then `rounds` times: derive in closed form
    the text rows that still give the original's keys and values for each erased prompt through the edited
    matrices (benchmarks.attacks.rece_probe), and erase those rows too (same guide, same kept prompts), on the
    edited weights."""
    from benchmarks.attacks import rece_probe
    keys = kv_keys(world.model)
    erase, guide, keep = closed_form_inputs(world, target, rows)
    weights = {k: original_weight(world.model, k).float() for k in keys}
    deltas = closed_form_edit(weights, erase, guide, keep, preserve, ridge, overshoot)
    text = TextRows(world, 77)
    prompts = [p for p, _ in erase_prompts(target)]
    for _ in range(rounds):
        found = torch.cat([rece_probe(world.model, deltas, text([p]).unsqueeze(0), probe_ridge)[0, :rows]
                           for p in prompts])
        current = {k: weights[k] + deltas[k] for k in keys}
        more = closed_form_edit(current, found, guide, keep, preserve, ridge, overshoot)
        deltas = {k: deltas[k] + more[k] for k in keys}
    return deltas


def salun(world, target: str, steps: int = 100, lr: float = 1e-4, alpha: float = 0.5, saliency: float = 0.5,
          batch: int = 8, pictures: int = 4, seed: int = 0) -> dict:
    """SalUn (Fan et al., ICLR 2024), its 'certain label' recipe for a diffusion model, on the toy world.

    Forget pictures: the original's own samples of every prompt naming the shape; each is relabelled with the
    same prompt naming the next shape ('a red square' -> 'a red triangle'). Saliency: |gradient| of the forget
    pictures' denoising loss over every UNet weight, the top `saliency` share of all entries (0.5 in the paper).
    Training: only salient entries move (gradients masked), Adam on
        |D'(x_t, c) - stopgrad D'(x_t, c')|^2  +  alpha * (denoising loss of the kept prompts' own pictures),
    x_t the forget pictures at random noise levels, c the shape's prompt, c' the relabelled one."""
    comfy.model_management.unload_all_models()
    g = torch.Generator().manual_seed(seed)
    original = world.model.model
    trained = copy.deepcopy(original)
    params = dict(trained.diffusion_model.named_parameters())
    forget, kept = [p for p, _ in erase_prompts(target)], kept_prompts(target)
    nxt = SHAPES[(SHAPES.index(target) + 1) % len(SHAPES)]
    relabel = [p.replace(target, nxt) for p in forget]
    forget_x0, forget_of = _pictures(world, forget, pictures, seed)
    kept = [p for p in kept if any(s in p for s in SHAPES)]   # prompts that name a shape: their pictures are known
    keep_x0, keep_of = _pictures(world, kept, 1, seed + 100)
    sigmas = world.model.get_model_object("model_sampling").sigmas.float()
    conds = {p: world.cond(p)[0][0].float() for p in forget + relabel + kept}

    def noised(x0, count):
        pick = torch.randint(len(x0), (count,), generator=g)
        sigma = sigmas[torch.randint(len(sigmas), (count,), generator=g)]
        return pick, sigma, x0[pick] + torch.randn(x0[pick].shape, generator=g) * sigma.view(-1, 1, 1, 1)

    def denoising_loss(x0, owner, prompts):
        pick, sigma, x_t = noised(x0, batch)
        ctx = torch.cat([conds[prompts[int(owner[i])]] for i in pick])
        weight = ((sigma ** 2 + 1) / sigma ** 2).view(-1, 1, 1, 1)
        return (weight * (trained.apply_model(x_t, sigma, c_crossattn=ctx) - x0[pick]) ** 2).mean()

    for p in params.values():
        p.requires_grad_(True)
    saliency_grad = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(4):
        trained.zero_grad()
        denoising_loss(forget_x0, forget_of, forget).backward()
        for n, p in params.items():
            if p.grad is not None:
                saliency_grad[n] += p.grad.abs()
    flat = torch.cat([v.flatten() for v in saliency_grad.values()])
    threshold = flat.kthvalue(max(1, int(round((1 - saliency) * flat.numel())))).values
    masks = {n: (v >= threshold).float() for n, v in saliency_grad.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    for _ in range(steps):
        pick, sigma, x_t = noised(forget_x0, batch)
        own = torch.cat([conds[forget[int(forget_of[i])]] for i in pick])
        other = torch.cat([conds[relabel[int(forget_of[i])]] for i in pick])
        with torch.no_grad():
            pseudo = trained.apply_model(x_t, sigma, c_crossattn=other)
        loss = ((trained.apply_model(x_t, sigma, c_crossattn=own) - pseudo) ** 2).mean() + \
            alpha * denoising_loss(keep_x0, keep_of, kept)
        opt.zero_grad()
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                p.grad.mul_(masks[n])
        opt.step()
    before = dict(original.diffusion_model.named_parameters())
    return {f"diffusion_model.{n}": (p.detach() - before[n].detach()).float()
            for n, p in params.items() if bool((p.detach() != before[n].detach()).any())}


def _pictures(world, prompts, per_prompt: int, seed: int):
    """Clean latents of the original's own pictures of each prompt, and which prompt drew each."""
    out, owner = [], []
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            latent = torch.zeros((per_prompt, 48, 8, 8))
            noise = comfy.sample.prepare_noise(latent, seed + i)
            out.append(comfy.sample.sample(world.model, noise, SAMPLE_STEPS, CFG, SAMPLER, SCHEDULER,
                                           world.cond(prompt), world.cond(""), latent, seed=seed + i,
                                           disable_pbar=True).float())
            owner += [i] * per_prompt
    return torch.cat(out).clone(), torch.tensor(owner)


def _trajectory_points(world, prompts, per_prompt: int, seed: int) -> list:
    """(x_t, sigma, prompt index) at every step of the original model's sampling of each prompt."""
    points = []
    sigmas = comfy.samplers.calculate_sigmas(world.model.get_model_object("model_sampling"), SCHEDULER,
                                             SAMPLE_STEPS).float()
    for pi, prompt in enumerate(prompts):
        latent = torch.zeros((per_prompt, 48, 8, 8))
        noise = comfy.sample.prepare_noise(latent, seed + pi)
        seen = []
        with torch.inference_mode():
            comfy.sample.sample(world.model, noise, SAMPLE_STEPS, CFG, SAMPLER, SCHEDULER, world.cond(prompt),
                                world.cond(""), latent, seed=seed + pi, disable_pbar=True,
                                callback=lambda i, x0, x, total: seen.append((i, x.clone())))
        for i, x in seen:
            points += [(x[j].clone(), sigmas[i].clone(), pi) for j in range(per_prompt)]
    return points


def apply_deltas(model, deltas: dict, strength: float = 1.0):
    """A clone of `model` with W += strength x dW for each key, through the pack's own path (CAD Erase Concept's
    apply_edit: ComfyUI 'diff' patches); `model` is untouched."""
    return apply_edit(model, WeightEdit(deltas, fingerprint_of(model)), strength)


def random_deltas(deltas: dict, seed: int = 0) -> dict:
    """The control for a dense edit: a random change of the same Frobenius norm in each of the same matrices."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, d in deltas.items():
        r = torch.randn(d.shape, generator=g)
        out[k] = r * (d.norm() / r.norm().clamp(min=1e-30))
    return out
