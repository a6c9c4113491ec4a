"""The base of the typed records that CAD files store as JSON (`cad.meta`): fields checked against their
annotations when a record is built, so a record read from an untrusted file is either well typed or refused with
the key named, and keys this version does not know kept in `extra`, so files of other versions round-trip."""
import dataclasses
import functools
import numbers
import types
import typing

from .errors import CADError


class InfoRecord:
    """Subclasses are frozen dataclasses whose fields are all optional (None = not recorded) plus `extra: dict`."""

    describes = "record"   # what the record belongs to, for messages

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if f.name != "extra":
                object.__setattr__(self, f.name, _typed(self.describes, f.name, hints[f.name], getattr(self, f.name)))
        if not isinstance(self.extra, dict):
            raise CADError(f"The {self.describes}'s extra entries must be a dict, got {type(self.extra).__name__}.")
        clash = sorted(set(self.extra) & self.known_keys())
        if clash:
            raise CADError(f"The {self.describes}'s extra entries repeat known fields {clash}: set those fields.")

    @classmethod
    def known_keys(cls) -> set:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    def to_json_dict(self) -> dict:
        """The JSON object files store: recorded fields (None ones left out, as files never held them), then extra."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                out[f.name] = _json(value)
        return {**out, **self.extra}

    @classmethod
    def from_json_dict(cls, d: dict):
        """A record from a file's JSON object: known keys checked against their types, unknown ones kept in extra."""
        if not isinstance(d, dict):
            raise CADError(f"The {cls.describes} must be a JSON object, got {type(d).__name__}.")
        known = cls.known_keys()
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})

    def replace(self, **changes):
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _json(value):
    if isinstance(value, InfoRecord):
        return value.to_json_dict()
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _typed(describes: str, key: str, hint, value):
    """`value` as the annotation `hint` says (lists become tuples, JSON objects nested records), or a CADError."""
    if value is None:
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif isinstance(hint, type) and issubclass(hint, InfoRecord):
        if isinstance(value, dict):
            return hint.from_json_dict(value)
        ok = isinstance(value, hint)
    elif origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_typed(describes, f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    elif origin is dict and isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CADError(f"The {describes}'s '{key}' must have text keys.")
        return {k: _typed(describes, f"{key}.{k}", args[1], v) for k, v in value.items()}
    else:
        ok = False
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CADError(f"The {describes}'s '{key}' must be {_expected(hint, args)}, got {shown}.")
    return value


def _expected(hint, args, plural=False) -> str:
    names = {bool: ("true or false", "true/false values"), int: ("a whole number", "whole numbers"),
             float: ("a number", "numbers"), str: ("text", "text entries")}
    if hint in names:
        return names[hint][plural]
    origin = typing.get_origin(hint) or hint
    if origin is tuple:
        return f"a list of {_expected(args[0], typing.get_args(args[0]), True)}"
    if origin is dict:
        return f"an object of {_expected(args[1], typing.get_args(args[1]), True)}"
    return f"{hint.describes} records" if plural else f"a {hint.describes} record"
