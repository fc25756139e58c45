"""Packet path throughput: capture reading, damped statistics, pcap to vectors.

Run it with ``python -m bench.packets`` (``--no-write`` to only print);
:func:`run` returns the figures as a dict.

Input: the largest Slips capture (``test-cc-capture-1.pcap``, 7,931 packets)
repeated, each copy shifted later by the capture's span, until there are at
least 100,000 packets; written once to a temporary directory, never into the
repository.

Measured, each as the median of three passes in process CPU time (the work is
single-threaded, and CPU time stays comparable on a shared, busy machine):

* **read**: ``read_packets`` (file to one tuple per IP packet), and
  ``read_capture`` (file to a validated canonical batch, what training uses);
  beside them the alternatives considered: dpkt's reader with its full decode
  of each frame (Ethernet, IP, TCP/UDP objects) extracting the same fields,
  and dpkt's reader alone (framing, no decode);
* **extractor**: ``PacketContext.update`` over micro-batches of 2,000 packets,
  as the stream loop calls it (from a fresh state each pass);
* **end to end**: ``read_capture`` then a fitted ``PacketVectorizer`` over
  micro-batches of 2,000: capture file to float32 model input.

Then, in the same run, the public Kitsune feature extractor (Mirsky et al.,
``ymirsky/Kitsune-py``, fetched to ``$KITSUNE_DIR``, default
``/work/kitsune-bench``, run unmodified with defaults by that directory's own
virtualenv) on the same capture: its ``FE`` class reads the pcap with scapy
(no tshark here) and ``get_next_vector`` yields 100 features per packet from
``netStat`` with its default decay rates. Its figures, also process CPU time:
read (scapy ``rdpcap``), extractor (time inside ``netStat.updateGetStats``
alone) and end to end (read plus every ``get_next_vector`` call). By default
it runs once (``--kitsune-runs``): one pass over 100,000 packets takes minutes.

Figures go to ``bench/results/packets.json`` and to the "Packet extractor"
section of ``docs/benchmarks.md`` (other sections are left as they are).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.tools.pcap import read_capture, read_packets
from features.packets import PacketContext, fit_packet_vectorizer
from features.records import FlowBatch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "slips-pcaps" / "test-cc" / "test-cc-capture-1.pcap"
MIN_PACKETS = 100_000
BATCH = 2_000
PASSES = 3
KITSUNE_DIR = Path(os.environ.get("KITSUNE_DIR", "/work/kitsune-bench"))
HEADING = "## Packet extractor"

# Runs inside Kitsune's own virtualenv, in its source directory; prints one
# JSON line last. Only Kitsune's public classes are called; the wrapper only
# times netStat.updateGetStats.
KITSUNE_DRIVER = r"""
import json, sys, time
sys.path.insert(0, ".")
clock = time.process_time
import FeatureExtractor
started = clock()
fe = FeatureExtractor.FE(sys.argv[1])
read = clock() - started
inner = fe.nstat.updateGetStats
spent = [0.0]
def timed(*args):
    t = clock()
    out = inner(*args)
    spent[0] += clock() - t
    return out
fe.nstat.updateGetStats = timed
n = 0
loop_started = clock()
while len(fe.get_next_vector()):
    n += 1
loop = clock() - loop_started
print(json.dumps({"packets": n, "features": fe.get_num_features(), "read_s": read,
                  "loop_s": loop, "netstat_s": spent[0]}))
"""


def repeated_capture(source: Path, target: Path, minimum: int = MIN_PACKETS) -> int:
    """Write ``source`` (classic pcap) repeated until ``minimum`` packets; return the count."""
    data = source.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    record = struct.Struct(order + "IIII")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        sec, frac, caplen, wire = record.unpack_from(data, offset)
        frames.append((sec, frac, wire, data[offset + 16 : offset + 16 + caplen]))
        offset += 16 + caplen
    span = frames[-1][0] - frames[0][0] + 1
    copies = -(-minimum // len(frames))
    with target.open("wb") as out:
        out.write(data[:24])
        for copy in range(copies):
            for sec, frac, wire, frame in frames:
                out.write(record.pack(sec + copy * span, frac, len(frame), wire))
                out.write(frame)
    return copies * len(frames)


def median_rate(packets: int, work: Callable[[], object], passes: int = PASSES) -> float:
    """Packets per CPU second of ``work``, median over passes."""
    rates = []
    for _ in range(passes):
        started = time.process_time()
        work()
        rates.append(packets / (time.process_time() - started))
    return statistics.median(rates)


def _slices(batch: FlowBatch) -> list[FlowBatch]:
    return [
        batch.take(np.arange(i, min(i + BATCH, len(batch)))) for i in range(0, len(batch), BATCH)
    ]


def _dpkt_full(path: Path) -> int:
    """The same fields through dpkt's objects (the library the reader was measured against)."""
    import dpkt

    n = 0
    with path.open("rb") as handle:
        for _ts, buf in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            elif isinstance(ip, dpkt.ip6.IP6):
                socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
            else:
                continue
            l4 = ip.data
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                l4.sport, l4.dport, getattr(l4, "flags", None)
            n += 1
    return n


def _dpkt_framing(path: Path) -> int:
    import dpkt

    with path.open("rb") as handle:
        return sum(1 for _ in dpkt.pcap.Reader(handle))


def ours(path: Path, packets: int) -> dict[str, float]:
    """Our reader, extractor and end-to-end rates, and the reader alternatives."""
    batch, _ = read_capture(path)
    slices = _slices(batch)
    vectorizer, _ = fit_packet_vectorizer(batch)

    def extract() -> None:
        context = PacketContext()
        for part in slices:
            context.update(part)

    def end_to_end() -> None:
        rows, _ = read_capture(path)
        vectorizer.context = PacketContext(vectorizer.spec.windows)
        for part in _slices(rows):
            vectorizer(part)

    return {
        "read_packets": median_rate(packets, lambda: sum(1 for _ in read_packets(path))),
        "read_capture": median_rate(packets, lambda: read_capture(path)),
        "dpkt_full_decode": median_rate(packets, lambda: _dpkt_full(path)),
        "dpkt_framing_only": median_rate(packets, lambda: _dpkt_framing(path)),
        "extractor": median_rate(packets, extract),
        "end_to_end": median_rate(packets, end_to_end),
        "vector_width": float(vectorizer.spec.width),
        "statistics": float(len(PacketContext().names)),
    }


def kitsune(path: Path, runs: int) -> dict[str, Any]:
    """Kitsune's feature extractor on the same capture, or why it could not run."""
    python, source = KITSUNE_DIR / ".venv" / "bin" / "python", KITSUNE_DIR / "src"
    if not (python.exists() and (source / "FeatureExtractor.py").exists()):
        return {"error": f"Kitsune not found: need {source}/FeatureExtractor.py and {python}"}
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [str(python), "-c", KITSUNE_DRIVER, str(path)],
            cwd=source,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return {"error": f"Kitsune failed (exit {done.returncode}): {done.stderr[-800:]}"}
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    n = results[0]["packets"]
    return {
        "packets": n,
        "features": results[0]["features"],
        "runs": runs,
        "read": statistics.median(n / r["read_s"] for r in results),
        "extractor": statistics.median(n / r["netstat_s"] for r in results),
        "end_to_end": statistics.median(n / (r["read_s"] + r["loop_s"]) for r in results),
    }


def run(kitsune_runs: int = 1, source: Path = SOURCE) -> dict[str, Any]:
    """Measure everything; return the figures (packets per CPU second)."""
    with tempfile.TemporaryDirectory(prefix="netfraud-bench-") as tmp:
        path = Path(tmp) / "repeated.pcap"
        packets = repeated_capture(source, path)
        figures: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{_cpu()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "capture": f"{source.name} x{packets // 7931} = {packets} packets",
            "packets": packets,
            "ours": ours(path, packets),
            "kitsune": kitsune(path, kitsune_runs) if kitsune_runs else {"error": "not run"},
        }
    theirs = figures["kitsune"]
    if "error" not in theirs:
        mine = figures["ours"]
        figures["ratio"] = {
            "end_to_end": mine["end_to_end"] / theirs["end_to_end"],
            "extractor": mine["extractor"] / theirs["extractor"],
            "read": mine["read_capture"] / theirs["read"],
        }
    return figures


def section(f: dict[str, Any]) -> str:
    """The figures as the "Packet extractor" section of docs/benchmarks.md."""
    o, k = f["ours"], f["kitsune"]
    lines = [
        HEADING,
        "",
        f"`python -m bench.packets`, {f['date']}, {f['machine']}, Python {f['python']}. "
        f"Input: {f['capture']} (the largest Slips capture, repeated with shifted times). "
        "Packets per second of process CPU time, median of 3 passes (Kitsune: "
        f"{k.get('runs', 0)} run(s)); one core.",
        "",
        "| stage | netfraud | Kitsune (`ymirsky/Kitsune-py`, defaults) | ratio |",
        "|---|---:|---:|---:|",
    ]
    r = f.get("ratio", {})
    rows = [
        ("pcap read to fields", o["read_capture"], k.get("read"), r.get("read")),
        ("extractor (damped statistics)", o["extractor"], k.get("extractor"), r.get("extractor")),
        ("pcap to vectors, end to end", o["end_to_end"], k.get("end_to_end"), r.get("end_to_end")),
    ]
    for name, mine, theirs, ratio in rows:
        lines.append(f"| {name} | {mine:,.0f} | {_num(theirs)} | {_ratio(ratio)} |")
    lines += [
        "",
        "Reading, the alternatives measured (same file, same fields):",
        "",
        "| reader | packets/s |",
        "|---|---:|",
        *[f"| {name} | {_num(value)} |" for name, value in _readers(o, k)],
        "",
        f"netfraud computes {o['statistics']:.0f} statistics per packet (host, pair and socket "
        f"keys at 4 time scales) into a {o['vector_width']:.0f}-column model input; Kitsune "
        f"computes {k.get('features', '?')} (MAC-IP, host, host-host jitter and socket keys "
        "at 5 decay rates). Kitsune's end to end is its `FE` class: scapy read plus every "
        "`get_next_vector` call; its extractor figure is the time inside "
        "`netStat.updateGetStats` alone.",
        "",
        "The capture reader is netfraud's own (`detector/tools/pcap.py`: mmap and "
        "precompiled struct formats, no object per layer) rather than dpkt's decode, for "
        "speed, and because dpkt's iterators drop each frame's length on the wire; dpkt "
        "remains the reference the tests compare its output against.",
    ]
    if "error" in k:
        lines += ["", f"Kitsune could not be measured: {k['error']}"]
    return "\n".join(lines) + "\n"


def _readers(o: dict[str, float], k: dict[str, Any]) -> list[tuple[str, float | None]]:
    return [
        ("netfraud `read_packets` (mmap + struct, a tuple per packet)", o["read_packets"]),
        ("netfraud `read_capture` (the same, to a validated batch)", o["read_capture"]),
        ("dpkt 1.9.8 reader + full decode (Ethernet/IP/TCP objects)", o["dpkt_full_decode"]),
        ("dpkt 1.9.8 reader, framing only (no decode)", o["dpkt_framing_only"]),
        ("scapy `rdpcap`, packet objects only (Kitsune's read)", k.get("read")),
    ]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}x"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` under its heading in ``path``, leaving other sections alone."""
    page = path.read_text() if path.exists() else "# Benchmarks\n"
    start = page.find(HEADING + "\n")
    if start < 0:
        page = page.rstrip("\n") + "\n\n" + text
    else:
        end = page.find("\n## ", start + len(HEADING))
        page = page[:start] + text + (page[end + 1 :] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def main() -> int:
    """Run, print, and record the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.packets")
    parser.add_argument("--kitsune-runs", type=int, default=1, help="0 to skip Kitsune")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if not SOURCE.exists():
        print(f"packet benchmark skipped: {SOURCE} not found (the shared Slips captures)")
        return 0
    figures = run(args.kitsune_runs)
    text = section(figures)
    print(text)
    if "error" in figures["kitsune"] and not args.no_write:
        # Without the comparison the section would lose its ratios: keep the last one.
        print(f"Kitsune not measured ({figures['kitsune']['error']}); docs left as they are")
        return 0
    if not args.no_write:
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "packets.json").write_text(json.dumps(figures, indent=1))
        write_section(ROOT / "docs" / "benchmarks.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
