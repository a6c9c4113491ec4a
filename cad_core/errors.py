"""Errors meant to be read by people: what was wrong, what was expected, how to fix it."""


class CADError(ValueError):
    """Bad input to a CAD operation. The message is shown to the user as is."""


class CADFileError(CADError):
    """A CAD attribution or mask file could not be used."""
