"""Adapter registry, keyed by Hugging Face architecture class name and, for variants, the text model type."""

from __future__ import annotations

from vlmlens.adapters.base import Adapter
from vlmlens.errors import UnsupportedArchitectureError

__all__ = ["register", "get_adapter", "supported_architectures"]

_REGISTRY: dict[tuple[str, str | None], Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Register an adapter under its architecture name (and text model type, for a variant).

    Raises:
        ValueError: the architecture (with that text model type) is already registered.
    """
    key = (adapter.architecture, adapter.text_model_type)
    if key in _REGISTRY:
        raise ValueError(
            f"architecture {adapter.architecture!r} (text model type {adapter.text_model_type!r}) is already "
            f"registered (family {_REGISTRY[key].family!r})"
        )
    _REGISTRY[key] = adapter
    return adapter


def supported_architectures() -> tuple[str, ...]:
    """The Hugging Face class names vlmlens can wrap."""
    return tuple(sorted({architecture for architecture, _ in _REGISTRY}))


def get_adapter(architecture: str, text_model_type: str | None = None) -> Adapter:
    """The adapter for a Hugging Face architecture class name.

    Args:
        architecture: e.g. ``"PaliGemmaForConditionalGeneration"``.
        text_model_type: the language model's ``model_type`` (e.g. ``"gemma2"`` for
            PaliGemma-2); a variant registered for it wins over the base adapter.

    Raises:
        UnsupportedArchitectureError: no adapter is registered for it.
    """
    if (architecture, text_model_type) in _REGISTRY:
        return _REGISTRY[architecture, text_model_type]
    try:
        return _REGISTRY[architecture, None]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported by vlmlens; supported: "
            f"{', '.join(supported_architectures())}. Add an adapter (vlmlens/adapters/) "
            "and register it with vlmlens.adapters.register()."
        ) from None
