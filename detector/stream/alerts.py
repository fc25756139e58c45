"""Alerts as Elastic Common Schema documents.

ECS field names are used wherever ECS has one; what is netfraud's own lives
under ``netfraud``. ``alert.schema.json`` beside this module is the contract,
and the tests validate produced alerts against it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.model.threshold import SEVERITY_NUMBER

SCHEMA_PATH = Path(__file__).with_name("alert.schema.json")
RULE_NAME = "netfraud autoencoder"
_TRANSPORTS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}


def event_id(topic: str, partition: int, offset: int, model_version: str) -> str:
    """Stable alert id: replaying the same record through the same model gives it again."""
    text = f"{topic}\x1f{partition}\x1f{offset}\x1f{model_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Origin:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int
    format: str


def build_alert(
    *,
    origin: Origin,
    row: dict[str, Any],
    score: float,
    threshold: float,
    severity: str,
    risk: float,
    reasons: list[dict[str, Any]],
    model_version: str,
    warming_up: bool,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One alert document.

    Args:
        origin: Provenance of the record.
        row: The record's canonical fields (raw values).
        score: Its anomaly score (higher is more anomalous).
        threshold: The model's alert threshold.
        severity: ``low``, ``medium``, ``high`` or ``critical``.
        risk: 0-100 rarity among normal traffic.
        reasons: Top fields by share of reconstruction error.
        model_version: Version of the bundle that scored it.
        warming_up: Whether the context features had less history than their longest window.
        now: Creation time (defaults to the current time).
    """
    created = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    proto = _int(row.get("proto"))
    network: dict[str, Any] = {"iana_number": str(proto) if proto is not None else None}
    network["transport"] = _TRANSPORTS.get(proto, str(proto)) if proto is not None else None
    if row.get("service"):
        network["protocol"] = row["service"]
    return {
        "@timestamp": _iso(row.get("ts")) or created,
        "event": {
            "kind": "alert",
            "id": event_id(origin.topic, origin.partition, origin.offset, model_version),
            "created": created,
            "category": ["network"],
            "type": ["connection"],
            "module": "netfraud",
            "dataset": "netfraud.alerts",
            "risk_score": round(float(risk), 1),
            "severity": SEVERITY_NUMBER[severity],
        },
        "source": _endpoint(row.get("src_ip"), row.get("src_port")),
        "destination": _endpoint(row.get("dst_ip"), row.get("dst_port")),
        "network": {k: v for k, v in network.items() if v is not None},
        "rule": {"name": RULE_NAME, "version": model_version},
        "netfraud": {
            "score": round(float(score), 6),
            "threshold": round(float(threshold), 6),
            "severity": severity,
            "model_version": model_version,
            "warming_up": bool(warming_up),
            "reasons": reasons,
            "summary": summarise(reasons),
            "provenance": {
                "topic": origin.topic,
                "partition": origin.partition,
                "offset": origin.offset,
                "format": origin.format,
            },
        },
    }


def summarise(reasons: list[dict[str, Any]]) -> str:
    """One line an analyst can read: ``label: observed, expected E; ...``."""
    parts = []
    for r in reasons:
        observed, expected = format_value(r["observed"]), format_value(r["expected"])
        parts.append(f"{r['label']}: {observed}, expected {expected}")
    return "; ".join(parts)


def format_value(value: Any) -> str:
    """A feature value as an analyst reads it: 0.82, 443, 8,443; ``-`` for none."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def _endpoint(ip: Any, port: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ip": ip}
    p = _int(port)
    if p is not None:
        out["port"] = p
    return out


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else int(f)


def _iso(ts: Any) -> str | None:
    try:
        f = float(ts)
    except (TypeError, ValueError):
        return None
    if np.isnan(f):
        return None
    return datetime.fromtimestamp(f, UTC).isoformat(timespec="milliseconds")
