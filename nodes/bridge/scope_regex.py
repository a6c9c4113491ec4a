"""scope_regex from a workflow, matched with a bound on its time.

Workflows are shared files, so a pattern may come from a stranger. Python's `re` backtracks exponentially on
patterns such as '^([a-z_.0-9]+)+!' and holds the interpreter lock while it does: the whole ComfyUI server stops
answering, Cancel included. Patterns are therefore matched with the `regex` package (re's syntax; installed with
ComfyUI, which needs it through transformers), which releases the lock while matching (concurrent=True) and stops
at a deadline for all of a model's weight names together, with an error that says what to change.
"""
import time

import regex

from ...cad_core import CADError

MATCH_BUDGET_S = 2.0        # for all of one model's weight names (a sane pattern needs milliseconds)
VALIDATION_BUDGET_S = 0.5
# What a pattern is tried on when the workflow is queued, before any model is at hand: names as the models have
# them (the longest kinds), and the same characters repeated, which is where nested repetition explodes.
SAMPLE_NAMES = (
    "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
    "diffusion_model.output_blocks.11.1.transformer_blocks.9.ff.net.0.proj.weight",
    "diffusion_model.double_blocks.18.img_attn.norm.query_norm.scale",
    "diffusion_model.joint_blocks.23.context_block.mlp.fc2.weight",
    "diffusion_model." + "a" * 48 + "!",
    "diffusion_model." + "a_" * 24 + ".0.1.weight!",
)


def bounded_matcher(pattern: str, budget_s: float = MATCH_BUDGET_S):
    """matcher for cad_core.resolve_scope: select(keys) -> the keys the pattern finds, within budget_s in all."""
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as e:
        raise CADError(f"scope_regex {_shown(pattern)} is not a valid regular expression: {e}.") from None

    def select(keys):
        deadline, chosen = time.monotonic() + budget_s, []
        for key in keys:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                if compiled.search(key, timeout=left, concurrent=True):
                    chosen.append(key)
            except TimeoutError:
                raise CADError(
                    f"scope_regex {_shown(pattern)} takes more than {budget_s:g} s to match weight names, so CAD "
                    f"stopped it (a pattern with nested repetition such as '(x+)+' backtracks exponentially). "
                    f"Write a simpler pattern, e.g. '\\.attn2\\.to_[kv]\\.weight$'.") from None
        return chosen
    return select


def check_scope_regex(pattern: str | None) -> bool | str:
    """For validate_inputs: True, or why the pattern is refused before the workflow runs."""
    if not pattern or not pattern.strip():
        return True
    try:
        bounded_matcher(pattern, VALIDATION_BUDGET_S)(SAMPLE_NAMES)
    except CADError as e:
        return str(e)
    return True


def _shown(pattern: str, limit: int = 120) -> str:
    return repr(pattern if len(pattern) <= limit else pattern[:limit] + "…")
