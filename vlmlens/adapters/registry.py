"""Adapter registry, keyed by Hugging Face architecture class name."""

from __future__ import annotations

from vlmlens.adapters.base import Adapter
from vlmlens.errors import UnsupportedArchitectureError

__all__ = ["register", "get_adapter", "supported_architectures"]

_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Register an adapter under its architecture name.

    Raises:
        ValueError: the architecture is already registered.
    """
    if adapter.architecture in _REGISTRY:
        raise ValueError(
            f"architecture {adapter.architecture!r} is already registered "
            f"(family {_REGISTRY[adapter.architecture].family!r})"
        )
    _REGISTRY[adapter.architecture] = adapter
    return adapter


def supported_architectures() -> tuple[str, ...]:
    """The Hugging Face class names vlmlens can wrap."""
    return tuple(sorted(_REGISTRY))


def get_adapter(architecture: str) -> Adapter:
    """The adapter for a Hugging Face architecture class name.

    Raises:
        UnsupportedArchitectureError: no adapter is registered for it.
    """
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported by vlmlens; supported: "
            f"{', '.join(supported_architectures())}. Add an adapter (vlmlens/adapters/) "
            "and register it with vlmlens.adapters.register()."
        ) from None
