"""The vlmlens exception hierarchy.

Every error raised on purpose by vlmlens derives from :class:`VLMLensError`, so
``except VLMLensError`` catches them all. Subclasses also derive from the builtin
exception whose meaning they share (``DataError`` is a ``ValueError``).
"""


class VLMLensError(Exception):
    """Base class of every error vlmlens raises on purpose."""


class DataError(VLMLensError, ValueError):
    """A data file, data set or data argument is malformed, missing or inconsistent."""


class SiteNotFoundError(VLMLensError, KeyError):
    """A hook-site name or value does not exist on this model (or at all)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedArchitectureError(VLMLensError, ValueError):
    """The wrapped model's architecture has no vlmlens adapter."""


class InputError(VLMLensError, ValueError):
    """Model inputs (images, prompts, positions) are inconsistent or out of range."""


class InterventionError(VLMLensError, ValueError):
    """An intervention cannot be applied as specified."""


class SiteCheckError(VLMLensError, RuntimeError):
    """A declared hook site did not fire, or fired with the wrong shape, at load time."""


class LoadError(VLMLensError, OSError):
    """A checkpoint could not be found or loaded (unknown zoo name, missing path, unreachable hub)."""
