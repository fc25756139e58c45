"""Format adapters: each tool's records into the canonical flow schema.

Use :func:`get_adapter` with a format name (as in settings or ``--format``),
or :func:`detect` to guess the format from one record.
"""

from __future__ import annotations

from collections.abc import Callable

from features.formats.base import Decoded, FormatAdapter, validate

__all__ = ["Decoded", "FormatAdapter", "detect", "get_adapter", "names", "validate"]

_FACTORIES: dict[str, Callable[[], FormatAdapter]] = {}
_LOADED = False


def register(name: str, factory: Callable[[], FormatAdapter]) -> None:
    """Make an adapter available under ``name``."""
    _FACTORIES[name] = factory


def names() -> list[str]:
    """The format names that can be given to :func:`get_adapter`."""
    _load_builtin()
    return sorted(_FACTORIES)


def get_adapter(name: str) -> FormatAdapter:
    """Return the adapter for ``name``.

    Raises:
        ValueError: The name is unknown; the message lists the known ones.
    """
    _load_builtin()
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown record format {name!r}; choose one of: {', '.join(names())}"
        ) from None


def detect(sample: bytes) -> FormatAdapter | None:
    """Guess the adapter for a record from its shape, or ``None``."""
    _load_builtin()
    for name in sorted(_FACTORIES, key=_detection_order):
        adapter = _FACTORIES[name]()
        if adapter.matches(sample):
            return adapter
    return None


def _detection_order(name: str) -> tuple[int, str]:
    # The project's own formats are the most specific matches, so try them first;
    # packets before flows, as a packet record has every field a flow requires.
    return ({"packet": 0, "netfraud": 1}.get(name, 2), name)


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    import features.formats as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"features.formats.{info.name}")
