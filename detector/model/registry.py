"""A directory of immutable, versioned bundles and a pointer to the one in service.

Layout::

    <root>/bundles/<version>/   one directory per bundle, never changed
    <root>/CURRENT              the version in service
    <root>/HISTORY              one line per promotion, oldest first

``CURRENT`` is replaced atomically (write a temporary file, then rename), so
a reader sees the old version or the new one, never a torn write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import BundleError
from detector.model.bundle import Bundle


@dataclass(frozen=True)
class Pointer:
    """What ``CURRENT`` said when it was read, and when it was last changed."""

    version: str | None
    mtime_ns: int


class Registry:
    """Model registry rooted at a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.bundles = self.root / "bundles"

    def publish(self, bundle: Bundle) -> Path:
        """Store a bundle under its version; it is not promoted."""
        self.bundles.mkdir(parents=True, exist_ok=True)
        target = self.bundles / bundle.version
        if target.exists():
            raise BundleError(f"bundle {bundle.version} already exists in {self.root}")
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.bundles))
        try:
            bundle.save(staging / "b")
            os.rename(staging / "b", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def versions(self) -> list[str]:
        """Every stored version, oldest first."""
        if not self.bundles.is_dir():
            return []
        return sorted(p.name for p in self.bundles.iterdir() if not p.name.startswith("."))

    def pointer(self) -> Pointer:
        """Read ``CURRENT`` (version ``None`` when nothing was promoted)."""
        path = self.root / "CURRENT"
        try:
            stat = path.stat()
            return Pointer(path.read_text().strip() or None, stat.st_mtime_ns)
        except FileNotFoundError:
            return Pointer(None, 0)

    def current(self) -> str | None:
        """The version in service, if any."""
        return self.pointer().version

    def path(self, version: str) -> Path:
        """Directory of a stored version."""
        path = self.bundles / version
        if not path.is_dir():
            raise BundleError(
                f"no bundle {version!r} in {self.root}; `netfraud models list` shows them"
            )
        return path

    def load(self, version: str | None = None) -> Bundle:
        """Load and verify a version (the one in service by default)."""
        chosen = version or self.current()
        if chosen is None:
            raise BundleError(
                f"no model in service in {self.root}; train one with `netfraud train`"
            )
        return Bundle.load(self.path(chosen))

    def promote(self, version: str) -> None:
        """Put a stored, verified version in service (atomic pointer switch)."""
        Bundle.load(self.path(version))
        self._write_pointer(version)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with (self.root / "HISTORY").open("a") as handle:
            handle.write(f"{stamp} {version}\n")

    def history(self) -> list[str]:
        """Promoted versions, oldest first."""
        path = self.root / "HISTORY"
        if not path.is_file():
            return []
        return [line.split()[1] for line in path.read_text().splitlines() if line.strip()]

    def rollback(self) -> str:
        """Return service to the version promoted before the current one."""
        current = self.current()
        earlier = [v for v in self.history() if v != current]
        if not earlier:
            raise BundleError("nothing to roll back to: only one version was ever promoted")
        self.promote(earlier[-1])
        return earlier[-1]

    def _write_pointer(self, version: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=self.root)
        with os.fdopen(fd, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / "CURRENT")
