"""Validation helpers. ComfyUI 0.3.75 does not check V3 combo values itself, so nodes do it at
validation time, where a bad value becomes ComfyUI's normal 400 error instead of a failed run."""


def check_choices(**named) -> bool | str:
    """named: input name -> (value, allowed options). True, or the text of the first problem."""
    for name, (value, options) in named.items():
        if value is not None and value not in options:
            return f"{name} '{value}' is not one of: {', '.join(map(str, options))}."
    return True
