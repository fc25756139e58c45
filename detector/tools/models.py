"""``netfraud models list | show | promote | rollback``."""

from __future__ import annotations

import argparse
import json

from detector.errors import ConfigError
from detector.model.bundle import Bundle
from detector.model.registry import Registry
from detector.settings import Settings


def models_command(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(settings.model.registry)
    current = registry.current()
    if args.action == "list":
        for stored in registry.versions():
            print(("* " if stored == current else "  ") + stored)
        return 0
    if args.action == "rollback":
        print(f"in service: {registry.rollback()}")
        return 0
    version: str | None = args.version or (current if args.action == "show" else None)
    if version is None:
        raise ConfigError(f"`netfraud models {args.action}` needs a VERSION")
    if args.action == "promote":
        registry.promote(version)
        print(f"in service: {version}")
        return 0
    bundle = Bundle.load(registry.path(version))
    print(
        json.dumps(
            {
                "version": bundle.version,
                "in_service": version == current,
                "threshold": bundle.threshold,
                "schema_hash": bundle.spec.schema_hash,
                "features": bundle.spec.width,
                "metadata": bundle.metadata,
            },
            indent=2,
        )
    )
    return 0
