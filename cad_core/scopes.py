"""Which weights CAD attributes: scope presets per architecture family, or a user regex.

A scope is resolved against (key, shape) pairs of the denoiser's parameters; the presets come from the
family records (families.py). Resolving to nothing is always an error: an empty scope would make every
later step a silent no-op.
"""
import re
from collections import Counter
from typing import Callable, Sequence

from .errors import CADError
from .families import GENERIC, detect_family, supported_families

SCOPE_PRESETS = ("ff", "attention", "ff+attention", "all_linear", "regex")


def resolve_scope(named_shapes: Sequence[tuple[str, tuple[int, ...]]], scope: str, regex: str = "",
                  matcher: Callable[[str], Callable[[Sequence[str]], list[str]]] | None = None) -> list[str]:
    """Return the keys (in model order) that `scope` selects, or raise CADError saying why none.

    matcher(pattern) -> select(keys): how scope 'regex' is matched. The default is Python's `re`, fine for a
    pattern you wrote yourself; the ComfyUI nodes pass a time-bounded one (a pattern from a shared workflow
    must not be able to hang the server)."""
    if scope not in SCOPE_PRESETS:
        raise CADError(f"Unknown scope '{scope}'. Expected one of: {', '.join(SCOPE_PRESETS)}.")
    keys = [k for k, _ in named_shapes]
    shapes = dict(named_shapes)

    if scope == "regex":
        if not regex.strip():
            raise CADError("Scope 'regex' needs a pattern in scope_regex, e.g. '\\.attn2\\.to_k\\.weight$'.")
        chosen = (matcher or python_re_matcher)(regex)(keys)
    elif scope == "all_linear":
        chosen = [k for k in keys if k.endswith(".weight") and len(shapes[k]) == 2]
    else:
        family = detect_family(keys)
        chosen = _preset(family or GENERIC, scope, keys, shapes)
        if family is None and not chosen:
            raise CADError(
                f"Scope '{scope}' has no preset for this model's architecture (supported families: "
                f"{supported_families()}), and no feed-forward or attention layers could be told from its weight "
                f"names. Use scope 'all_linear', or scope 'regex' with a pattern in scope_regex over these weight "
                f"names: {_describe_keys(keys)}")

    if not chosen:
        detail = f" with pattern '{regex}'" if scope == "regex" else ""
        if scope in ("ff", "attention", "ff+attention"):
            detail = f" (preset for {family.display})"
        hint = "" if scope == "regex" else \
            " Pick another scope, or scope 'regex' with a pattern in scope_regex over the names below."
        raise CADError(
            f"Scope '{scope}'{detail} matched no weights in this model, so there is nothing to attribute.{hint} "
            f"The model has {len(keys)} parameters: {_describe_keys(keys)}")
    return chosen


def _preset(family, scope, keys, shapes) -> list[str]:
    parts = ("ff", "attention") if scope == "ff+attention" else (scope,)
    pattern = re.compile("|".join(f"(?:{family.scope_pattern(p).pattern})" for p in parts))
    return [k for k in keys if pattern.search(k) and len(shapes[k]) == 2]


def scope_notice(named_shapes: Sequence[tuple[str, tuple[int, ...]]], scope: str, chosen: Sequence[str]) -> str:
    """What a user should be told about how `scope` was resolved: for a model without a preset, which weights the
    module names led to ('' when a family record or the user's own regex decided)."""
    if scope not in ("ff", "attention", "ff+attention") or detect_family(k for k, _ in named_shapes) is not None:
        return ""
    return (f"This model has no '{scope}' preset: CAD chose {len(chosen)} matrices from their module names "
            f"({_describe_keys(list(chosen), examples=3)}). Check that these are the layers you mean, or use scope "
            f"'regex'.")


def python_re_matcher(regex: str) -> Callable[[Sequence[str]], list[str]]:
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise CADError(f"scope_regex '{regex}' is not a valid regular expression: {e}.") from None
    return lambda keys: [k for k in keys if pattern.search(k)]


def _describe_keys(keys: Sequence[str], examples: int = 6) -> str:
    """A short inventory: the most common layer-name endings and a few full example names."""
    endings = Counter(".".join(k.split(".")[-3:]) for k in keys)
    common = ", ".join(f"'{e}' x{n}" for e, n in endings.most_common(8))
    sample = ", ".join(keys[:: max(1, len(keys) // examples)][:examples])
    return f"most common name endings {common}; examples: {sample}."
