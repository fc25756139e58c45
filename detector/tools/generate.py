"""A seeded generator of labelled flow records, for demos and tests.

Normal traffic is a mix of web, DNS, SSH, database, mail and NTP flows from a
small office network, with heavy-tailed sizes and durations and a daily
rhythm. Attacks are injected as episodes: port scans, SYN floods, SSH
brute force, data exfiltration and command-and-control beaconing. No attack
carries a giveaway field: each is visible only in its sizes, states, ports
and timing, or in the context of the host's other flows.

Every record has ``label`` (``benign`` or ``attack``) and ``attack_type``
(empty for benign), which are never features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
ATTACK_TYPES = ("port_scan", "syn_flood", "brute_force", "exfiltration", "c2_beacon")
FLAGS_FULL = 1 | 2 | 8 | 16  # FIN SYN PSH ACK
SYN, RST, ACK = 2, 4, 16


@dataclass(frozen=True)
class Profile:
    """One kind of normal flow."""

    name: str
    share: float
    proto: str
    service: str | None
    port: int


PROFILES = (
    Profile("https", 0.50, "tcp", "ssl", 443),
    Profile("http", 0.08, "tcp", "http", 80),
    Profile("dns", 0.22, "udp", "dns", 53),
    Profile("ssh", 0.03, "tcp", "ssh", 22),
    Profile("postgres", 0.09, "tcp", "postgresql", 5432),
    Profile("smtp", 0.05, "tcp", "smtp", 587),
    Profile("ntp", 0.03, "udp", "ntp", 123),
)


class Generator:
    """Seeded generator; the same seeds give the same records."""

    def __init__(self, seed: int = 0, network_seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        # The network (hosts, servers, popularity) is fixed by its own seed, so
        # that streams of different seeds come from the same office.
        rng = np.random.default_rng(network_seed)
        self.clients = [f"10.0.{i // 200}.{10 + i % 200}" for i in range(120)]
        self.client_weight = _zipf(len(self.clients), 0.8, rng)
        self.web = [f"{a}.{b}.{c}.{d}" for a, b, c, d in rng.integers(1, 223, (400, 4))]
        self.web_weight = _zipf(len(self.web), 1.1, rng)
        self.admins = self.clients[:6]
        self.app_servers = [f"10.0.1.{30 + i}" for i in range(6)]

    def benign(self, n: int, start: float, hours: float) -> list[dict[str, Any]]:
        """``n`` normal flows between ``start`` and ``start + hours``."""
        times = _daily_times(self.rng, n, start, hours * 3600)
        shares = np.array([p.share for p in PROFILES])
        kinds = self.rng.choice(len(PROFILES), size=n, p=shares / shares.sum())
        return [self._benign_one(float(t), PROFILES[k]) for t, k in zip(times, kinds, strict=True)]

    def _benign_one(self, t: float, p: Profile) -> dict[str, Any]:
        rng = self.rng
        src = self.clients[rng.choice(len(self.clients), p=self.client_weight)]
        if p.name in ("https", "http"):
            dst = self.web[rng.choice(len(self.web), p=self.web_weight)]
            out, back = rng.lognormal(6.6, 0.8), rng.pareto(1.3) * 4000 + 300
            duration = rng.lognormal(-0.5, 1.2)
        elif p.name == "dns":
            dst, out, back = (
                f"10.0.0.{2 + rng.integers(2)}",
                float(rng.integers(38, 80)),
                float(rng.integers(60, 320)),
            )
            duration = rng.exponential(0.02)
        elif p.name == "ssh":
            src = self.admins[rng.integers(len(self.admins))]
            dst = f"10.0.1.{20 + rng.integers(5)}"
            out, back = rng.lognormal(9, 1.2), rng.lognormal(10.5, 1.5)
            duration = rng.lognormal(5.5, 1.2)
        elif p.name == "postgres":
            src = self.app_servers[rng.integers(len(self.app_servers))]
            dst, out, back = "10.0.1.10", rng.lognormal(7, 1), rng.lognormal(8.5, 1.5)
            duration = rng.lognormal(-1.5, 1.5)
        elif p.name == "smtp":
            dst, out, back = "10.0.1.5", rng.lognormal(9.5, 1.5), rng.lognormal(6.5, 0.5)
            duration = rng.lognormal(0.5, 0.8)
        else:
            dst, out, back, duration = "10.0.0.4", 48, 48, rng.exponential(0.01)
        state = "SF"
        if p.proto == "tcp":
            state = rng.choice(
                ["SF", "S1", "RSTO", "RSTR", "S0", "REJ", "SH"],
                p=[0.955, 0.01, 0.012, 0.01, 0.007, 0.003, 0.003],
            )
        return self._flow(t, src, dst, p.port, p.proto, p.service, duration, out, back, str(state))

    def _flow(
        self,
        t: float,
        src: str,
        dst: str,
        port: int,
        proto: str,
        service: str | None,
        duration: float,
        out: float,
        back: float,
        state: str,
        label: str = "benign",
        attack: str = "",
        sport: int | None = None,
    ) -> dict[str, Any]:
        out, back = int(out), int(back)
        failed = state in ("S0", "REJ", "SH")
        if failed:
            back = 0
        src_pkts = max(1, math.ceil(out / 1200) + (2 if proto == "tcp" else 0))
        dst_pkts = 0 if back == 0 else max(1, math.ceil(back / 1200) + (1 if proto == "tcp" else 0))
        flags = None
        if proto == "tcp":
            flags = {"S0": SYN, "REJ": SYN | RST | ACK, "SH": SYN | 1}.get(state, FLAGS_FULL)
            if state.startswith("RST"):
                flags = FLAGS_FULL | RST
        return {
            "ts": round(t, 6),
            "src_ip": src,
            "dst_ip": dst,
            "src_port": int(sport if sport is not None else self.rng.integers(32768, 61000)),
            "dst_port": port,
            "proto": proto,
            "duration": round(float(duration), 6),
            "src_bytes": out,
            "dst_bytes": back,
            "src_pkts": src_pkts,
            "dst_pkts": dst_pkts,
            "tcp_flags": flags,
            "service": service if not failed else None,
            "conn_state": state,
            "label": label,
            "attack_type": attack,
        }

    def attacks(self, start: float, hours: float, episodes: int) -> list[dict[str, Any]]:
        """``episodes`` attack episodes spread over the period, all kinds in turn."""
        span = hours * 3600
        out: list[dict[str, Any]] = []
        for i in range(episodes):
            kind = ATTACK_TYPES[i % len(ATTACK_TYPES)]
            t0 = start + span * (i + 0.5) / episodes + self.rng.uniform(-60, 60)
            out.extend(getattr(self, f"_{kind}")(t0))
        return out

    def _attacker(self) -> str:
        a, b = self.rng.integers(1, 255, 2)
        return f"203.0.{a}.{b}"

    def _port_scan(self, t0: float) -> Iterator[dict[str, Any]]:
        src, dst = self._attacker(), f"10.0.1.{20 + self.rng.integers(40)}"
        ports = self.rng.permutation(np.arange(1, 1025))[:250]
        for k, port in enumerate(ports):
            state = "REJ" if self.rng.random() < 0.8 else "S0"
            yield self._flow(
                t0 + k * 0.08,
                src,
                dst,
                int(port),
                "tcp",
                None,
                0.0,
                0,
                0,
                state,
                "attack",
                "port_scan",
            )

    def _syn_flood(self, t0: float) -> Iterator[dict[str, Any]]:
        sources = [self._attacker() for _ in range(3)]
        for k in range(300):
            yield self._flow(
                t0 + k * 0.03,
                sources[k % 3],
                "10.0.1.50",
                80,
                "tcp",
                None,
                0.0,
                0,
                0,
                "S0",
                "attack",
                "syn_flood",
            )

    def _brute_force(self, t0: float) -> Iterator[dict[str, Any]]:
        src, dst = self._attacker(), f"10.0.1.{20 + self.rng.integers(5)}"
        for k in range(150):
            yield self._flow(
                t0 + k * 1.2,
                src,
                dst,
                22,
                "tcp",
                "ssh",
                self.rng.uniform(0.8, 2.5),
                float(self.rng.integers(1500, 2600)),
                float(self.rng.integers(2000, 3200)),
                "RSTO" if k % 3 else "SF",
                "attack",
                "brute_force",
            )

    def _exfiltration(self, t0: float) -> Iterator[dict[str, Any]]:
        src = self.clients[self.rng.integers(len(self.clients))]
        dst = f"198.51.100.{self.rng.integers(1, 255)}"
        for k in range(40):
            yield self._flow(
                t0 + k * 45,
                src,
                dst,
                443,
                "tcp",
                "ssl",
                self.rng.uniform(30, 90),
                self.rng.lognormal(18, 0.6),
                float(self.rng.integers(3000, 9000)),
                "SF",
                "attack",
                "exfiltration",
            )

    def _c2_beacon(self, t0: float) -> Iterator[dict[str, Any]]:
        src = self.clients[self.rng.integers(len(self.clients))]
        dst = f"192.0.2.{self.rng.integers(1, 255)}"
        for k in range(120):
            yield self._flow(
                t0 + k * 30 + self.rng.normal(0, 0.5),
                src,
                dst,
                8443,
                "tcp",
                None,
                self.rng.normal(0.3, 0.02),
                self.rng.normal(310, 6),
                self.rng.normal(530, 10),
                "SF",
                "attack",
                "c2_beacon",
            )


def generate(
    records: int,
    seed: int = 0,
    attacks: bool = True,
    start: float = DEFAULT_START,
    hours: float = 24.0,
    episodes: int | None = None,
) -> list[dict[str, Any]]:
    """Labelled flows in time order.

    Args:
        records: Number of normal flows (attack flows come on top).
        seed: Same seed, same records.
        attacks: Whether to inject attack episodes.
        start: Epoch seconds of the first flow.
        hours: Length of the period.
        episodes: Attack episodes (default: two of each kind).
    """
    gen = Generator(seed)
    rows = gen.benign(records, start, hours)
    if attacks:
        rows += gen.attacks(start, hours, episodes or 2 * len(ATTACK_TYPES))
    rows.sort(key=lambda r: r["ts"])
    return rows


def _daily_times(
    rng: np.random.Generator, n: int, start: float, span: float
) -> npt.NDArray[np.float64]:
    """Times with a daily rhythm: busiest mid-afternoon, quietest before dawn."""
    out = np.empty(0)
    while out.size < n:
        t = start + rng.uniform(0, span, 2 * n)
        hour = (t % 86_400) / 3600
        rate = 1 + 0.7 * np.sin(2 * np.pi * (hour - 9) / 24)
        out = np.concatenate([out, t[rng.uniform(0, 1.7, t.size) < rate]])
    return np.sort(out[:n]).astype(np.float64)


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(weights)
    return np.asarray(weights / weights.sum(), dtype=np.float64)
