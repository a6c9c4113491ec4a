"""Train the toy world's text-to-image model on 2 CPU cores, deterministically from a seed.

    .venv/bin/python -m scripts.train_toyworld [--steps N] [--seed S]

Writes nodes/toyworld/toyworld_v2.safetensors (EMA weights, fp16) and its .sha256. The model is
trained through ComfyUI's own BaseModel.apply_model, i.e. exactly the path KSampler samples with.
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import comfy.clip_model
import comfy.ldm.modules.attention as attention
import comfy.sd1_clip

from . import model as toy
from .world import COLOUR_NAMES, SHAPES, all_captions, batch, caption

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Caption mix: mostly full captions; some partial ones so prompts like "a circle" or "a red" mean
# something; some empty ones for classifier-free guidance.
P_FULL, P_SHAPE_ONLY, P_COLOUR_ONLY = 0.75, 0.1, 0.05


def initialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """ComfyUI ops skip weight init; use torch's usual defaults, seeded."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=generator)
            if m.bias is not None:
                bound = 1 / max(1, m.weight[0].numel()) ** 0.5
                torch.nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, std=0.02, generator=generator)


def _clip_layer_forward_out_of_place(self, x, mask=None, optimized_attention=None):
    """ComfyUI's CLIP layer adds residuals in place (fine for inference, fatal for backward); the
    same arithmetic out of place, used only while training."""
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


def caption_indices(rng, shape_idx, colour_idx, captions):
    lookup = {c: i for i, c in enumerate(captions)}
    out = []
    for s, c in zip(shape_idx, colour_idx):
        u = rng.random()
        if u < P_FULL:
            text = caption(SHAPES[s], COLOUR_NAMES[c])
        elif u < P_FULL + P_SHAPE_ONLY:
            text = caption(SHAPES[s], None)
        elif u < P_FULL + P_SHAPE_ONLY + P_COLOUR_ONLY:
            text = caption(None, COLOUR_NAMES[c])
        else:
            text = ""
        out.append(lookup[text])
    return torch.tensor(out)


def train(steps: int, seed: int, batch_size: int, lr: float, out: str, log_every: int = 100) -> dict:
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    # PyTorch's own attention is much faster on CPU than ComfyUI's default CPU path.
    attention.optimized_attention = attention.attention_pytorch
    comfy.clip_model.CLIPLayer.forward = _clip_layer_forward_out_of_place

    base = toy.build_unet()
    text = toy.build_text_encoder()
    initialise(base.diffusion_model, gen)
    initialise(text, gen)
    torch.nn.init.zeros_(base.diffusion_model.out[-1].weight)
    torch.nn.init.zeros_(base.diffusion_model.out[-1].bias)
    text_model = text.clip_l
    for p in text_model.parameters():
        p.requires_grad_(True)

    tokenizer = comfy.sd1_clip.SD1Tokenizer()
    captions = all_captions()
    tokens = [[t for t, _ in tokenizer.tokenize_with_weights(c)["l"][0]] for c in captions]
    sigmas = base.model_sampling.sigmas.float()

    params = list(base.diffusion_model.parameters()) + list(text_model.transformer.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    started, history = time.time(), []
    for step in range(steps):
        images, s_idx, c_idx = batch(rng, batch_size)
        x0 = toy.image_to_latent(torch.from_numpy(images).permute(0, 3, 1, 2))
        cap = caption_indices(rng, s_idx, c_idx, captions)
        context = text_model(tokens)[0][cap]
        t = torch.randint(0, len(sigmas), (batch_size,), generator=gen)
        sigma = sigmas[t]
        eps = torch.randn(x0.shape, generator=gen)
        x_t = x0 + sigma.view(-1, 1, 1, 1) * eps
        x0_hat = base.apply_model(x_t, sigma, c_crossattn=context)
        # the v-prediction loss, written on x0: |v_hat - v| = |x0_hat - x0| * sqrt(sigma^2 + 1) / sigma
        weight = (sigma ** 2 + 1) / sigma ** 2
        loss = ((x0_hat - x0) ** 2 * weight.view(-1, 1, 1, 1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:  # short warm-up, then cosine decay
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        history.append(float(loss.detach()))
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {np.mean(history[-log_every:]):.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)

    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    info = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
            "final_loss": float(np.mean(history[-100:])), "seconds": round(time.time() - started, 1),
            "unet_parameters": sum(p.numel() for p in base.diffusion_model.parameters()),
            "text_parameters": sum(p.numel() for p in text_model.transformer.parameters())}
    save(base, text_model, info, out)
    return info


def save(base, text_model, info: dict, out: str) -> None:
    from safetensors.torch import save_file

    state = {f"model.diffusion_model.{k}": v.detach().half().contiguous()
             for k, v in base.diffusion_model.state_dict().items()}
    state.update({f"text_encoder.{k}": v.detach().half().contiguous()
                  for k, v in text_model.transformer.state_dict().items()})
    # Wall time differs run to run; kept out of the file so a retrain reproduces the checksum bit for bit.
    recipe = {k: v for k, v in info.items() if k != "seconds"}
    save_file(state, out, metadata={"toyworld": json.dumps(recipe)})
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    with open(out + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(out)}\n")
    print(json.dumps({**info, "file": os.path.relpath(out, REPO), "bytes": os.path.getsize(out), "sha256": digest}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 is fastest when anything else runs on the machine (2 threads oversubscribe)")
    ap.add_argument("--out", default=os.path.join(REPO, "nodes", "toyworld", "toyworld_v2.safetensors"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    train(a.steps, a.seed, a.batch_size, a.lr, a.out)
