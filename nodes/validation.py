"""Validation helpers. ComfyUI 0.3.75 does not check V3 combo values itself, so nodes do it at
validation time, where a bad value becomes ComfyUI's normal 400 error instead of a failed run."""
import math

from ..cad_core import CADError


def check_numbers(node_cls, **values) -> bool | str:
    """values: input name -> value. True, or the text of the first problem.

    ComfyUI turns "nan" (or a JSON NaN) into a float NaN that passes its min/max check, since every
    comparison with NaN is false; and it skips min/max entirely for inputs a node names in its own
    validate_inputs. So both are checked here, against the bounds in the node's own schema. A linked
    input is None during validation; nodes call this again in execute for those.
    """
    spec = node_cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, value in values.items():
        if value is None:
            continue
        options = inputs[name][1] if len(inputs[name]) > 1 else {}
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r}."
        low, high = options.get("min", -math.inf), options.get("max", math.inf)
        if not low <= value <= high:
            return f"{name} {value!r} is outside its range [{low}, {high}]."
    return True


def require_numbers(node_cls, **values) -> None:
    """check_numbers in execute, where linked inputs have their values: raises CADError on a problem."""
    problem = check_numbers(node_cls, **values)
    if problem is not True:
        raise CADError(problem)


def check_choices(**named) -> bool | str:
    """named: input name -> (value, allowed options). True, or the text of the first problem."""
    for name, (value, options) in named.items():
        if value is not None and not any(value == option for option in options):   # value may be any JSON value
            return f"{name} '{value}' is not one of: {', '.join(map(str, options))}."
    return True
