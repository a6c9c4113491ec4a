"""The device tool's GPU image, simulated on this machine (tests/test_gpu_session.py puts this folder on PYTHONPATH):
a top-level module can be imported only if the distribution it comes from is on the image
(tests/data/gpu_image_packages.txt, from the device tool's KINDS.md) or carried (CAD_GPU_CARRIED: the carried.txt
scripts/gpu_carry.sh writes). The standard library and modules of no distribution (ComfyUI, the pack) stay open."""
import importlib.abc
import importlib.metadata
import os
import sys


def _names(path):
    with open(path, encoding="utf-8") as f:
        return {line.split("#")[0].strip().lower().replace("_", "-") for line in f} - {""}


_ALLOWED = _names(os.environ["CAD_GPU_IMAGE_PACKAGES"]) | _names(os.environ["CAD_GPU_CARRIED"])
_DISTRIBUTIONS = importlib.metadata.packages_distributions()


class _OnlyTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        dists = _DISTRIBUTIONS.get(name) if "." not in name else None
        if dists and not any(d.lower().replace("_", "-") in _ALLOWED for d in dists):
            raise ModuleNotFoundError(f"[gpu image] '{name}' (from {', '.join(dists)}) is neither on the GPU image "
                                      f"nor carried: add it to scripts/gpu_carry.sh's WHEELS", name=name)
        return None


sys.meta_path.insert(0, _OnlyTheImage())
