"""``netfraud alerts``: follow the alerts topic as a table, or as JSON lines.

The table is coloured on a terminal only, and never when ``NO_COLOR`` is
set. ``--json`` prints each alert document unchanged, one per line.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from kafka.structs import TopicPartition
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from detector.errors import ConfigError
from detector.logs import get_logger
from detector.settings import Settings
from detector.stream.alerts import summarise
from detector.stream.topic_reader import Start, TopicReader
from detector.tools.timespec import parse_since

log = get_logger("alerts")

SEVERITIES = ("low", "medium", "high", "critical")
_STYLES = {"low": "cyan", "medium": "yellow", "high": "bold red", "critical": "bold white on red"}
#: Seconds between looks for an alerts topic that does not exist yet.
WAIT_FOR_TOPIC_S = 2.0
_decode = msgspec.json.Decoder(dict[str, Any]).decode

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts to show.

    Attributes:
        min_severity: Lowest severity shown (``None``: all).
        host: Shown when the source or destination address is in it.
        since: Epoch seconds; alerts published earlier are not shown.
    """

    min_severity: str | None = None
    host: Network | None = None
    since: float | None = None

    def __call__(self, document: dict[str, Any], published_ms: int) -> bool:
        """Whether to show an alert published at ``published_ms`` (epoch ms)."""
        if self.since is not None and published_ms < self.since * 1000:
            return False
        if self.min_severity is not None and _rank(document) < SEVERITIES.index(self.min_severity):
            return False
        return self.host is None or any(_inside(ip, self.host) for ip in _addresses(document))


def alerts_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print alerts until ``--max`` is reached, the end (``--no-follow``) or Ctrl-C."""
    since = parse_since(args.since) if args.since else None
    show = AlertFilter(args.severity, _network(args.host), since)
    start: Start = "beginning" if args.from_beginning else since if since is not None else "end"
    write = _json_writer() if args.json else TableWriter(_console())
    messages = follow(settings, settings.topics.alerts, start, args.follow)
    try:
        with contextlib.closing(messages):
            shown = _print_alerts(messages, show, write, args.max)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other filters do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not args.json and shown == 0:
        _console().print("no alerts matched", style="dim")
    return 0


def _print_alerts(
    messages: Iterator[Any],
    show: AlertFilter,
    write: Callable[[dict[str, Any]], None],
    limit: int | None,
) -> int:
    shown = 0
    for message in messages:
        document = _document(message)
        if document is None or not show(document, message.timestamp):
            continue
        write(document)
        shown += 1
        if limit is not None and shown >= limit:
            break
    return shown


def follow(
    settings: Settings, topic: str, start: Start, keep_going: bool
) -> Generator[Any, None, None]:
    """Messages of ``topic`` from ``start``; without ``keep_going``, up to the
    end the topic had when reading began."""
    reader = TopicReader(settings, topic, start)
    try:
        while not reader.assign():
            if not keep_going:
                return
            time.sleep(WAIT_FOR_TOPIC_S)
        ends = None if keep_going else reader.end_offsets()
        while ends is None or not reader.reached(ends):
            for message in reader.poll(500):
                if (
                    ends is None
                    or message.offset < ends[TopicPartition(message.topic, message.partition)]
                ):
                    yield message
    finally:
        reader.close()


def _document(message: Any) -> dict[str, Any] | None:
    try:
        return _decode(message.value or b"")
    except msgspec.DecodeError as exc:
        log.warning(
            "alert_unreadable",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=str(exc),
        )
        return None


class TableWriter:
    """Prints alerts as rows of a three-column table as they arrive.

    The first two columns have fixed widths, so rows printed one at a time
    line up under the one header; the third takes the rest of the line.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.header = True

    def __call__(self, document: dict[str, Any]) -> None:
        """Print one alert as a row."""
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, show_header=self.header)
        table.add_column("time (UTC) / id", width=19, no_wrap=True)
        table.add_column("severity", width=8, no_wrap=True)
        table.add_column("flow, score and why", ratio=1, overflow="fold")
        table.add_row(*row(document))
        self.console.print(table)
        self.header = False


def row(document: dict[str, Any]) -> list[Text]:
    """The cells of one alert: time and id; severity and risk; flow, score and reasons."""
    n, event = document.get("netfraud", {}), document.get("event", {})
    severity = str(n.get("severity", "?"))
    when = Text(_when(document.get("@timestamp")))
    when.append("\n" + str(event.get("id", ""))[:12], style="dim")
    level = Text(severity, style=_STYLES.get(severity, ""))
    level.append(f"\nrisk {float(event.get('risk_score', 0)):.0f}")
    details = Text(f"{flow(document)}  {service(document)}", style="bold")
    details.append(f"\n{_score(n)}", style="dim")
    for line in reasons_in_words(n).splitlines():
        details.append(f"\n• {line}")
    if n.get("warming_up"):
        details.append("\n(context still warming up: counts may be understated)", style="dim")
    return [when, level, details]


def flow(document: dict[str, Any]) -> str:
    """``source → destination:port``."""
    source = document.get("source", {}).get("ip") or "?"
    destination = document.get("destination", {})
    port = destination.get("port")
    return f"{source} → {destination.get('ip') or '?'}" + (f":{port}" if port is not None else "")


def service(document: dict[str, Any]) -> str:
    """The application protocol, else the transport."""
    network = document.get("network", {})
    return str(network.get("protocol") or network.get("transport") or "-")


def reasons_in_words(n: dict[str, Any]) -> str:
    """One line per top reason: ``label: observed, expected E``."""
    reasons = n.get("reasons") or []
    if reasons:
        return "\n".join(summarise([r]) for r in reasons)
    return str(n.get("summary") or "-").replace("; ", "\n")


def _score(n: dict[str, Any]) -> str:
    score, threshold = n.get("score"), n.get("threshold")
    if not isinstance(score, (int, float)):
        return "-"
    if isinstance(threshold, (int, float)) and threshold > 0:
        return f"score {score:.3g}, {score / threshold:.1f}× the threshold"
    return f"score {score:.3g}"


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromisoformat(str(timestamp)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(timestamp or "-")


def _json_writer() -> Callable[[dict[str, Any]], None]:
    def write(document: dict[str, Any]) -> None:
        print(json.dumps(document, separators=(",", ":")), flush=True)

    return write


def _console() -> Console:
    return Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")))


def _network(host: str | None) -> Network | None:
    if host is None:
        return None
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ConfigError(f"--host {host!r} is not an IP address or network") from None


def _rank(document: dict[str, Any]) -> int:
    severity = document.get("netfraud", {}).get("severity")
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _addresses(document: dict[str, Any]) -> list[str]:
    return [document.get(side, {}).get("ip") or "" for side in ("source", "destination")]


def _inside(address: str, network: Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False
