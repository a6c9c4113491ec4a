"""Which ComfyUI the tests run against, and the files a ComfyUI 0.3.75 user carries to a newer ComfyUI.

For the reduced Flux model `build("flux", seed=0)`, written under ComfyUI 0.3.75 by
scripts/make_cross_version_files.py: tests/data/flux_comfyui_0.3.75_{attribution,mask}.safetensors by pack
0.4.0 (fingerprints of the v1 kind; that script's version of that time), and
tests/data/flux_comfyui_0.3.75_v2_{attribution,mask}.safetensors by pack 0.5.0 (v2 fingerprints).
tests/test_comfyui_versions.py loads them under whichever ComfyUI the suite runs on.
"""
import os

import torch

import comfyui_version
from cad_pack.cad_core import AttributionRequest, select_components
from cad_pack.nodes.bridge import attribute_model

from scripts.family_models import build, conditioning, empty_latent

COMFYUI_VERSION = tuple(int(p) for p in comfyui_version.__version__.split(".")[:3])
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data")
FILES_FROM_0_3_75 = {kind: os.path.join(DATA, f"flux_comfyui_0.3.75_{kind}.safetensors")
                     for kind in ("attribution", "mask")}
V2_FILES_FROM_0_3_75 = {kind: os.path.join(DATA, f"flux_comfyui_0.3.75_v2_{kind}.safetensors")
                        for kind in ("attribution", "mask")}
FLUX_SEED = 0
# one single-stream matrix: a small file (~80 KB), enough to compare scores across versions
SCOPE_REGEX = r"single_blocks\.1\.linear2\.weight$"


def flux_model(seed=FLUX_SEED):
    return build("flux", seed=seed)


def attribute_flux(mp):
    """The attribution the files hold: concept_gap, T = 2, seed 3, the regex scope above."""
    with torch.inference_mode():
        return attribute_model(mp, conditioning("flux", 1), conditioning("flux", 2), empty_latent(),
                               AttributionRequest(steps=2, seed=3, scope="regex", scope_regex=SCOPE_REGEX))


def erase_mask(attribution):
    return select_components(attribution, "erase", 0.05, "per_row")
