"""Exact-enough scorers for toy-world images: a small CNN for the shape, a rule for the colour.

    .venv/bin/python -m scripts.train_toyworld --scorer   # (re)train the shape CNN and report both accuracies
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .world import COLOUR_NAMES, COLOURS, SHAPES, batch

HERE = os.path.dirname(os.path.abspath(__file__))

CLASSIFIER_FILE = os.path.join(HERE, "shape_classifier.safetensors")
SATURATION_MIN = 0.3  # background is grey (saturation ~0); every toy colour is far above this


class ShapeClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(64, len(SHAPES))

    def forward(self, images):  # (B, 3, 32, 32) in [0, 1]
        return self.head(self.features(images).flatten(1))


def _augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Make clean renders look more like model samples: noise, blur, slight colour shifts."""
    b = images.shape[0]
    # The toy model's samples carry per-pixel colour noise of std ~0.1-0.2 and soft, lumpy edges.
    noisy = images + torch.randn(images.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.3
    blur = F.avg_pool2d(F.pad(noisy, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    use_blur = (torch.rand(b, 1, 1, 1, generator=g) < 0.5).float()
    return (blur * use_blur + noisy * (1 - use_blur)).clamp(0, 1)


def train_shape_classifier(seed: int = 0, steps: int = 1200, batch_size: int = 128) -> ShapeClassifier:
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ShapeClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        images, shapes, _ = batch(rng, batch_size)
        x = _augment(torch.from_numpy(images).permute(0, 3, 1, 2), g)
        loss = F.cross_entropy(model(x), torch.from_numpy(shapes))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def load_shape_classifier(path: str = CLASSIFIER_FILE) -> ShapeClassifier:
    from safetensors.torch import load_file
    model = ShapeClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


@torch.no_grad()
def classify_shapes(model: ShapeClassifier, images: torch.Tensor) -> torch.Tensor:
    return model(images.float().clamp(0, 1)).argmax(1)


def classify_colours(images: torch.Tensor) -> torch.Tensor:
    """Index into COLOUR_NAMES of the mean colour of the saturated pixels, or -1 if there are none."""
    # A 3x3 mean first: the model's samples have saturated single-pixel speckles in the background.
    images = F.avg_pool2d(F.pad(images.float().clamp(0, 1), (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    saturation = images.amax(1) - images.amin(1)  # (B, H, W)
    prototypes = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])
    out = []
    for img, sat in zip(images, saturation):
        mask = sat > SATURATION_MIN
        if int(mask.sum()) < 4:
            out.append(-1)
            continue
        mean = img[:, mask].mean(1)
        out.append(int(((prototypes - mean) ** 2).sum(1).argmin()))
    return torch.tensor(out)


def clean_accuracy(model: ShapeClassifier, n: int = 2000, seed: int = 12345) -> dict:
    images, shapes, colours = batch(np.random.default_rng(seed), n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    return {"shape": float((classify_shapes(model, x).numpy() == shapes).mean()),
            "colour": float((classify_colours(x).numpy() == colours).mean()), "images": n}


def main():
    from safetensors.torch import save_file
    torch.set_num_threads(1)  # 2 threads oversubscribe as soon as anything else runs
    model = train_shape_classifier()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, CLASSIFIER_FILE)
    print(clean_accuracy(model))
