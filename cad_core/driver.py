"""The attribution driver: one AttributionRequest carried to one Attribution, whatever hosts the model.

The driver resolves the scope once, plans the passes (one, or several chunks under a memory budget, with the
gradient checkpointing that needs fewer), runs them, joins them, adds the scope notice and refuses an all-zero
result. What touches the model is the backend's: ComfyUI's (nodes/bridge/backend.py) or a plain torch module's
(tests). A weight's score depends only on the trajectories and on J, never on which other weights are probed, so
chunked passes over the same seed join to the one-pass result (budget.py).
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .attribution import Attribution, check_not_all_zero
from .budget import MB, join_chunks, plan_chunks, scope_bytes
from .errors import CADError
from .objectives import objective_named
from .request import AttributionRequest
from .scopes import python_re_matcher, resolve_scope, scope_notice

Progress = Callable[[int, int], None]


class ActivationMeasure(Protocol):
    def peak_bytes(self, checkpointed: bool, forwards: int = 1) -> int:
        """What one differentiated step keeps for its backward pass, at its peak."""


class AttributionBackend(Protocol):
    """What the driver needs from whatever hosts the model."""

    on_cpu: bool

    def patchable_weights(self) -> list[tuple[str, tuple]]:
        """(key, shape) of every weight a pass can score, in model order."""

    def regex_matcher(self, regex: str) -> Callable[[Sequence[str]], list[str]]:
        """A matcher for scope 'regex' (the bridge bounds its running time)."""

    def checkpointing(self, setting: str) -> "bool | str":
        """True/False, or 'auto' when a pass decides once the model is loaded."""

    def session(self) -> contextlib.AbstractContextManager:
        """Held around the measurement and every pass (the bridge loads the model it differentiates here)."""

    def measure_activations(self, keys: list[str]) -> ActivationMeasure:
        """One differentiated forward with `keys` probed, keeping nothing."""

    def run_pass(self, keys: list[str], checkpointing: "bool | str", on_progress: Progress) -> Attribution:
        """One attribution pass scoring `keys` (it may score all zeros: the driver checks the joined result)."""


@dataclass(frozen=True)
class PassPlan:
    chunks: list
    checkpointing: "bool | str"
    activation_bytes: int | None = None
    reason: str | None = None


def attribute_request(backend: AttributionBackend, request: AttributionRequest,
                      on_progress: Progress | None = None) -> Attribution:
    """Run `request` on `backend`: the one path from a request to an attribution."""
    available = backend.patchable_weights()
    keys = scoped_keys(backend, request, available)
    notice = scope_notice(available, request.scope, keys)
    if notice:
        logging.warning("CAD: %s", notice)
    shapes = dict(available)
    with backend.session():
        plan = plan_passes(backend, request, [(k, shapes[k]) for k in keys])
        passes = len(plan.chunks)
        parts = []
        for i, chunk in enumerate(plan.chunks):
            def progress(done, total, offset=i):
                if on_progress is not None:
                    on_progress(offset * total + done, passes * total)
            parts.append(backend.run_pass(chunk, plan.checkpointing, progress))
    info_fields = {"scope": request.scope, "scope_regex": request.scope_regex, "seed": request.seed,
                   **({"scope_notice": notice} if notice else {})}
    if request.memory_budget_mb:
        info_fields.update(
            memory_budget_mb=request.memory_budget_mb, activation_mb=round(plan.activation_bytes / MB, 3),
            peak_scope_mb=round(max(scope_bytes([shapes[k] for k in c]) for c in plan.chunks) / MB, 3),
            **({"checkpointing_reason": plan.reason} if plan.reason else {}))
    if passes == 1:
        result = parts[0]
        result.info = result.info.replace(**info_fields)
    else:
        result = join_chunks(parts, {**info_fields, "chunk_sizes": tuple(len(c) for c in plan.chunks)})
    check_not_all_zero(result)
    return result


def scoped_keys(backend: AttributionBackend, request: AttributionRequest, available=None) -> list[str]:
    """The weights `request`'s scope selects on this backend's model, in model order."""
    available = backend.patchable_weights() if available is None else available
    return resolve_scope(available, request.scope, request.scope_regex, backend.regex_matcher)


def plan_passes(backend: AttributionBackend, request: AttributionRequest, named: list) -> PassPlan:
    """How the scope's (key, shape) pairs are attributed: one pass with the requested checkpointing, or, under a
    memory budget, the chunks that fit what one measured differentiated step leaves. With checkpointing 'auto'
    both ways are planned and the one with fewer passes is taken (on a tie: on for a CPU, where it costs little;
    off on a GPU, where it costs a forward per step)."""
    setting = backend.checkpointing(request.gradient_checkpointing)
    if not request.memory_budget_mb:
        return PassPlan([[k for k, _ in named]], setting)
    saved = backend.measure_activations([k for k, _ in named])
    forwards = objective_named(request.objective).differentiated_forwards
    plans, refusals = [], []
    for checkpointed in ([False, True] if setting == "auto" else [setting]):
        activation = saved.peak_bytes(checkpointed, forwards)
        try:
            plans.append((checkpointed, activation, plan_chunks(named, request.memory_budget_mb * MB, activation)))
        except CADError as e:
            refusals.append((activation, e))
    if not plans:
        raise min(refusals, key=lambda r: r[0])[1]      # the message of the way that needs the least
    checkpointed, activation, chunks = min(plans, key=lambda p: (len(p[2]), p[0] != backend.on_cpu))
    reason = None
    if setting == "auto":
        others = [f"{'on' if c else 'off'} would need {len(p)}" for c, _, p in plans if c != checkpointed]
        reason = (f"memory budget: {'on' if checkpointed else 'off'}, {len(chunks)} pass(es)"
                  + "".join(f"; {o}" for o in others))
    return PassPlan(chunks, checkpointed, activation, reason)


class TorchModuleBackend:
    """A plain torch denoiser as a backend: every 2-D parameter can be scored, no memory measurement.

    run(keys, checkpointing, on_progress) -> Attribution does one pass (e.g. with cad_core.attribute and a
    ModuleCapture of `keys`); tests drive the driver with it, without ComfyUI."""

    on_cpu = True

    def __init__(self, module, run, measure=None):
        self.module, self._run, self._measure = module, run, measure

    def patchable_weights(self):
        return [(k, tuple(p.shape)) for k, p in self.module.named_parameters()]

    def regex_matcher(self, regex):
        return python_re_matcher(regex)

    def checkpointing(self, setting):
        return setting == "on"

    def session(self):
        return contextlib.nullcontext()

    def measure_activations(self, keys):
        if self._measure is None:
            raise CADError("This backend cannot measure activations: use memory_budget_mb 0.")
        return self._measure(keys)

    def run_pass(self, keys, checkpointing, on_progress):
        return self._run(keys, checkpointing, on_progress)
