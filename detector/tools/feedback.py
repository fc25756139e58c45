"""``netfraud feedback`` and ``netfraud suppressions``: an analyst's verdicts.

A verdict is one JSON record on the feedback topic, keyed by the alert's
event id, so that the latest verdict on an alert replaces earlier ones. A
false-positive verdict carries a suppression rule that ``serve`` applies
(see :mod:`detector.stream.suppressions`) and the alert's input record,
decoded to canonical fields, for the next training set.

Finding an alert by its event id scans the alerts topic from its beginning:
quick for days of alerts, slow for months of them.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import time
from typing import Any

import kafka.errors
import msgspec
import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from rich.console import Console
from rich.table import Table

from detector.errors import ConfigError, NetfraudError, TransportError
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.kafka_python import connection_config
from detector.stream.suppressions import (
    FeedbackBook,
    Rule,
    iso_time,
    load_feedback,
    make_rule,
)
from detector.stream.topic_reader import fetch_one, read_to_end
from detector.tools.timespec import parse_duration
from features.formats import get_adapter
from features.records import FLOW_FIELDS

log = get_logger("feedback")

#: The feedback topic keeps the latest record per key.
FEEDBACK_TOPIC_CONFIG = {"cleanup.policy": "compact"}
SEND_TIMEOUT_S = 30.0
_EVENT_ID = re.compile(r"^[0-9a-f]{8,32}$")
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class AlertNotFoundError(NetfraudError):
    """No alert on the alerts topic has the event id an analyst gave."""


def feedback_command(args: argparse.Namespace, settings: Settings) -> int:
    """``netfraud feedback EVENT_ID --verdict ...``: record a verdict on one alert."""
    lifetime_s = parse_duration(args.expires)
    alert = find_alert(settings, args.event_id)
    now, who, note = time.time(), analyst(), args.note or ""
    record = original_record(settings, alert)
    feedback = feedback_record(alert, args.verdict, note, who, now, record)
    rule = None
    if args.verdict == "false-positive":
        rule = make_rule(alert, args.scope, now, lifetime_s, note, who)
        feedback["rule"] = rule.to_dict()

    publish_feedback(settings, feedback)
    print(f"recorded {args.verdict} for alert {feedback['event_id']} on {settings.topics.feedback}")
    if rule is not None:
        print(f"suppressing {describe(rule)} until {iso_time(rule.expires)} (rule {rule.id[:12]})")
        if record is None:
            print("input record no longer on its topic: not kept for retraining")
    return 0


def suppressions_command(args: argparse.Namespace, settings: Settings) -> int:
    """``netfraud suppressions list | remove RULE_ID``."""
    book = load_feedback(settings)
    if args.action == "remove":
        if not args.rule_id:
            raise ConfigError("`netfraud suppressions remove` needs a RULE_ID")
        return _remove(settings, book, args.rule_id)
    now = time.time()
    rules = book.rules() if args.all else book.active(now)
    if args.json:
        for rule in rules:
            print(json.dumps(rule.to_dict() | {"active": rule.active(now)}))
        return 0
    _print_rules(rules, now)
    return 0


def find_alert(settings: Settings, event_id: str) -> dict[str, Any]:
    """The alert with this event id, or the one id it is a prefix of.

    Raises:
        ConfigError: The id is not 8 to 32 hexadecimal digits, or the prefix is
            shared by several alerts.
        AlertNotFoundError: No alert on ``topics.alerts`` has it.
    """
    wanted = event_id.strip().lower()
    if not _EVENT_ID.match(wanted):
        raise ConfigError(f"event id {event_id!r} is not 8 to 32 hexadecimal digits")
    found: dict[str, dict[str, Any]] = {}
    with contextlib.closing(read_to_end(settings, settings.topics.alerts)) as messages:
        for message in messages:
            document = _matching(message.value, wanted)
            if document is not None:
                found.setdefault(document["event"]["id"], document)
                if len(wanted) == 32:
                    break
    if len(found) > 1:
        raise ConfigError(f"event id prefix {wanted} matches {len(found)} alerts; give more digits")
    if not found:
        raise AlertNotFoundError(
            f"no alert with event id {wanted} on {settings.topics.alerts}; "
            "copy the id from `netfraud alerts` and check --alerts-topic"
        )
    return next(iter(found.values()))


def _matching(value: bytes | None, wanted: str) -> dict[str, Any] | None:
    # A substring test first: parsing every alert of the topic is the slow part.
    if value is None or wanted.encode() not in value:
        return None
    try:
        document = _decode(value)
    except msgspec.DecodeError:
        return None
    ident = document.get("event", {}).get("id")
    return document if isinstance(ident, str) and ident.startswith(wanted) else None


def original_record(settings: Settings, alert: dict[str, Any]) -> dict[str, Any] | None:
    """The alert's input record, decoded to canonical flow fields.

    Returns:
        Each field of ``FLOW_FIELDS`` (``None`` where not reported), or
        ``None`` when the record has left its topic or no longer decodes.
    """
    origin = alert["netfraud"]["provenance"]
    message = fetch_one(settings, origin["topic"], origin["partition"], origin["offset"])
    if message is None or message.value is None:
        return None
    try:
        adapter = get_adapter(origin.get("format") or settings.topics.format_of(origin["topic"]))
    except ValueError as exc:
        log.warning("record_format_unknown", error=str(exc))
        return None
    batch = adapter.decode([message.value]).batch
    if len(batch) == 0:
        return None
    return {name: _plain(batch.columns[name][0]) for name in FLOW_FIELDS}


def _plain(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


def feedback_record(
    alert: dict[str, Any],
    verdict: str,
    note: str,
    who: str,
    now: float,
    record: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON written to the feedback topic (``rule`` is added for false positives)."""
    n = alert["netfraud"]
    return {
        "event_id": alert["event"]["id"],
        "verdict": verdict,
        "note": note,
        "analyst": who,
        "time": iso_time(now),
        "source_ip": alert.get("source", {}).get("ip"),
        "destination_ip": alert.get("destination", {}).get("ip"),
        "destination_port": alert.get("destination", {}).get("port"),
        "features": [r["name"] for r in n.get("reasons", [])],
        "alert": {
            "timestamp": alert.get("@timestamp"),
            "severity": n.get("severity"),
            "risk_score": alert["event"].get("risk_score"),
            "summary": n.get("summary"),
            "model_version": n.get("model_version"),
            "provenance": n.get("provenance"),
        },
        "record": record,
        "rule": None,
    }


def analyst() -> str:
    """Who is giving the verdict: ``$USER``, else the login name."""
    with contextlib.suppress(Exception):
        return os.environ.get("USER") or getpass.getuser()
    return "unknown"


def publish_feedback(settings: Settings, feedback: dict[str, Any]) -> None:
    """Write one feedback record, keyed by its event id, and wait for the broker.

    Raises:
        TransportError: The broker did not acknowledge it.
    """
    topic = settings.topics.feedback
    ensure_feedback_topic(settings)
    producer = KafkaProducer(**connection_config(settings), acks="all")
    try:
        future = producer.send(
            topic, key=feedback["event_id"].encode(), value=json.dumps(feedback).encode()
        )
        future.get(timeout=SEND_TIMEOUT_S)
    except kafka.errors.KafkaError as exc:
        raise TransportError(f"feedback not written to {topic}: {exc}") from exc
    finally:
        producer.close(timeout=10)


def ensure_feedback_topic(settings: Settings) -> None:
    """Create the feedback topic, compacted, if it does not exist yet."""
    topic = settings.topics.feedback
    try:
        admin = KafkaAdminClient(**connection_config(settings))
    except kafka.errors.NoBrokersAvailable as exc:
        raise TransportError(
            f"no Kafka broker answered at {settings.kafka.bootstrap_servers}: {exc}"
        ) from exc
    try:
        if topic not in admin.list_topics():
            # One partition keeps every verdict in order.
            admin.create_topics({topic: {"num_partitions": 1, "configs": FEEDBACK_TOPIC_CONFIG}})
    except kafka.errors.TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def describe(rule: Rule) -> str:
    """What a rule matches, in words."""
    source = "any source" if rule.source_ip is None else rule.source_ip
    port = "" if rule.destination_port is None else f" to port {rule.destination_port}"
    return f"alerts from {source}{port} with reasons {', '.join(sorted(rule.features))}"


def _remove(settings: Settings, book: FeedbackBook, rule_id: str) -> int:
    wanted = rule_id.strip().lower()
    entries = [
        e
        for e in book.entries().values()
        if e.rule is not None and e.rule.removed_at is None and e.rule.id.startswith(wanted)
    ]
    if len(entries) != 1 or len(wanted) < 8:
        problem = "matches several rules" if len(entries) > 1 else "is not a rule in force"
        raise ConfigError(
            f"{rule_id!r} {problem}; give 8 or more digits of an id that "
            "`netfraud suppressions list` shows"
        )
    entry = entries[0]
    assert entry.rule is not None
    removed = Rule(**{**vars(entry.rule), "removed_at": time.time(), "removed_by": analyst()})
    # The removal replaces the verdict record under the same key; the verdict stays.
    publish_feedback(settings, entry.record | {"rule": removed.to_dict()})
    print(f"removed rule {removed.id[:12]} ({describe(removed)})")
    return 0


def _print_rules(rules: list[Rule], now: float) -> None:
    console = Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")))
    if not rules:
        console.print("no suppression rules in force")
        return
    table = Table("id", "scope", "matches", "created", "expires", "by", "note")
    for rule in rules:
        state = "" if rule.active(now) else (" (removed)" if rule.removed_at else " (expired)")
        table.add_row(
            rule.id[:12],
            rule.scope,
            describe(rule).removeprefix("alerts "),
            iso_time(rule.created)[:19],
            iso_time(rule.expires)[:19] + state,
            rule.analyst,
            rule.note,
        )
    console.print(table)
