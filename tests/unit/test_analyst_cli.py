"""The analyst's command line without a broker: durations, filters, the table."""

from __future__ import annotations

import io
import ipaddress
from typing import Any

import pytest
from rich.console import Console

from detector.cli import _parser
from detector.errors import ConfigError
from detector.stream.alerts import Origin, build_alert
from detector.tools.alerts_cli import AlertFilter, TableWriter, reasons_in_words
from detector.tools.timespec import parse_duration, parse_since

T0 = 1_767_657_600.0


def _alert(severity: str = "high", src: str = "10.0.0.5", dst: str = "10.0.9.9") -> dict[str, Any]:
    return build_alert(
        origin=Origin("flows", 0, 1, "netfraud"),
        row={"ts": T0, "src_ip": src, "dst_ip": dst, "dst_port": 22, "proto": 6, "service": "ssh"},
        score=3.0,
        threshold=1.5,
        severity=severity,
        risk=62.0,
        reasons=[
            {
                "name": "new_ports_10s",
                "label": "new destination ports in 10s",
                "observed": 412.0,
                "expected": 3.0,
                "share": 0.7,
            }
        ],
        model_version="v1",
        warming_up=True,
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2), ("15m", 900), ("2h", 7200), ("7d", 604800)]
)
def test_durations_are_read_with_their_unit(text: str, seconds: float) -> None:
    """s, m, h, d and w are seconds, minutes, hours, days and weeks."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "0s", "-1d", "soon", "3 days"])
def test_bad_durations_are_config_errors(text: str) -> None:
    """A duration without a known unit, or not positive, is refused."""
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_since_reads_relative_and_iso_times() -> None:
    """15m is fifteen minutes ago; an ISO time without a zone is UTC."""
    assert parse_since("15m", now=T0) == T0 - 900
    assert parse_since("2026-01-06T00:00:00") == T0
    assert parse_since("2026-01-06T01:00:00+01:00") == T0
    with pytest.raises(ConfigError):
        parse_since("yesterday")


def test_the_filter_keeps_the_minimum_severity_and_above() -> None:
    """--severity high shows high and critical only."""
    show = AlertFilter(min_severity="high")
    kept = [s for s in ("low", "medium", "high", "critical") if show(_alert(s), 0)]
    assert kept == ["high", "critical"]


def test_the_filter_matches_source_or_destination_host() -> None:
    """--host matches either end, and accepts a network."""
    show = AlertFilter(host=ipaddress.ip_network("10.0.9.9"))
    assert show(_alert(src="10.0.9.9", dst="1.1.1.1"), 0)
    assert show(_alert(), 0)
    assert not show(_alert(src="10.0.0.1", dst="10.0.0.2"), 0)
    assert AlertFilter(host=ipaddress.ip_network("10.0.0.0/24"))(_alert(), 0)


def test_the_filter_drops_alerts_published_before_since() -> None:
    """--since compares with the publication time of the alert message."""
    show = AlertFilter(since=T0)
    assert not show(_alert(), int(T0 * 1000) - 1)
    assert show(_alert(), int(T0 * 1000))


def test_reasons_read_as_words() -> None:
    """Each reason is its label, the observed value and the expected one."""
    words = reasons_in_words(_alert()["netfraud"])
    assert words == "new destination ports in 10s: 412, expected 3"


def test_the_table_shows_the_alert_without_colour_off_a_terminal() -> None:
    """Off a terminal no escape codes are written; the row holds the essentials."""
    out = io.StringIO()
    TableWriter(Console(file=out, width=160))(_alert("critical"))
    text = out.getvalue()
    assert "\x1b[" not in text
    for expected in ("critical", "10.0.0.5 → 10.0.9.9:22", "ssh", "62", "412, expected 3"):
        assert expected in text
    assert "warming up" in text


def test_no_color_is_respected_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR turns colour off even when the console is a terminal."""
    from detector.tools import alerts_cli

    monkeypatch.setenv("NO_COLOR", "1")
    console = alerts_cli._console()
    assert console.no_color


def test_the_commands_parse() -> None:
    """alerts, feedback and suppressions are subcommands with their flags."""
    p = _parser()
    args = p.parse_args(["alerts", "--no-follow", "--from-beginning", "--json", "--max", "3"])
    assert (args.follow, args.from_beginning, args.json, args.max) == (False, True, True, 3)
    args = p.parse_args(["feedback", "ab12cd34", "--verdict", "false-positive", "--expires", "2s"])
    assert (args.scope, args.expires) == ("host-port", "2s")
    assert p.parse_args(["suppressions", "remove", "ab12cd34"]).rule_id == "ab12cd34"
    with pytest.raises(SystemExit):
        p.parse_args(["alerts", "--since", "1h", "--from-beginning"])
