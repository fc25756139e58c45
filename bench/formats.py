"""Decode, and decode + vectorise, throughput of each record format, in
records per second on one core.

Run it with ``python -m bench.formats``; ``make bench`` calls :func:`run`.

Each format decodes the same ~100,000 synthetic flows, written as that tool
writes them, in micro-batches of 2,000 through one adapter instance, as the
stream loop does; ``validate()`` is included. After one warm-up pass (the
address checks are cached, as they are in a long-running process), five
passes are timed and the median is reported.

The second figure adds what turns a decoded batch into the model's input,
as ``serve`` does it: derived columns, the per-host context features (state
kept across batches, fresh for each pass) and the fitted feature spec, fitted
once beforehand on the same traffic.

Time is the process's CPU time, not wall time: decoding is single-threaded
(the CSV reader is told not to use threads), and CPU time is what stays
comparable on a shared or busy machine. The traffic has 4,096 internal and
8,192 external addresses: real networks have far fewer distinct addresses
than flows, and the shared address check caches by value.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from features.formats import get_adapter
from features.formats.cicflowmeter import JAVA_COLUMNS, normalise
from features.formats.zeek import CONN_FIELDS
from features.spec import FittedSpec, FlowVectorizer, fit_vectorizer

RECORDS = 100_000
BATCH = 2_000
PASSES = 5
#: Formats expected to reach this many records per second on one core.
TARGET = 150_000
TARGETED = ("netfraud", "zeek-tsv", "cicflowmeter-csv")


@dataclass(frozen=True)
class Flow:
    """One synthetic flow, in canonical terms."""

    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    proto: str
    duration: float
    sbytes: int
    dbytes: int
    spkts: int
    dpkts: int
    flags: int


def flows(n: int = RECORDS, seed: int = 7) -> list[Flow]:
    """``n`` flows a second apart, from internal hosts to a mix of servers."""
    rng = random.Random(seed)
    start = 1_767_225_600.0
    out = []
    for i in range(n):
        proto = rng.choice(("tcp", "tcp", "tcp", "udp"))
        spkts = rng.randint(1, 40)
        out.append(
            Flow(
                ts=start + i + rng.random(),
                src=f"10.{rng.randrange(16)}.{rng.randrange(16)}.{rng.randrange(1, 17)}",
                dst=f"198.{rng.randrange(18, 20)}.{rng.randrange(32)}.{rng.randrange(1, 129)}",
                sport=rng.randint(1024, 65535),
                dport=rng.choice((443, 80, 53, 22, 8443, 3389)),
                proto=proto,
                duration=round(rng.expovariate(1.0), 6),
                sbytes=spkts * rng.randint(40, 1500),
                dbytes=rng.randint(0, 200_000),
                spkts=spkts,
                dpkts=rng.randint(0, 60),
                flags=27 if proto == "tcp" else 0,
            )
        )
    return out


def netfraud(f: Flow) -> bytes:
    return json.dumps(
        {
            "ts": f.ts,
            "src_ip": f.src,
            "dst_ip": f.dst,
            "src_port": f.sport,
            "dst_port": f.dport,
            "proto": f.proto,
            "duration": f.duration,
            "src_bytes": f.sbytes,
            "dst_bytes": f.dbytes,
            "src_pkts": f.spkts,
            "dst_pkts": f.dpkts,
            "tcp_flags": f.flags,
            "service": "https",
            "conn_state": "SF",
        }
    ).encode()


def _zeek_fields(f: Flow) -> dict[str, object]:
    return {
        "ts": round(f.ts, 6),
        "uid": f"C{int(f.ts * 1e6) % 10**16:016d}",
        "id.orig_h": f.src,
        "id.orig_p": f.sport,
        "id.resp_h": f.dst,
        "id.resp_p": f.dport,
        "proto": f.proto,
        "service": "ssl" if f.dport == 443 else "-",
        "duration": f.duration,
        "orig_bytes": f.sbytes - 40 * f.spkts,
        "resp_bytes": f.dbytes,
        "conn_state": "SF",
        "local_orig": "T",
        "local_resp": "F",
        "missed_bytes": 0,
        "history": "ShADadFf" if f.proto == "tcp" else "Dd",
        "orig_pkts": f.spkts,
        "orig_ip_bytes": f.sbytes,
        "resp_pkts": f.dpkts,
        "resp_ip_bytes": f.dbytes + 40 * f.dpkts,
        "tunnel_parents": "(empty)",
    }


def zeek_tsv(f: Flow) -> bytes:
    fields = _zeek_fields(f)
    return "\t".join(str(fields[name]) for name in CONN_FIELDS).encode()


def zeek_json(f: Flow) -> bytes:
    fields = {k: v for k, v in _zeek_fields(f).items() if v not in ("-", "(empty)")}
    fields["local_orig"], fields["local_resp"] = True, False
    return json.dumps(fields).encode()


def cicflowmeter_csv(f: Flow) -> bytes:
    stamp = datetime.fromtimestamp(f.ts, UTC).strftime("%d/%m/%Y %I:%M:%S %p")
    known = {
        "flow_id": f"{f.src}-{f.dst}-{f.sport}-{f.dport}-6",
        "src_ip": f.src,
        "dst_ip": f.dst,
        "src_port": f.sport,
        "dst_port": f.dport,
        "protocol": 6 if f.proto == "tcp" else 17,
        "timestamp": stamp,
        "flow_duration": int(f.duration * 1e6),
        "tot_fwd_pkts": f.spkts,
        "tot_bwd_pkts": f.dpkts,
        "tot_len_fwd_pkts": f.sbytes,
        "tot_len_bwd_pkts": f.dbytes,
        "syn_flags_cnt": 1,
        "ack_flags_cnt": f.spkts,
        "label": "No Label",
    }
    cells = (known.get(normalise(c), "0.0") for c in JAVA_COLUMNS)
    return ",".join(str(c) for c in cells).encode()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def suricata(f: Flow) -> bytes:
    event = {
        "timestamp": _iso(f.ts + f.duration + 30),
        "flow_id": int(f.ts * 1e6),
        "in_iface": "eth0",
        "event_type": "flow",
        "src_ip": f.src,
        "src_port": f.sport,
        "dest_ip": f.dst,
        "dest_port": f.dport,
        "proto": f.proto.upper(),
        "app_proto": "tls",
        "flow": {
            "pkts_toserver": f.spkts,
            "pkts_toclient": f.dpkts,
            "bytes_toserver": f.sbytes,
            "bytes_toclient": f.dbytes,
            "start": _iso(f.ts),
            "end": _iso(f.ts + f.duration),
            "age": int(f.duration),
            "state": "closed",
            "reason": "timeout",
            "alerted": False,
        },
    }
    if f.proto == "tcp":
        event["tcp"] = {"tcp_flags": "1b", "tcp_flags_ts": "1b", "tcp_flags_tc": "1b"}
    return json.dumps(event).encode()


def goflow2(f: Flow) -> bytes:
    start = int(f.ts * 1e9)
    return json.dumps(
        {
            "type": "IPFIX",
            "time_received_ns": start + 30 * 10**9,
            "sequence_num": 1,
            "sampling_rate": 0,
            "sampler_address": "192.0.2.1",
            "time_flow_start_ns": start,
            "time_flow_end_ns": start + int(f.duration * 1e9),
            "bytes": f.sbytes,
            "packets": f.spkts,
            "src_addr": f.src,
            "dst_addr": f.dst,
            "etype": "IPv4",
            "proto": f.proto.upper(),
            "src_port": f.sport,
            "dst_port": f.dport,
            "in_if": 1,
            "out_if": 2,
            "src_mac": "00:1b:21:3c:4d:5e",
            "dst_mac": "00:1b:21:aa:bb:cc",
            "ip_tos": 0,
            "ip_ttl": 64,
            "tcp_flags": f.flags,
            "src_as": 0,
            "dst_as": 0,
            "next_hop": "",
        }
    ).encode()


def nprobe(f: Flow) -> bytes:
    start = int(f.ts * 1000)
    return json.dumps(
        {
            "IPV4_SRC_ADDR": f.src,
            "L4_SRC_PORT": f.sport,
            "IPV4_DST_ADDR": f.dst,
            "L4_DST_PORT": f.dport,
            "PROTOCOL": 6 if f.proto == "tcp" else 17,
            "L7_PROTO": "91.0",
            "L7_PROTO_NAME": "TLS",
            "IN_BYTES": f.sbytes,
            "IN_PKTS": f.spkts,
            "OUT_BYTES": f.dbytes,
            "OUT_PKTS": f.dpkts,
            "TCP_FLAGS": f.flags,
            "FLOW_START_MILLISECONDS": start,
            "FLOW_END_MILLISECONDS": start + int(f.duration * 1000),
            "FLOW_DURATION_MILLISECONDS": int(f.duration * 1000),
        }
    ).encode()


#: Benchmark name -> (adapter name, writer of one record).
CASES: dict[str, tuple[str, Callable[[Flow], bytes]]] = {
    "netfraud": ("netfraud", netfraud),
    "zeek-tsv": ("zeek", zeek_tsv),
    "zeek-json": ("zeek", zeek_json),
    "cicflowmeter-csv": ("cicflowmeter", cicflowmeter_csv),
    "suricata": ("suricata", suricata),
    "goflow2": ("goflow2", goflow2),
    "nprobe": ("nprobe", nprobe),
}


def measure(
    fmt: str, values: Sequence[bytes], passes: int = PASSES, spec: FittedSpec | None = None
) -> float:
    """Median records per CPU second of decoding ``values`` in batches, and
    of vectorising them too when ``spec`` is given.

    Raises:
        RuntimeError: A synthetic record was rejected (the benchmark is wrong).
    """
    adapter = get_adapter(fmt)
    batches = [values[i : i + BATCH] for i in range(0, len(values), BATCH)]
    for batch in batches:  # warm-up, and a check that the records are valid
        rejects = adapter.decode(batch).rejects
        if rejects:
            raise RuntimeError(f"{fmt}: synthetic record rejected: {rejects[0].reason}")
    rates = []
    for _ in range(passes):
        vectorise = FlowVectorizer(spec) if spec is not None else None
        start = time.process_time()
        for batch in batches:
            decoded = adapter.decode(batch).batch
            if vectorise is not None:
                vectorise(decoded)
        rates.append(len(values) / (time.process_time() - start))
    return statistics.median(rates)


def fitted_spec(traffic: Sequence[Flow]) -> FittedSpec:
    """The default flow spec fitted on ``traffic`` (what a trained model holds)."""
    decoded = get_adapter("netfraud").decode([netfraud(f) for f in traffic]).batch
    vectorizer, _ = fit_vectorizer(decoded)
    return vectorizer.spec


def run(records: int = RECORDS, passes: int = PASSES) -> dict[str, dict[str, float]]:
    """Decode and decode + vectorise rates of each case, in records per second."""
    traffic = flows(records)
    spec = fitted_spec(traffic[:20_000])
    out: dict[str, dict[str, float]] = {}
    for name, (fmt, write) in CASES.items():
        values = [write(f) for f in traffic]
        out[name] = {
            "decode": measure(fmt, values, passes),
            "decode_vectorise": measure(fmt, values, passes, spec),
        }
    return out


def main() -> None:
    """Print one line per format, marking those below their target."""
    print(
        f"{RECORDS:,} records in batches of {BATCH:,}, median of {PASSES}; records per CPU second"
    )
    print(f"  {'format':<18} {'decode':>12} {'+ vectorise':>12}")
    for name, rates in run().items():
        note = ""
        if name in TARGETED:
            short = rates["decode_vectorise"] < TARGET
            note = f"  (target {TARGET:,} with vectorise)" if short else "  ok"
        print(f"  {name:<18} {rates['decode']:>12,.0f} {rates['decode_vectorise']:>12,.0f}{note}")


if __name__ == "__main__":
    main()
