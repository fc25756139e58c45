"""The model in service, swapped in place when the registry's pointer moves.

A promotion is noticed by polling the pointer; the new bundle is loaded and
verified in a background thread and swapped in between micro-batches, so a
batch is always scored by one version. A bundle that fails to load or verify
is refused and the one in service keeps scoring.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from detector.errors import BundleError
from detector.logs import get_logger
from detector.model.bundle import Bundle
from detector.model.registry import Pointer, Registry
from detector.model.scoring import Scorer
from features.spec import check_inputs

log = get_logger("model")


@dataclass
class Active:
    """A loaded bundle with its scorer."""

    bundle: Bundle
    scorer: Scorer


class ModelHolder:
    """Holds the active model and reloads it when a new one is promoted."""

    def __init__(self, registry: Registry, device: str, interval_s: float) -> None:
        self.registry = registry
        self.device = device
        self.interval_s = interval_s
        self._pointer = registry.pointer()
        bundle = registry.load(self._pointer.version)
        check_inputs(bundle.spec)
        self.active = Active(bundle, bundle.scorer(device))
        self._checked = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-reload")
        self._loading: tuple[Pointer, Future[Active]] | None = None
        self._lock = threading.Lock()
        self.refused: set[str] = set()

    def poll(self) -> Active | None:
        """Between batches: start a reload if the pointer moved; return a
        newly loaded model when one is ready (the caller swaps it in)."""
        if self._loading is not None:
            return self._collect()
        now = time.monotonic()
        if now - self._checked >= self.interval_s:
            self._checked = now
            pointer = self.registry.pointer()
            version = pointer.version
            if version and version != self.active.bundle.version and version not in self.refused:
                self._loading = (pointer, self._pool.submit(self._load, version))
        return None

    def _load(self, version: str) -> Active:
        bundle = self.registry.load(version)
        check_inputs(bundle.spec)
        return Active(bundle, bundle.scorer(self.device))

    def _collect(self) -> Active | None:
        assert self._loading is not None
        pointer, future = self._loading
        if not future.done():
            return None
        self._loading = None
        try:
            active = future.result()
        except (BundleError, ValueError, OSError, RuntimeError) as exc:
            self.refused.add(pointer.version or "")
            log.error(
                "model_refused",
                version=pointer.version,
                error=str(exc),
                serving=self.active.bundle.version,
            )
            return None
        previous = self.active.bundle.version
        self.active = active
        log.info("model_swapped", version=active.bundle.version, previous=previous)
        return active

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
