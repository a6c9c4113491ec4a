"""What one differentiated step keeps for its backward pass, measured on the real model: the part of CAD's memory
that is not per-weight state (cad_core.budget counts that), so that memory_budget_mb can cover both.

One forward with gradients on, on the latent the run starts from, under saved-tensor hooks that count each tensor
autograd would keep and then drop it (nothing is kept, so the measurement needs no more memory than a no-grad
forward). Every tensor is attributed to the checkpoint unit (checkpointing.checkpoint_units) that was running when
it was saved, or to "outside"; the inputs of each unit are counted too. From that one measurement:

- without checkpointing a step keeps everything that was saved;
- with it, each unit keeps only its inputs, and the backward pass recomputes one unit at a time: the peak is the
  saved tensors outside units + every unit's inputs + the largest unit's own saved tensors.
An objective that differentiates two forwards per step (concept_gap_full) keeps two forwards' worth, but the
backward pass still recomputes one unit at a time.

On top of what is kept, a step needs room to work: the base branch's no-grad forward runs while the concept's graph
is kept, the backward pass holds the gradients flowing through the unit it is in and, with checkpointing, the unit
recomputed before it (non-reentrant checkpointing frees a unit's recomputed tensors only once its backward is done).
`peak_bytes` adds two largest units' saved tensors for that. Checked against the torch allocator's live bytes on the
full-size SD1.5 UNet on CPU (benchmarks/memory_budget.py); with one unit's worth the run without checkpointing at
512 px came within 7 MiB of its budget.

Counted once per storage (a tensor saved by several ops, or views of one tensor, cost one allocation) and never
for the model's own parameters and buffers (they are there anyway). The weight copies each layer saves (casts,
CAD's private copies) are ordinary saved tensors, so they are counted.
"""
import dataclasses
import weakref

import torch

from .checkpointing import checkpoint_units

OUTSIDE = ""


@dataclasses.dataclass
class SavedForBackward:
    """Bytes one differentiated forward keeps for its backward, by checkpoint unit."""
    by_unit: dict          # unit name (OUTSIDE for tensors saved outside every unit) -> bytes saved while it ran
    unit_inputs: int       # bytes of the tensors the units were called with (what checkpointing keeps)

    @property
    def largest_unit(self) -> int:
        return max((b for name, b in self.by_unit.items() if name != OUTSIDE), default=0)

    def kept_bytes(self, checkpointed: bool, forwards: int = 1) -> int:
        """What autograd holds when the backward pass starts, for `forwards` differentiated forwards per step."""
        if not checkpointed:
            return forwards * sum(self.by_unit.values())
        return forwards * (self.by_unit.get(OUTSIDE, 0) + self.unit_inputs) + self.largest_unit

    def peak_bytes(self, checkpointed: bool, forwards: int = 1) -> int:
        """kept_bytes plus the backward pass's working room (see the module's docstring)."""
        return self.kept_bytes(checkpointed, forwards) + 2 * self.largest_unit


class _StorageCounter:
    """Counts storages once while any tensor seen on them is alive; model parameters never."""

    def __init__(self, exclude_ptrs):
        self.exclude, self.seen = exclude_ptrs, {}

    def new_bytes(self, t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), str(t.device))
        if storage.data_ptr() in self.exclude:
            return 0
        ref = self.seen.get(key)
        if ref is not None and ref() is not None:
            return 0
        # a view keeps its base alive: watching the base keeps the storage counted while any view of it lives
        self.seen[key] = weakref.ref(t._base if t._base is not None else t)
        return storage.nbytes()


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def measure_saved_for_backward(diffusion_model, forward) -> SavedForBackward:
    """Run `forward()` (a differentiated forward of `diffusion_model`) once; returns what autograd would keep.

    The forward must run without checkpointing, so that every saved tensor passes through the hooks here."""
    model_ptrs = {t.untyped_storage().data_ptr() for t in (*diffusion_model.parameters(), *diffusion_model.buffers())}
    saved, inputs = _StorageCounter(model_ptrs), _StorageCounter(model_ptrs)
    by_unit, unit_inputs, running = {OUTSIDE: 0}, [0], []

    def pack(t):
        unit = running[0] if running else OUTSIDE
        by_unit[unit] = by_unit.get(unit, 0) + saved.new_bytes(t)
        return None     # dropped: the measurement keeps nothing

    def unpack(_):
        raise RuntimeError("CAD's activation measurement has no backward pass.")

    def enter(name):
        def hook(module, args, kwargs):
            if not running:
                unit_inputs[0] += sum(inputs.new_bytes(t) for t in _tensors((args, kwargs)) if t.is_floating_point())
            running.append(name)
        return hook

    def leave(module, args, kwargs, output):
        running.pop()

    handles = []
    for name, module in checkpoint_units(diffusion_model):
        handles.append(module.register_forward_pre_hook(enter(name), with_kwargs=True))
        handles.append(module.register_forward_hook(leave, with_kwargs=True))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return SavedForBackward(by_unit, unit_inputs[0])
