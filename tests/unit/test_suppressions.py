"""Suppression rules from the feedback topic: matching, expiry, removal, latest wins."""

from __future__ import annotations

import json
from typing import Any

import pytest

from detector.stream.alerts import Origin, build_alert
from detector.stream.suppressions import FeedbackBook, Rule, Suppressions, make_rule
from detector.tools.feedback import feedback_record

T0 = 1_767_657_600.0
DAY = 86_400.0


def _alert(
    src: str = "10.0.0.5",
    dst: str = "10.0.9.9",
    port: int = 22,
    features: tuple[str, ...] = ("new_ports_10s", "dst_pkts", "duration"),
    offset: int = 7,
) -> dict[str, Any]:
    reasons = [
        {"name": f, "label": f.replace("_", " "), "observed": 4.0, "expected": 1.0, "share": 0.3}
        for f in features
    ]
    return build_alert(
        origin=Origin("flows", 0, offset, "netfraud"),
        row={"ts": T0, "src_ip": src, "dst_ip": dst, "dst_port": port, "proto": 6},
        score=2.0,
        threshold=1.0,
        severity="high",
        risk=80.0,
        reasons=reasons,
        model_version="v1",
        warming_up=False,
    )


def _verdict(
    alert: dict[str, Any],
    verdict: str = "false-positive",
    scope: Any = "host-port",
    lifetime_s: float = 7 * DAY,
    now: float = T0,
    record: dict[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    feedback = feedback_record(alert, verdict, "backup job", "alice", now, record)
    if verdict == "false-positive":
        feedback["rule"] = make_rule(alert, scope, now, lifetime_s, "backup job", "alice").to_dict()
    return alert["event"]["id"].encode(), json.dumps(feedback).encode()


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _suppressions(*records: tuple[bytes, bytes | None], now: float = T0 + 60) -> Suppressions:
    s = Suppressions(clock=Clock(now))
    assert s.update(records) == 0
    return s


def test_the_same_alert_is_withheld() -> None:
    """A false positive withholds an alert with the same source, port and reasons."""
    alert = _alert()
    s = _suppressions(_verdict(alert))
    assert s([alert, _alert(offset=8)]).tolist() == [True, True]


def test_other_sources_are_not_withheld() -> None:
    """A rule scoped to a host leaves other sources alone."""
    s = _suppressions(_verdict(_alert()))
    assert s([_alert(src="10.0.0.6")]).tolist() == [False]


def test_host_port_scope_needs_the_same_port() -> None:
    """Scope host-port matches the destination port; scope host matches any port."""
    other_port = _alert(port=443)
    assert _suppressions(_verdict(_alert()))([other_port]).tolist() == [False]
    assert _suppressions(_verdict(_alert(), scope="host"))([other_port]).tolist() == [True]


def test_pattern_scope_matches_any_source() -> None:
    """Scope pattern matches the reasons from every source."""
    s = _suppressions(_verdict(_alert(), scope="pattern"))
    assert s([_alert(src="192.168.1.1", port=80)]).tolist() == [True]


def test_the_feature_pattern_must_be_a_subset_of_the_reasons() -> None:
    """Extra reasons still match; a missing rule feature does not."""
    s = _suppressions(_verdict(_alert(features=("new_ports_10s", "dst_pkts"))))
    wider = _alert(features=("dst_pkts", "new_ports_10s", "duration"))
    narrower = _alert(features=("new_ports_10s", "duration", "src_bytes"))
    assert s([wider, narrower]).tolist() == [True, False]


def test_an_expired_rule_no_longer_withholds() -> None:
    """Expiry compares with the wall clock."""
    clock = Clock(T0 + 1)
    s = Suppressions(clock=clock)
    alert = _alert()
    s.update([_verdict(alert, lifetime_s=2.0)])
    assert s([alert]).tolist() == [True]
    clock.now = T0 + 2.5
    assert s([alert]).tolist() == [False]
    assert s.active() == []


def test_a_removal_record_ends_the_rule_but_keeps_the_verdict() -> None:
    """The removal replaces the rule under the same key; the verdict stays."""
    alert = _alert()
    key, value = _verdict(alert, record={"src_ip": "10.0.0.5"})
    feedback = json.loads(value)
    feedback["rule"]["removed"] = {"time": "2026-01-06T00:00:30+00:00", "by": "bob"}
    s = _suppressions((key, value), (key, json.dumps(feedback).encode()))
    assert s([alert]).tolist() == [False]
    assert s.book.rules()[0].removed_by == "bob"
    assert s.book.confirmed_benign() == [{"src_ip": "10.0.0.5"}]


def test_a_later_verdict_replaces_the_rule() -> None:
    """Latest wins: a true-positive verdict after a false positive lifts the rule."""
    alert = _alert()
    s = _suppressions(_verdict(alert), _verdict(alert, verdict="true-positive"))
    assert s([alert]).tolist() == [False]
    assert s.book.rules() == []


def test_a_later_expiry_replaces_the_earlier_one() -> None:
    """Latest wins: a second false positive with a short expiry shortens the rule."""
    alert = _alert()
    s = _suppressions(_verdict(alert), _verdict(alert, lifetime_s=2.0), now=T0 + 10)
    assert s([alert]).tolist() == [False]


def test_a_tombstone_forgets_the_event() -> None:
    """A record without a value removes the key's rule and verdict."""
    alert = _alert()
    key, _ = verdict = _verdict(alert, record={"src_ip": "10.0.0.5"})
    s = _suppressions(verdict, (key, None))
    assert s([alert]).tolist() == [False]
    assert s.book.confirmed_benign() == []


def test_a_malformed_record_is_rejected_and_changes_nothing() -> None:
    """Bad JSON or a broken rule is counted and skipped."""
    alert = _alert()
    s = Suppressions(clock=Clock(T0 + 60))
    broken = json.dumps({"event_id": "ab" * 16, "rule": {"scope": "everything"}}).encode()
    assert s.update([_verdict(alert), (b"x", b"{not json"), (b"y", broken)]) == 2
    assert s([alert]).tolist() == [True]


def test_no_rules_withhold_nothing() -> None:
    """Without rules the mask is all False, one entry per alert."""
    mask = Suppressions()([_alert(), _alert(offset=9)])
    assert mask.dtype == bool and mask.tolist() == [False, False]


def test_confirmed_benign_holds_false_positives_once_each() -> None:
    """Records of false positives, not of true positives, deduplicated by origin."""
    book = FeedbackBook()
    fp, tp = _alert(offset=1), _alert(offset=2)
    for key, value in (
        _verdict(fp, record={"src_ip": "a"}),
        _verdict(fp, record={"src_ip": "a"}),
        _verdict(tp, verdict="true-positive", record={"src_ip": "b"}),
    ):
        book.apply(key, value)
    assert book.confirmed_benign() == [{"src_ip": "a"}]


def test_a_rule_survives_its_round_trip() -> None:
    """to_dict and from_dict keep every field (times to the millisecond)."""
    rule = make_rule(_alert(), "host", T0 + 0.25, 3_600.0, "note", "alice")
    assert Rule.from_dict(rule.to_dict()) == rule


@pytest.mark.parametrize("scope", ["host-port", "host", "pattern"])
def test_make_rule_keeps_what_the_scope_names(scope: Any) -> None:
    """host-port keeps source and port, host the source, pattern neither."""
    rule = make_rule(_alert(), scope, T0, DAY)
    assert (rule.source_ip is not None) == (scope != "pattern")
    assert (rule.destination_port is not None) == (scope == "host-port")
    assert rule.features == {"new_ports_10s", "dst_pkts", "duration"}


def test_remove_writes_the_record_again_with_the_rule_marked_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`suppressions remove` republishes the verdict under its key, rule removed."""
    from detector.settings import Settings
    from detector.tools import feedback

    alert = _alert()
    book = FeedbackBook()
    book.apply(*_verdict(alert, record={"src_ip": "10.0.0.5"}))
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(
        feedback, "publish_feedback", lambda settings, record: written.append(record)
    )
    monkeypatch.setenv("USER", "bob")

    assert feedback._remove(Settings(), book, alert["event"]["id"][:10]) == 0

    [record] = written
    s = _suppressions((alert["event"]["id"].encode(), json.dumps(record).encode()))
    assert s([alert]).tolist() == [False]
    assert record["verdict"] == "false-positive" and record["record"] == {"src_ip": "10.0.0.5"}
    assert record["rule"]["removed"]["by"] == "bob"
    with pytest.raises(feedback.ConfigError):
        feedback._remove(Settings(), s.book, alert["event"]["id"][:10])
