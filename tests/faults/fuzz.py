"""A seeded generator of poison records, interleaved with good ones.

Each bad record is one the ``netfraud`` decoder must refuse (so it must end
up in the dead-letter topic); each good one must be scored. The kinds of
poison are those a broken or hostile producer sends: truncated JSON, huge
fields, wrong types, deep nesting, NaN and Infinity literals, binary
garbage, messages near the broker's 1 MiB limit, empty values and tombstones,
with and without keys.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import stream_rows

#: The broker's default max.message.bytes is 1048588; stay a little under it.
NEAR_LIMIT_BYTES = 1_045_000
REQUIRED = ("ts", "src_ip", "dst_ip", "proto")


@dataclass(frozen=True)
class Sample:
    """One record to send, and whether the decoder must refuse it."""

    key: bytes | None
    value: bytes | None
    bad: bool
    kind: str


def _dump(row: dict[str, Any]) -> bytes:
    return json.dumps(row, separators=(",", ":")).encode()


def _with(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**row, **changes}


class Poison:
    """Makes bad records from good ones, each kind with its own recipe."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kinds: dict[str, tuple[float, Callable[[dict[str, Any]], bytes | None]]] = {
            "truncated": (20, self.truncated),
            "wrong_type": (16, self.wrong_type),
            "missing_field": (10, self.missing_field),
            "bad_value": (12, self.bad_value),
            "nan_infinity": (8, self.nan_infinity),
            "garbage": (10, self.garbage),
            "not_an_object": (5, self.not_an_object),
            "deep_nesting": (3, self.deep_nesting),
            "huge_field": (1.5, self.huge_field),
            "bad_utf8": (4, self.bad_utf8),
            "empty": (6, lambda row: b""),
            "tombstone": (4, lambda row: None),
        }

    def pick(self, row: dict[str, Any]) -> tuple[str, bytes | None]:
        """A random kind of poison made from ``row``."""
        names = list(self.kinds)
        weights = [self.kinds[n][0] for n in names]
        kind = self.rng.choices(names, weights)[0]
        return kind, self.kinds[kind][1](row)

    def truncated(self, row: dict[str, Any]) -> bytes:
        text = _dump(row)
        return text[: self.rng.randrange(1, len(text))]

    def wrong_type(self, row: dict[str, Any]) -> bytes:
        field, value = self.rng.choice(
            [
                ("src_port", "http"),
                ("dst_port", [443]),
                ("proto", {"name": "tcp"}),
                ("ts", True),
                ("src_ip", 167772161),
                ("dst_ip", None),
                ("src_bytes", "lots"),
                ("duration", [0.5]),
                ("tcp_flags", 2.5),
                ("service", 7),
            ]
        )
        return _dump(_with(row, **{field: value}))

    def missing_field(self, row: dict[str, Any]) -> bytes:
        field = self.rng.choice(REQUIRED)
        return _dump({k: v for k, v in row.items() if k != field})

    def bad_value(self, row: dict[str, Any]) -> bytes:
        field, value = self.rng.choice(
            [
                ("src_port", 70_000),
                ("dst_port", -1),
                ("src_bytes", -5),
                ("duration", -0.1),
                ("src_ip", "300.1.2.3"),
                ("dst_ip", "not-an-address"),
                ("src_ip", "\u0000"),
                ("ts", time.time() + 30 * 86_400),
                ("ts", 10**400),
                ("ts", "yesterday-ish"),
                ("proto", "no-such-protocol"),
            ]
        )
        return _dump(_with(row, **{field: value}))

    def nan_infinity(self, row: dict[str, Any]) -> bytes:
        field = self.rng.choice(["ts", "duration", "src_bytes", "dst_pkts", "src_port"])
        literal = self.rng.choice(["NaN", "Infinity", "-Infinity"])
        text = _dump(_with(row, **{field: 0}))
        return text.replace(f'"{field}":0'.encode(), f'"{field}":{literal}'.encode(), 1)

    def garbage(self, row: dict[str, Any]) -> bytes:
        size = self.rng.choice([1, 2, 7, 64, 512, 4096])
        data = self.rng.randbytes(size)
        if self.rng.random() < 0.3:  # framed like an object, to reach the batch fast path
            data = b"{" + data + b"}"
        return data

    def not_an_object(self, row: dict[str, Any]) -> bytes:
        return self.rng.choice([b"[]", b"null", b"42", b'"a string"', b"true", _dump([row])])

    def deep_nesting(self, row: dict[str, Any]) -> bytes:
        depth = self.rng.choice([50, 1_000, 20_000])
        field = self.rng.choice(REQUIRED)
        opening, closing = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        nested = opening * depth + b"1" + closing * depth
        text = _dump(_with(row, **{field: 0}))
        return text.replace(f'"{field}":0'.encode(), f'"{field}":'.encode() + nested, 1)

    def huge_field(self, row: dict[str, Any]) -> bytes:
        size = self.rng.choice([10_000, 100_000, 500_000])
        field = self.rng.choice(["src_ip", "dst_ip", "service", "conn_state"])
        return _dump(_with(row, **{field: "x" * size}))

    def bad_utf8(self, row: dict[str, Any]) -> bytes:
        text = _dump(_with(row, service="SERVICE"))
        return text.replace(b"SERVICE", b"\xff\xfe\xc3(")

    def near_limit(self, row: dict[str, Any]) -> bytes:
        """A record just under the broker's size limit (its padding makes it invalid)."""
        base = _dump(_with(row, service=""))
        return base.replace(
            b'"service":""', b'"service":"' + b"y" * (NEAR_LIMIT_BYTES - len(base)) + b'"'
        )


def poison_stream(bad: int, good: int, seed: int = 5, near_limit: int = 4) -> list[Sample]:
    """``bad`` poison records (``near_limit`` of them close to 1 MiB) shuffled among
    ``good`` valid ones; a fifth of either kind has no key."""
    rng = random.Random(seed)
    rows = stream_rows(max(good, 1_000), seed=seed)
    poison = Poison(rng)
    fine = iter([Sample(_key(rng, r), _dump(r), False, "good") for r in rows[:good]])
    bad_ones = []
    for i in range(bad):
        row = rows[rng.randrange(len(rows))]
        kind, value = ("near_limit", poison.near_limit(row)) if i < near_limit else poison.pick(row)
        bad_ones.append(Sample(_key(rng, row), value, True, kind))
    poisoned = iter(bad_ones)
    # Poison anywhere; the good records keep their time order among themselves.
    flags = [True] * bad + [False] * good
    rng.shuffle(flags)
    return [next(poisoned) if flag else next(fine) for flag in flags]


def _key(rng: random.Random, row: dict[str, Any]) -> bytes | None:
    return None if rng.random() < 0.2 else str(row["src_ip"]).encode()
