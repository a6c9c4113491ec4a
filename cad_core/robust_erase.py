"""The robust erase: fine-tune only the weights CAD locates in the image pathway, against an attacker that keeps
looking for the conditioning that brings the concept back (docs/method.md, "Robust erase").

Why: a cross-attention K/V edit changes what the prompt reads, not what the model can draw; a learned embedding or
a tuned conditioning walks around it. This edit works where the picture is drawn (feed-forward, attention and
projection layers), and puts the attack in the loop, as adversarial unlearning does (AdvUnlearn, RECE's rounds):

    repeat `steps` times:
      the adversary: one Adam step on a pool of conditionings (started from the erased prompts' own and from the
        empty prompt's), lowering the edited model's denoising loss on pictures of the concept: the attack's own
        objective, so the pool tracks what an attacker would find against the model as it is now;
      the model: one Adam step on the located weights only (gradients outside the mask are zeroed, as in SalUn),
        on  forget = |D'(x_t, c) - T(x_t)|^2  over the erased prompts' c and the adversary's pool, where
            T = D(x_t, g) - overshoot * (D(x_t, e) - D(x_t, g))  (the original's prediction, guided away from the
            concept: ESD's target with the erased prompt e and its guide g), at points x_t of the concept's pictures,
        and retain = |D'(x_t, k) - D(x_t, k)|^2  on the kept prompts' pictures, read with their own prompt k and
            with the empty prompt (CFG's unconditional branch), weighted by `preserve`.

D is the original denoiser (x0 prediction), D' the one being edited. Every target comes from D before the first
step (a pool of points drawn once), so the caller needs one copy of the model, not two.

`train_robust_erase` is backend-free: the caller hands in the denoiser as a function of (x_t, sigma, context),
the parameters to train (the denoiser's own), which entries of them may change, the concept's and the kept
prompts' pictures (clean latents) and conditionings. It returns dW per parameter; the parameters are restored.
"""
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import CADError


@dataclass(frozen=True)
class RobustEraseInputs:
    """What the robust erase trains on (all on the denoiser's device, its compute dtype):

    erase_pictures (N, C, H, W) clean latents of the concept; erase_of_picture (N,) which erased prompt drew each;
    keep_pictures (M, C, H, W) of the kept prompts; keep_of_picture (M,) which kept prompt drew each;
    erase_context / guide_context (P, L, D): each erased prompt's conditioning and its guide's, row for row;
    keep_context (Q, L, D); empty_context (1, L, D): the adversary's neutral start;
    sigmas: the noise levels to train at (e.g. the model's training schedule)."""

    erase_pictures: torch.Tensor
    erase_of_picture: torch.Tensor
    keep_pictures: torch.Tensor
    keep_of_picture: torch.Tensor
    erase_context: torch.Tensor
    guide_context: torch.Tensor
    keep_context: torch.Tensor
    empty_context: torch.Tensor
    sigmas: torch.Tensor

    def check(self) -> None:
        if not len(self.erase_pictures) or not len(self.keep_pictures):
            raise CADError("The robust erase needs pictures of the concept and of the kept prompts; got none.")
        if self.erase_context.shape != self.guide_context.shape:
            raise CADError(f"Each erased prompt needs its guide: {tuple(self.erase_context.shape)} vs "
                           f"{tuple(self.guide_context.shape)}.")
        for name in ("erase_pictures", "keep_pictures", "erase_context", "guide_context", "keep_context",
                     "empty_context"):
            if not torch.isfinite(getattr(self, name)).all():
                raise CADError(f"The robust erase's {name.replace('_', ' ')} hold NaN or inf values.")


@dataclass(frozen=True)
class RobustSchedule:
    """How long and how hard the robust erase trains (the numbers of EraseSettings that concern it)."""
    steps: int
    lr: float
    batch: int
    overshoot: float
    preserve: float
    adversary_lr: float
    adversaries: int
    seed: int


def train_robust_erase(predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                       add_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                       params: Mapping[str, torch.nn.Parameter], masks: Mapping[str, torch.Tensor],
                       inputs: RobustEraseInputs, schedule: RobustSchedule,
                       on_progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
    """dW for each parameter of `params` (zero outside its mask: masks[name] is a bool tensor of its shape).

    predict(x_t, sigma, context) -> x0 prediction, differentiable in the parameters and in context.
    add_noise(x0, eps, sigma) -> x_t (the denoiser's noising form). The parameters are trained in place and put
    back before returning; on_progress(done, total) after each step; cancelled() is asked before each step and
    stops the work with the parameters restored (raises CADError)."""
    inputs.check()
    if not params:
        raise CADError("The robust erase has no weights to train: the attribution located none in its scope.")
    names = list(params)
    for n in names:
        if n not in masks or tuple(masks[n].shape) != tuple(params[n].shape):
            raise CADError(f"The robust erase needs a mask of the shape of '{n}'.")
    if not any(bool(masks[n].any()) for n in names):
        raise CADError("The robust erase's mask selects no weights, so training would change nothing.")
    g = torch.Generator().manual_seed(schedule.seed)
    before = {n: params[n].detach().clone() for n in names}
    flags = {n: params[n].requires_grad for n in names}
    try:
        with torch.no_grad():
            forget_pool = _points(predict, add_noise, inputs, schedule, g, concept=True)
            keep_pool = _points(predict, add_noise, inputs, schedule, g, concept=False)
        for n in names:
            params[n].requires_grad_(True)
        masks_on = {n: masks[n].to(device=params[n].device, dtype=params[n].dtype) for n in names}
        opt = torch.optim.Adam([params[n] for n in names], lr=schedule.lr)
        adversary = _adversary_start(inputs, schedule, g)
        adv_opt = torch.optim.Adam([adversary], lr=schedule.adversary_lr)
        for step in range(schedule.steps):
            if cancelled is not None and cancelled():
                raise CADError("The robust erase was cancelled; the model is unchanged.")
            _adversary_step(predict, add_noise, inputs, adversary, adv_opt, schedule.batch, g)
            loss = _forget_loss(predict, forget_pool, inputs, adversary.detach(), schedule.batch, g) + \
                schedule.preserve * _keep_loss(predict, keep_pool, inputs, schedule.batch, g)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            for n in names:
                if params[n].grad is not None:
                    params[n].grad.mul_(masks_on[n])
            opt.step()
            if not math.isfinite(float(loss.detach())):
                raise CADError("The robust erase diverged (the loss is not finite). Lower its learning rate.")
            if on_progress is not None:
                on_progress(step + 1, schedule.steps)
        return {n: (params[n].detach() - before[n]).float().cpu() for n in names}
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(before[n])
                params[n].requires_grad_(flags[n])
                params[n].grad = None


# --- the pools of training points -------------------------------------------------------------------------

POOL_PER_PICTURE = 8   # noise draws per picture


def _points(predict, add_noise, inputs, schedule, g, concept: bool) -> dict:
    """Points x_t (each picture at POOL_PER_PICTURE random noise levels) with the original's targets: for the
    concept, T = D(x_t, g) - overshoot (D(x_t, e) - D(x_t, g)); for the kept prompts, D(x_t, k)."""
    pictures = inputs.erase_pictures if concept else inputs.keep_pictures
    owner = inputs.erase_of_picture if concept else inputs.keep_of_picture
    n = len(pictures) * POOL_PER_PICTURE
    pick = torch.arange(n) % len(pictures)
    sigma = inputs.sigmas[torch.randint(len(inputs.sigmas), (n,), generator=g)].to(pictures)
    eps = torch.randn((n, *pictures.shape[1:]), generator=g).to(pictures)
    x_t = add_noise(pictures[pick], eps, sigma)
    prompt = owner[pick]
    targets = []
    for chunk in torch.arange(n).split(32):
        x, s, p = x_t[chunk], sigma[chunk], prompt[chunk]
        if concept:
            guided = predict(x, s, inputs.guide_context[p])
            with_concept = predict(x, s, inputs.erase_context[p])
            targets.append(guided - schedule.overshoot * (with_concept - guided))
        else:   # the kept prompt's own prediction, and the empty prompt's (the unconditional branch of CFG)
            empty = inputs.empty_context.expand(len(chunk), -1, -1)
            targets.append(torch.stack([predict(x, s, inputs.keep_context[p]), predict(x, s, empty)], 1))
    return {"x_t": x_t, "sigma": sigma, "prompt": prompt, "target": torch.cat(targets)}


def _batch(pool, size, g):
    pick = torch.randint(len(pool["x_t"]), (size,), generator=g)
    return {k: v[pick] for k, v in pool.items()}


def _forget_loss(predict, pool, inputs, adversary, size, g):
    """Every erased prompt's pictures, read with its own conditioning and with one of the adversary's, must be
    predicted as the guided-away target."""
    b = _batch(pool, size, g)
    own = predict(b["x_t"], b["sigma"], inputs.erase_context[b["prompt"]])
    which = torch.randint(len(adversary), (size,), generator=g)
    attacked = predict(b["x_t"], b["sigma"], adversary[which])
    return ((own - b["target"]) ** 2).mean() + ((attacked - b["target"]) ** 2).mean()


def _keep_loss(predict, pool, inputs, size, g):
    """The kept prompts' pictures must be predicted as before, half of them read with their own prompt and half
    with the empty prompt: sampling with CFG uses both, and the adversary's pool starts at the empty prompt, so
    the unconditional branch must be held in place on everything but the concept."""
    b = _batch(pool, size, g)
    empty = (torch.arange(size) % 2).bool()
    context = torch.where(empty.view(-1, 1, 1), inputs.empty_context.expand(size, -1, -1),
                          inputs.keep_context[b["prompt"]])
    target = torch.where(empty.view(-1, 1, 1, 1), b["target"][:, 1], b["target"][:, 0])
    return ((predict(b["x_t"], b["sigma"], context) - target) ** 2).mean()


# --- the adversary ----------------------------------------------------------------------------------------

def _adversary_start(inputs, schedule, g):
    """The pool of attacking conditionings: the erased prompts' own and the empty prompt's, repeated up to
    `adversaries`, each with a little noise so copies part ways."""
    starts = torch.cat([inputs.erase_context, inputs.empty_context])
    pool = starts[torch.arange(schedule.adversaries) % len(starts)].clone()
    pool += 0.01 * torch.randn(pool.shape, generator=g).to(pool)
    return pool.requires_grad_(True)


def _adversary_step(predict, add_noise, inputs, adversary, opt, size, g):
    """One step of the attack's own objective: the edited model's denoising loss on the concept's pictures, for
    every conditioning of the pool (the weights get no gradient from it)."""
    pictures = inputs.erase_pictures
    pick = torch.randint(len(pictures), (size,), generator=g)
    sigma = inputs.sigmas[torch.randint(len(inputs.sigmas), (size,), generator=g)].to(pictures)
    eps = torch.randn((size, *pictures.shape[1:]), generator=g).to(pictures)
    x0 = pictures[pick]
    x_t = add_noise(x0, eps, sigma)
    which = torch.randint(len(adversary), (size,), generator=g)
    loss = ((predict(x_t, sigma, adversary[which]) - x0) ** 2).mean()
    opt.zero_grad()
    grad, = torch.autograd.grad(loss, adversary)
    adversary.grad = grad
    opt.step()
