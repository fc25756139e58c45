"""Compiling the few per-record loops that numpy cannot express."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

_F = TypeVar("_F", bound=Callable[..., Any])


def compiled(function: _F) -> _F:
    """Compile with numba (no Python objects inside), caching the machine code on disk.

    The cache goes beside the source, or under ``NUMBA_CACHE_DIR`` or the
    user's cache directory when that is read-only; where nothing is writable
    (a read-only container without a writable ``/tmp``) each process compiles
    afresh, which costs a few seconds at start.
    """
    try:
        return cast(_F, numba.njit(cache=True, nogil=True)(function))
    except RuntimeError:  # "no locator available": no writable cache directory
        return cast(_F, numba.njit(cache=False, nogil=True)(function))
