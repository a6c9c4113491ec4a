"""Write tests/data/flux_comfyui_0.3.75_v2_{attribution,mask}.safetensors: what a user of ComfyUI 0.3.75 saved
for a Flux checkpoint (here the reduced random Flux of scripts/family_models.py), to be loaded by the test suite
under every newer ComfyUI the pack supports (tests/test_comfyui_versions.py).

    COMFYUI_PATH=.comfyui/ComfyUI .venv/bin/python -m scripts.make_cross_version_files
"""
import os

from scripts.pack_bootstrap import REPO, import_pack

import_pack(cpu=True)
from scripts import cross_version as X  # noqa: E402  (builds the pack's records: the pack first)
from cad_pack.cad_core import save_attribution, save_mask  # noqa: E402


def main():
    if X.COMFYUI_VERSION != (0, 3, 75):
        raise SystemExit(f"These files stand for ComfyUI 0.3.75; this is {X.COMFYUI_VERSION}. "
                         f"Run with COMFYUI_PATH=.comfyui/ComfyUI .venv/bin/python.")
    os.makedirs(X.DATA, exist_ok=True)
    attribution = X.attribute_flux(X.flux_model())
    for path in X.V2_FILES_FROM_0_3_75.values():   # saves never replace a file
        if os.path.exists(path):
            os.remove(path)
    save_attribution(attribution, X.V2_FILES_FROM_0_3_75["attribution"])
    save_mask(X.erase_mask(attribution), X.V2_FILES_FROM_0_3_75["mask"])
    for path in X.V2_FILES_FROM_0_3_75.values():
        print(f"{os.path.relpath(path, REPO)}: {os.path.getsize(path):,} bytes, fingerprint {attribution.fingerprint}")


if __name__ == "__main__":
    main()
