"""Analyst suppressions, derived from the feedback topic.

``netfraud feedback`` writes one JSON record per reviewed alert to the
feedback topic, keyed by the alert's event id. The topic is read the way a
compacted topic is meant to be read: the latest record of each key wins, and
a record without a value (a tombstone) forgets the key. A false-positive
verdict carries a suppression rule; any later record for the same event (a
new verdict, or the removal written by ``netfraud suppressions remove``)
replaces it.

A rule withholds an alert when it has neither expired (wall-clock time) nor
been removed, and:

* its source address equals the alert's ``source.ip`` (a rule of scope
  ``pattern`` has none and matches every source);
* its destination port, if it has one (scope ``host-port``), equals the
  alert's ``destination.port``;
* every feature it names is among the alert's top reasons (``netfraud.reasons``).

:class:`Suppressions` is the ``Policy.suppress`` callable of the detector
loop; a background thread keeps it current. :func:`confirmed_benign` gives
the records analysts marked benign, for the next training set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import kafka.errors
import msgspec
import numpy as np
import numpy.typing as npt

from detector.errors import TransportError
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.topic_reader import TopicReader, read_to_end

log = get_logger("suppressions")

Scope = Literal["host", "host-port", "pattern"]
SCOPES: tuple[Scope, ...] = ("host-port", "host", "pattern")
VERDICTS = ("false-positive", "true-positive")
#: Seconds between attempts to reach a missing feedback topic or a lost broker.
RETRY_S = 5.0

_decode = msgspec.json.Decoder(dict[str, Any]).decode
Index = Mapping[str | None, tuple["Rule", ...]]


def iso_time(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def epoch_of(text: str) -> float:
    """Epoch seconds of an ISO 8601 time (UTC when it names no zone)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def alert_features(document: Mapping[str, Any]) -> frozenset[str]:
    """Names of the features among an alert's top reasons."""
    reasons = document.get("netfraud", {}).get("reasons") or []
    return frozenset(str(r["name"]) for r in reasons if "name" in r)


@dataclass(frozen=True)
class Rule:
    """One suppression: what it matches and for how long.

    Attributes:
        id: The event id of the alert it was created from.
        scope: ``host-port``, ``host`` or ``pattern`` (see the module docs).
        source_ip: Source address to match; ``None`` matches any.
        destination_port: Destination port to match; ``None`` matches any.
        features: Feature names that must all be among an alert's top reasons.
        created: Epoch seconds when the analyst gave the verdict.
        expires: Epoch seconds after which it no longer applies.
        note: The analyst's note.
        analyst: Who created it.
        removed_at: Epoch seconds of its removal, ``None`` while in force.
        removed_by: Who removed it.
    """

    id: str
    scope: Scope
    source_ip: str | None
    destination_port: int | None
    features: frozenset[str]
    created: float
    expires: float
    note: str = ""
    analyst: str = ""
    removed_at: float | None = None
    removed_by: str | None = None

    def active(self, now: float) -> bool:
        """Whether it applies at ``now`` (epoch seconds): unexpired and not removed."""
        return self.removed_at is None and now < self.expires

    def matches(
        self, source_ip: str | None, destination_port: int | None, features: frozenset[str]
    ) -> bool:
        """Whether an alert with these fields falls under it (expiry aside)."""
        if self.source_ip is not None and source_ip != self.source_ip:
            return False
        if self.destination_port is not None and destination_port != self.destination_port:
            return False
        return self.features <= features

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in a feedback record."""
        removed = None
        if self.removed_at is not None:
            removed = {"time": iso_time(self.removed_at), "by": self.removed_by}
        return {
            "id": self.id,
            "scope": self.scope,
            "source_ip": self.source_ip,
            "destination_port": self.destination_port,
            "features": sorted(self.features),
            "created": iso_time(self.created),
            "expires": iso_time(self.expires),
            "note": self.note,
            "analyst": self.analyst,
            "removed": removed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Read a rule written by :meth:`to_dict`.

        Raises:
            ValueError: A field is missing or has the wrong type.
        """
        try:
            removed = data.get("removed") or None
            port = data.get("destination_port")
            scope = str(data["scope"])
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope!r}")
            return cls(
                id=str(data["id"]),
                scope=scope,
                source_ip=data.get("source_ip"),
                destination_port=None if port is None else int(port),
                features=frozenset(str(f) for f in data["features"]),
                created=epoch_of(data["created"]),
                expires=epoch_of(data["expires"]),
                note=str(data.get("note") or ""),
                analyst=str(data.get("analyst") or ""),
                removed_at=epoch_of(removed["time"]) if removed else None,
                removed_by=removed.get("by") if removed else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed suppression rule: {exc!r}") from None


def make_rule(
    document: Mapping[str, Any],
    scope: Scope,
    created: float,
    lifetime_s: float,
    note: str = "",
    analyst: str = "",
) -> Rule:
    """The rule an analyst's false-positive verdict on ``document`` creates.

    Args:
        document: The alert.
        scope: ``host-port`` (source, destination port and features),
            ``host`` (source and features) or ``pattern`` (features only).
        created: Epoch seconds of the verdict.
        lifetime_s: Seconds until it expires.
        note: The analyst's note.
        analyst: Who gave the verdict.
    """
    port = document.get("destination", {}).get("port")
    return Rule(
        id=document["event"]["id"],
        scope=scope,
        source_ip=None if scope == "pattern" else document.get("source", {}).get("ip"),
        destination_port=port if scope == "host-port" else None,
        features=alert_features(document),
        created=created,
        expires=created + lifetime_s,
        note=note,
        analyst=analyst,
    )


@dataclass(frozen=True)
class Entry:
    """The latest feedback record of one event, and the rule it carries."""

    record: dict[str, Any]
    rule: Rule | None


class FeedbackBook:
    """The state of the feedback topic: the latest record of each key."""

    def __init__(self) -> None:
        self._latest: dict[str, Entry] = {}

    def apply(self, key: bytes | str | None, value: bytes | None) -> None:
        """Take one record of the topic, in topic order.

        Args:
            key: The event id (the record's ``event_id`` when absent).
            value: The JSON record; ``None`` is a tombstone.

        Raises:
            ValueError: The record is not a feedback record; the book is unchanged.
        """
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        if value is None:
            if name is not None:
                self._latest.pop(name, None)
            return
        try:
            record = _decode(value)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
        name = name or record.get("event_id")
        if not name:
            raise ValueError("neither a key nor an event_id")
        raw_rule = record.get("rule")
        rule = Rule.from_dict(raw_rule) if raw_rule else None
        self._latest[str(name)] = Entry(record, rule)

    def entries(self) -> dict[str, Entry]:
        """Event id to its latest entry."""
        return dict(self._latest)

    def rules(self) -> list[Rule]:
        """Every rule on record, removed and expired ones included, oldest first."""
        found = [e.rule for e in self._latest.values() if e.rule is not None]
        return sorted(found, key=lambda r: r.created)

    def active(self, now: float) -> list[Rule]:
        """The rules in force at ``now`` (epoch seconds)."""
        return [r for r in self.rules() if r.active(now)]

    def confirmed_benign(self) -> list[dict[str, Any]]:
        """Canonical flow records of alerts whose latest verdict is false-positive.

        Each record appears once, even when several alerts (one per model
        version) were raised on it.
        """
        out: dict[str, dict[str, Any]] = {}
        for entry in self._latest.values():
            record = entry.record.get("record")
            if entry.record.get("verdict") == "false-positive" and isinstance(record, dict):
                origin = entry.record.get("alert", {}).get("provenance") or entry.record["event_id"]
                out.setdefault(msgspec.json.encode(origin).decode(), record)
        return list(out.values())


class Suppressions:
    """The detector's suppression policy, kept current from the feedback topic.

    Call it with a batch's alert documents to get the mask of those to
    withhold (``Policy.suppress``). :meth:`start` follows the topic in a
    background thread; tests feed records with :meth:`update` instead.

    Args:
        clock: Wall-clock time in epoch seconds (expiry compares with it).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.book = FeedbackBook()
        self._clock = clock
        self._index: Index = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, documents: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.bool_]:
        """Mask of the alerts an unexpired rule withholds."""
        index, now = self._index, self._clock()
        mask = np.zeros(len(documents), dtype=bool)
        if index:
            for i, document in enumerate(documents):
                mask[i] = _withheld(document, index, now)
        return mask

    def update(self, records: Iterable[tuple[bytes | str | None, bytes | None]]) -> int:
        """Apply (key, value) records in topic order; return how many were rejected."""
        rejected = 0
        for key, value in records:
            try:
                self.book.apply(key, value)
            except ValueError:
                rejected += 1
        self._reindex()
        return rejected

    def active(self) -> list[Rule]:
        """The rules in force now."""
        return self.book.active(self._clock())

    def start(self, settings: Settings) -> Suppressions:
        """Follow ``topics.feedback`` from its beginning in a background thread."""
        self._thread = threading.Thread(
            target=self._follow,
            args=(settings, settings.topics.feedback),
            name="suppressions",
            daemon=True,
        )
        self._thread.start()
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the topic has been read to the end it had at start."""
        return self._ready.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop following and wait for the thread to leave the broker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _reindex(self) -> None:
        by_source: dict[str | None, list[Rule]] = {}
        for rule in self.book.rules():
            if rule.removed_at is None:
                by_source.setdefault(rule.source_ip, []).append(rule)
        # One reference swap: the loop's thread sees the old or the new index.
        self._index = {k: tuple(v) for k, v in by_source.items()}

    def _follow(self, settings: Settings, topic: str) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once(settings, topic)
            except (TransportError, kafka.errors.KafkaError, OSError) as exc:
                log.warning("feedback_unreadable", topic=topic, error=str(exc), retry_in_s=RETRY_S)
                self._stop.wait(RETRY_S)

    def _follow_once(self, settings: Settings, topic: str) -> None:
        reader = TopicReader(settings, topic, "beginning")
        try:
            while not reader.assign():
                # Nothing to load while the topic does not exist.
                self._mark_ready(topic)
                if self._stop.wait(RETRY_S):
                    return
            ends = reader.end_offsets()
            while not self._stop.is_set():
                self._consume(reader.poll(500))
                if not self._ready.is_set() and reader.reached(ends):
                    self._mark_ready(topic)
        finally:
            reader.close()

    def _consume(self, records: list[Any]) -> None:
        if not records:
            return
        before = len(self.active())
        for record in records:
            try:
                self.book.apply(record.key, record.value)
            except ValueError as exc:
                log.warning(
                    "feedback_rejected",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    reason=str(exc),
                )
        self._reindex()
        if self._ready.is_set() and len(self.active()) != before:
            log.info("suppressions_changed", active=len(self.active()))

    def _mark_ready(self, topic: str) -> None:
        if not self._ready.is_set():
            log.info("suppressions_loaded", topic=topic, active=len(self.active()))
            self._ready.set()


def _withheld(document: Mapping[str, Any], index: Index, now: float) -> bool:
    source = document.get("source", {}).get("ip")
    candidates = index.get(source, ()) + (index.get(None, ()) if source is not None else ())
    if not candidates:
        return False
    port = document.get("destination", {}).get("port")
    features = alert_features(document)
    return any(r.active(now) and r.matches(source, port, features) for r in candidates)


def load_feedback(settings: Settings, topic: str | None = None) -> FeedbackBook:
    """Read the feedback topic (``topics.feedback`` by default) to its current end."""
    book = FeedbackBook()
    for record in read_to_end(settings, topic or settings.topics.feedback):
        try:
            book.apply(record.key, record.value)
        except ValueError as exc:
            log.warning(
                "feedback_rejected",
                partition=record.partition,
                offset=record.offset,
                reason=str(exc),
            )
    return book


def confirmed_benign(settings: Settings) -> list[dict[str, Any]]:
    """Flow records analysts confirmed benign (latest verdict false-positive).

    For the retraining job: each is a canonical flow (every field of
    ``features.records.FLOW_FIELDS``, ``None`` where not reported), as it
    was decoded from the input topic when the verdict was given. Alerts
    whose input record had already left the topic carry no record and are
    not returned. Reads the whole feedback topic once.
    """
    return load_feedback(settings).confirmed_benign()
