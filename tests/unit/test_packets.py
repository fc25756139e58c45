"""Packets: capture reading, the packet record, damped statistics, packet models."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dpkt
import numpy as np
import pytest
from helpers import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.tools.pcap import (
    CaptureCounts,
    CaptureError,
    Packet,
    read_capture,
    read_packets,
    to_record,
)
from features.formats import detect, get_adapter
from features.formats.packet import packet_batch
from features.packets import (
    DEFAULT_WINDOWS,
    PacketContext,
    PacketVectorizer,
    feature_names,
    fit_packet_vectorizer,
)
from features.records import FlowBatch
from features.spec import SchemaMismatchError, check_inputs, make_vectorizer

# --- real captures ------------------------------------------------------------------------

#: Slips capture -> (frames, IPv4 packets, IPv6 packets), as dpkt reports them.
SLIPS = {
    "test-cc/test-cc-capture-1.pcap": (7931, 7931, 0),
    "test-cc/test-cc-capture-2.pcap": (1084, 1084, 0),
    "test12-icmp-portscan.pcap": (37, 37, 0),
    "test19-malicious-ssh/malicious-ssh-bruteforce.pcap": (1178, 1178, 0),
    "test7-malicious.pcap": (2000, 1908, 61),
    "test8-malicious.pcap": (534, 15, 0),
}


def _slips(name: str) -> Path:
    return shared_path(f"datasets/slips-pcaps/{name}")


def _dpkt_packets(path: Path) -> tuple[int, list[Packet]]:
    """Frames and IP packets of a classic Ethernet pcap, decoded by dpkt."""
    frames, out = 0, []
    with path.open("rb") as handle:
        for ts, buf in dpkt.pcap.Reader(handle):
            frames += 1
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
            elif isinstance(ip, dpkt.ip6.IP6):
                src = socket.inet_ntop(socket.AF_INET6, ip.src)
                dst = socket.inet_ntop(socket.AF_INET6, ip.dst)
            else:
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else None
            flags = l4.flags if isinstance(l4, dpkt.tcp.TCP) else None
            sport, dport = ports or (None, None)
            out.append((ts, src, dst, sport, dport, ip.p, len(buf), flags))
    return frames, out


@pytest.mark.parametrize("name", sorted(SLIPS))
def test_capture_counts_match_dpkt(name: str) -> None:
    """Frames and IPv4/IPv6 packets per Slips capture are those dpkt reports."""
    path = _slips(name)
    counts = CaptureCounts()

    packets = list(read_packets(path, counts))

    frames, ipv4, ipv6 = SLIPS[name]
    dpkt_frames, dpkt_ip = _dpkt_packets(path)
    assert (counts.frames, counts.ipv4, counts.ipv6) == (frames, ipv4, ipv6)
    assert (dpkt_frames, len(dpkt_ip)) == (frames, ipv4 + ipv6)
    assert len(packets) == counts.packets == ipv4 + ipv6
    assert counts.skipped == counts.not_ip == frames - ipv4 - ipv6


@pytest.mark.parametrize("name", sorted(SLIPS))
def test_capture_fields_match_dpkt(name: str) -> None:
    """Every packet's time, addresses, ports, protocol and flags agree with dpkt."""
    path = _slips(name)

    ours = list(read_packets(path))

    theirs = _dpkt_packets(path)[1]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine[0] == pytest.approx(ref[0], abs=1e-6)
        assert (mine[1:6], mine[7]) == (ref[1:6], ref[7])
        assert mine[6] >= ref[6]  # on the wire, never less than what was captured


def test_pcapng_gives_the_same_packets_as_pcap(tmp_path: Path) -> None:
    """The same frames written as pcapng read back as the same packets."""
    source = _slips("test7-malicious.pcap")
    target = tmp_path / "same.pcapng"
    with source.open("rb") as inp, target.open("wb") as out:
        writer = dpkt.pcapng.Writer(out, snaplen=65535)
        for ts, buf in dpkt.pcap.Reader(inp):
            writer.writepkt(buf, ts)

    assert [p[1:] for p in read_packets(target)] == [p[1:] for p in read_packets(source)]


def test_read_capture_gives_valid_packet_rows() -> None:
    """A capture reads as canonical rows: one packet each, its length as bytes sent."""
    batch, counts = read_capture(_slips("test7-malicious.pcap"))

    assert len(batch) == counts.packets == 1969
    assert (batch.num("src_pkts") == 1).all() and (batch.num("dst_bytes") == 0).all()
    assert (batch.num("src_bytes") >= 42).all()
    assert set(np.unique(batch.num("proto"))) <= {1.0, 6.0, 17.0, 58.0, 2.0}


# --- synthetic captures -------------------------------------------------------------------

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = (
    socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
    socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
)


def _ipv4(proto: int = 6, offset: int = 0) -> bytes:
    l4: Any = dpkt.tcp.TCP(sport=40000, dport=443, flags=0x12)
    if proto == 17:
        l4 = dpkt.udp.UDP(sport=5353, dport=53, data=b"q")
    elif proto == 1:
        l4 = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1))
    ip = dpkt.ip.IP(src=A4, dst=B4, p=proto, data=l4)
    ip.offset = offset
    return bytes(ip)


def _ipv6(next_header: int = 17, extension: bytes = b"", transport: bytes = b"") -> bytes:
    body = extension + (transport or bytes(dpkt.udp.UDP(sport=5353, dport=53, data=b"q")))
    head = struct.pack(">IHBB", 6 << 28, len(body), next_header, 64)
    return head + A6 + B6 + body


def _ethernet(payload: bytes, ethertype: int = 0x0800, tags: int = 0) -> bytes:
    vlan = struct.pack(">HH", 0x8100, 7) * tags
    return b"\x02" * 6 + b"\x04" * 6 + vlan + struct.pack(">H", ethertype) + payload


def _sll(payload: bytes, ethertype: int) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, ethertype) + payload


def _sll2(payload: bytes, ethertype: int) -> bytes:
    return struct.pack(">HHIHBB8s", ethertype, 0, 1, 1, 0, 6, b"\x02" * 8) + payload


def _write_pcap(
    path: Path,
    link: int,
    frames: Iterable[bytes],
    order: str = "<",
    nano: bool = False,
    start: float = 1_700_000_000.0,
) -> Path:
    """A classic pcap file, one frame every 10 ms."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)]
    for i, frame in enumerate(frames):
        ts = start + i * 0.01
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        parts.append(struct.pack(order + "IIII", sec, frac, len(frame), len(frame) + 4))
        parts.append(frame)
    path.write_bytes(b"".join(parts))
    return path


LINKS = {
    "ethernet": (1, lambda ip, et: _ethernet(ip, et)),
    "ethernet-vlan": (1, lambda ip, et: _ethernet(ip, et, tags=2)),
    "linux-sll": (113, _sll),
    "linux-sll2": (276, _sll2),
    "raw": (101, lambda ip, et: ip),
    "bsd-null": (0, lambda ip, et: struct.pack("<I", 2 if et == 0x0800 else 24) + ip),
}


@pytest.mark.parametrize("link", sorted(LINKS))
def test_link_types_decode_ipv4_and_ipv6(link: str, tmp_path: Path) -> None:
    """TCP, UDP and ICMP over IPv4, and UDP over IPv6, decode on each link type."""
    number, frame = LINKS[link]
    ips = [(_ipv4(6), 0x0800), (_ipv4(17), 0x0800), (_ipv4(1), 0x0800), (_ipv6(), 0x86DD)]
    path = _write_pcap(tmp_path / "l.pcap", number, [frame(ip, et) for ip, et in ips])
    counts = CaptureCounts()

    packets = list(read_packets(path, counts))

    assert [(*p[1:6], p[7]) for p in packets] == [
        ("10.0.0.1", "10.0.0.2", 40000, 443, 6, 0x12),
        ("10.0.0.1", "10.0.0.2", 5353, 53, 17, None),
        ("10.0.0.1", "10.0.0.2", None, None, 1, None),
        ("2001:db8::1", "2001:db8::2", 5353, 53, 17, None),
    ]
    assert [p[6] for p in packets] == [len(frame(ip, et)) + 4 for ip, et in ips]
    assert (counts.ipv4, counts.ipv6, counts.skipped) == (3, 1, 0)


def test_non_ip_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    """ARP frames and frames of an unknown link type give no record, but are counted."""
    arp = _ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, 0x0806)
    path = _write_pcap(tmp_path / "arp.pcap", 1, [arp, _ethernet(_ipv4()), arp])
    other = _write_pcap(tmp_path / "other.pcap", 147, [_ipv4()])
    counts, unknown = CaptureCounts(), CaptureCounts()

    packets = list(read_packets(path, counts))
    list(read_packets(other, unknown))

    assert len(packets) == 1
    assert (counts.frames, counts.not_ip, counts.skipped) == (3, 2, 2)
    assert (unknown.frames, unknown.unknown_link, unknown.packets) == (1, 1, 0)


def test_truncated_ip_header_is_counted(tmp_path: Path) -> None:
    """An IP frame captured too short to hold its header is skipped as truncated."""
    path = _write_pcap(tmp_path / "t.pcap", 101, [_ipv4()[:12], _ipv6()[:30], _ipv4()])
    counts = CaptureCounts()

    assert len(list(read_packets(path, counts))) == 1
    assert counts.truncated == 2


def test_ipv6_extension_headers_are_skipped(tmp_path: Path) -> None:
    """Hop-by-hop and destination options are walked to the TCP header behind them."""
    tcp = bytes(dpkt.tcp.TCP(sport=1000, dport=22, flags=0x02))
    hop = bytes([60, 0]) + b"\x00" * 6  # next: destination options
    dest = bytes([6, 0]) + b"\x00" * 6  # next: TCP
    path = _write_pcap(tmp_path / "x.pcap", 101, [_ipv6(0, hop + dest, tcp)])

    (packet,) = read_packets(path)

    assert (*packet[3:6], packet[7]) == (1000, 22, 6, 0x02)


def test_later_fragments_have_no_ports(tmp_path: Path) -> None:
    """Only the first fragment of an IPv4 or IPv6 packet carries ports."""
    fragment = bytes([17, 0]) + struct.pack(">HI", 185 << 3, 7)  # offset 1480 bytes
    later6 = _ipv6(44, fragment, b"\x00" * 8)
    path = _write_pcap(tmp_path / "f.pcap", 101, [_ipv4(17), _ipv4(17, offset=1480), later6])

    packets = list(read_packets(path))

    assert [(p[3], p[5]) for p in packets] == [(5353, 17), (None, 17), (None, 17)]


@pytest.mark.parametrize(("order", "nano"), [("<", False), (">", False), ("<", True), (">", True)])
def test_timestamps_in_every_pcap_flavour(order: str, nano: bool, tmp_path: Path) -> None:
    """Micro- and nanosecond files, little- and big-endian, give the same times."""
    path = _write_pcap(tmp_path / "ts.pcap", 101, [_ipv4()] * 3, order, nano, 1_700_000_000.5)

    times = [p[0] for p in read_packets(path)]

    assert times == pytest.approx([1_700_000_000.5, 1_700_000_000.51, 1_700_000_000.52], abs=1e-6)


def test_a_file_that_is_not_a_capture_is_refused(tmp_path: Path) -> None:
    """Neither pcap nor pcapng: a clear error naming the file."""
    path = tmp_path / "notes.pcap"
    path.write_text('{"ts": 1}\n')

    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        list(read_packets(path))


def test_a_capture_cut_short_is_refused(tmp_path: Path) -> None:
    """A last frame shorter than its header says is an error, not a silent stop."""
    path = _write_pcap(tmp_path / "cut.pcap", 101, [_ipv4(), _ipv4()])
    path.write_bytes(path.read_bytes()[:-5])

    with pytest.raises(CaptureError, match="cut short"):
        list(read_packets(path))


def test_replay_records_are_keyed_by_source_and_paced_by_speed(tmp_path: Path) -> None:
    """Keys are source addresses; --speed 0.5 stretches 20 ms of capture to 40 ms or more."""
    from detector.tools.pcap import packet_records

    path = _write_pcap(tmp_path / "p.pcap", 101, [_ipv4(), _ipv4(17), _ipv6()])
    started = time.monotonic()

    records = list(packet_records(path, speed=0.5))

    assert time.monotonic() - started >= 0.035
    assert [key for key, _ in records] == [b"10.0.0.1", b"10.0.0.1", b"2001:db8::1"]
    assert json.loads(records[2][1])["proto"] == 17


# --- the packet record --------------------------------------------------------------------

RECORD = {
    "ts": 1_767_225_600.25,
    "src_ip": "10.0.0.5",
    "dst_ip": "93.184.216.34",
    "src_port": 51514,
    "dst_port": 443,
    "proto": "tcp",
    "length": 1514,
    "tcp_flags": 24,
}


def test_packet_records_map_onto_flows() -> None:
    """length becomes bytes sent, one packet sent, nothing received, no duration."""
    icmp = {**RECORD, "proto": 1, "src_port": None, "dst_port": None, "tcp_flags": None}

    decoded = get_adapter("packet").decode([json.dumps(RECORD).encode(), json.dumps(icmp).encode()])

    b = decoded.batch
    assert not decoded.rejects
    assert b.num("src_bytes").tolist() == [1514, 1514]
    assert b.num("src_pkts").tolist() == [1, 1]
    assert b.num("dst_bytes").tolist() == b.num("duration").tolist() == [0, 0]
    assert b.num("proto").tolist() == [6, 1]
    assert np.isnan(b.num("dst_port")[1]) and np.isnan(b.num("tcp_flags")[1])


def test_bad_packet_records_are_rejected_alone() -> None:
    """A missing length, a negative length and broken JSON cost one reject each."""
    good = json.dumps(RECORD).encode()
    no_length = json.dumps({k: v for k, v in RECORD.items() if k != "length"}).encode()
    negative = json.dumps({**RECORD, "length": -1}).encode()

    decoded = get_adapter("packet").decode([good, no_length, b"{broken", negative, good])

    assert len(decoded.batch) == 2
    reasons = {r.position: r.reason for r in decoded.rejects}
    assert "length" in reasons[1] and "JSON" in reasons[2] and "negative" in reasons[3]


def test_detect_tells_packets_from_flows() -> None:
    """A packet record is detected as ``packet``, a flow record still as ``netfraud``."""
    flow = {k: v for k, v in RECORD.items() if k != "length"}

    packet = detect(json.dumps(RECORD).encode())
    other = detect(json.dumps(flow).encode())

    assert packet is not None and packet.name == "packet"
    assert other is not None and other.name == "netfraud"


def test_capture_records_round_trip_through_the_adapter() -> None:
    """Records published for a capture decode to exactly the rows read from it."""
    path = _slips("test7-malicious.pcap")
    direct, _ = read_capture(path)

    decoded = get_adapter("packet").decode([to_record(p) for p in read_packets(path)])

    assert not decoded.rejects
    for name in ("ts", "src_port", "dst_port", "proto", "src_bytes", "tcp_flags"):
        np.testing.assert_array_equal(decoded.batch.num(name), direct.num(name))
    assert decoded.batch.text("src_ip").tolist() == direct.text("src_ip").tolist()


# --- the damped statistics ----------------------------------------------------------------

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"]


@st.composite
def packet_streams(draw: Any, max_size: int = 60) -> FlowBatch:
    """Packets in time order among a few hosts, ports and protocols."""
    n = draw(st.integers(0, max_size))
    gaps = draw(st.lists(st.floats(0.0, 30.0), min_size=n, max_size=n))
    values: dict[str, Any] = {
        "ts": (1_700_000_000.0 + np.cumsum(gaps)).tolist() if n else [],
        "src_ip": draw(st.lists(st.sampled_from(HOSTS), min_size=n, max_size=n)),
        "dst_ip": draw(st.lists(st.sampled_from(HOSTS), min_size=n, max_size=n)),
        "proto": draw(st.lists(st.sampled_from([1, 6, 17]), min_size=n, max_size=n)),
        "length": draw(st.lists(st.integers(40, 9000), min_size=n, max_size=n)),
        "tcp_flags": [None] * n,
    }
    ports = st.one_of(st.none(), st.sampled_from([22, 53, 443, 50000]))
    values["src_port"] = draw(st.lists(ports, min_size=n, max_size=n))
    values["dst_port"] = draw(st.lists(ports, min_size=n, max_size=n))
    return packet_batch(values)


def _matrix(columns: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.stack([columns[n] for n in names], axis=1) if names else np.zeros((0, 0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_streams())
def test_every_packet_gets_a_finite_vector_of_fixed_length(batch: FlowBatch) -> None:
    """One row per packet, always the same columns, every value finite."""
    context = PacketContext()

    columns, warming = context.update(batch)

    assert list(columns) == feature_names(DEFAULT_WINDOWS) and len(columns) == 60
    assert all(c.shape == (len(batch),) for c in columns.values())
    assert all(np.isfinite(c).all() for c in columns.values())
    assert warming.shape == (len(batch),)


@settings(max_examples=40, deadline=None)
@given(packet_streams(), st.integers(0, 60))
def test_same_packets_give_same_vectors_however_batched(batch: FlowBatch, cut: int) -> None:
    """A fresh context gives the same output again, whole or split into two batches."""
    names = feature_names()
    whole = _matrix(PacketContext().update(batch)[0], names)
    again = _matrix(PacketContext().update(batch)[0], names)
    split = PacketContext()
    cut = min(cut, len(batch))
    first = split.update(batch.take(np.arange(cut)))[0]
    second = split.update(batch.take(np.arange(cut, len(batch))))[0]

    np.testing.assert_array_equal(whole, again)
    np.testing.assert_array_equal(
        whole, np.concatenate([_matrix(first, names), _matrix(second, names)])
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(packet_streams(max_size=30), min_size=1, max_size=5), st.integers(1, 4))
def test_eviction_bounds_the_keys_of_each_kind(batches: list[FlowBatch], limit: int) -> None:
    """After every batch no kind of key holds more than ``max_keys`` entries."""
    context = PacketContext(max_keys=limit)
    for batch in batches:
        context.update(batch)
        assert max(len(context.hosts), len(context.pairs), len(context.sockets)) <= limit


def test_idle_keys_are_forgotten() -> None:
    """A host silent for longer than the idle timeout is dropped with its pairs and sockets."""
    context = PacketContext(idle_timeout=100.0)
    context.update(_stream([("10.0.0.1", "10.0.0.2", 0.0)]))

    context.update(_stream([("10.0.0.3", "10.0.0.2", 500.0)]))

    assert list(context.hosts) == ["10.0.0.3"] and len(context.sockets) == 1
    assert context.evicted == 3


def _stream(
    rows: list[tuple[str, str, float]], size: float = 100.0, sport: int = 40000
) -> FlowBatch:
    n = len(rows)
    return packet_batch(
        {
            "ts": [1_700_000_000.0 + t for _, _, t in rows],
            "src_ip": [s for s, _, _ in rows],
            "dst_ip": [d for _, d, _ in rows],
            "src_port": [sport if s < d else 443 for s, d, _ in rows],
            "dst_port": [443 if s < d else sport for s, d, _ in rows],
            "proto": [6] * n,
            "length": [size if s < d else 10 * size for s, d, _ in rows],
            "tcp_flags": [16] * n,
        }
    )


def test_a_steady_stream_reads_as_its_rate_size_and_period() -> None:
    """10 packets/s of 100 bytes for 10 min: rate 10/s, mean 100, no spread, gap 0.1 s."""
    rows = [("10.0.0.1", "10.0.0.2", i / 10) for i in range(6_000)]

    columns, warming = PacketContext().update(_stream(rows))

    last = {name: float(v[-1]) for name, v in columns.items()}
    assert last["host_rate_60s"] == pytest.approx(10.0, rel=0.01)
    assert last["host_size_mean_1s"] == pytest.approx(100.0)
    assert last["host_size_std_10s"] == pytest.approx(0.0, abs=1e-3)
    assert last["sock_gap_mean_10s"] == pytest.approx(0.1, rel=1e-6)
    assert last["sock_gap_std_10s"] == pytest.approx(0.0, abs=1e-6)
    assert last["pair_balance_1s"] == pytest.approx(1.0)
    assert warming[0] and not warming[-1]


def test_both_directions_meet_in_the_pair_statistics() -> None:
    """Requests of 100 and answers of 1000 bytes: magnitude and radius of both, balanced."""
    rows = []
    for i in range(400):
        rows += [("10.0.0.1", "10.0.0.2", i * 0.5), ("10.0.0.2", "10.0.0.1", i * 0.5 + 0.01)]

    columns, _ = PacketContext().update(_stream(rows))

    assert columns["pair_magnitude_60s"][-1] == pytest.approx(np.hypot(100, 1000), rel=1e-3)
    assert columns["pair_radius_60s"][-1] == pytest.approx(0.0, abs=1e-3)
    assert abs(columns["pair_balance_60s"][-1]) < 0.05
    assert columns["pair_size_mean_60s"][-1] == pytest.approx(1000.0)
    assert columns["host_size_mean_60s"][-1] == pytest.approx(1000.0)


def test_forget_drops_all_state() -> None:
    """After forget() the context is empty."""
    context = PacketContext()
    context.update(_stream([("10.0.0.1", "10.0.0.2", 0.0)]))

    context.forget()

    assert len(context) == 0


# --- packet models ------------------------------------------------------------------------


def _packets(n: int, seed: int) -> FlowBatch:
    """Synthetic client-server packets: a few clients, two servers, TCP and UDP."""
    rng = np.random.default_rng(seed)
    clients = [f"10.0.1.{i}" for i in range(8)]
    servers = ["10.0.0.80", "10.0.0.53"]
    c = rng.integers(0, len(clients), n)
    s = rng.integers(0, 2, n)
    answer = rng.random(n) < 0.5
    src = np.where(answer, np.array(servers)[s], np.array(clients)[c]).astype(object)
    dst = np.where(answer, np.array(clients)[c], np.array(servers)[s]).astype(object)
    client_port = 40000 + c
    server_port = np.where(s == 0, 443, 53)
    return packet_batch(
        {
            "ts": 1_700_000_000.0 + np.cumsum(rng.exponential(0.05, n)),
            "src_ip": src,
            "dst_ip": dst,
            "src_port": np.where(answer, server_port, client_port).astype(float),
            "dst_port": np.where(answer, client_port, server_port).astype(float),
            "proto": np.where(s == 0, 6, 17).astype(float),
            "length": np.where(answer, rng.integers(600, 1500, n), rng.integers(60, 200, n)),
            "tcp_flags": np.where(s == 0, 24, np.nan),
        }
    )


def test_fit_packet_vectorizer_makes_a_packet_spec() -> None:
    """The fitted spec is of record kind ``packet`` and gives finite vectors."""
    batch = _packets(2_000, 1)

    vectorizer, vectors = fit_packet_vectorizer(batch)

    assert vectorizer.spec.record == "packet"
    assert vectorizer.spec.windows == DEFAULT_WINDOWS
    assert vectors.matrix.shape == (2_000, vectorizer.spec.width)
    assert np.isfinite(vectors.matrix).all()
    check_inputs(vectorizer.spec)  # servable
    assert isinstance(make_vectorizer(vectorizer.spec), PacketVectorizer)


def test_a_packet_spec_needing_unknown_fields_is_refused() -> None:
    """check_inputs names the field a packet spec needs and the packet path lacks."""
    from features.spec import Field, FittedSpec

    raw = {"nonsense": np.arange(10.0)}
    spec = FittedSpec.fit([Field("nonsense", "numeric")], raw, DEFAULT_WINDOWS, "packet")

    with pytest.raises(SchemaMismatchError, match="nonsense"):
        check_inputs(spec)


@pytest.fixture(scope="module")
def packet_bundle() -> Any:
    """A small packet model trained on synthetic packets."""
    from detector.model.autoencoder import AutoencoderConfig
    from detector.model.fit import TrainOptions, train_bundle

    small = AutoencoderConfig(hidden=(32,), bottleneck=6, max_epochs=3, seed=5)
    return train_bundle(
        _packets(3_000, 2),
        None,
        small,
        TrainOptions(device="cpu", seed=5),
        metadata={"format": "packet"},
    )


def test_a_packet_bundle_round_trips_with_its_record_kind(
    packet_bundle: Any, tmp_path: Path
) -> None:
    """Saved and loaded, the bundle is still a packet model and scores identically."""
    from detector.model.bundle import Bundle

    batch = _packets(500, 3)
    before = packet_bundle.scorer().score(make_vectorizer(packet_bundle.spec)(batch).matrix)

    loaded = Bundle.load(packet_bundle.save(tmp_path / "b"))

    after = loaded.scorer().score(make_vectorizer(loaded.spec)(batch).matrix)
    document = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert (
        loaded.spec.record == document["spec"]["record"] == document["schema"]["record"] == "packet"
    )
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-6)


def test_a_flow_bundle_from_before_record_kinds_still_loads(
    packet_bundle: Any, tmp_path: Path
) -> None:
    """A bundle whose spec names no record kind loads as a flow model, hash intact."""
    import hashlib

    from detector.model.bundle import Bundle

    spec = _flow_spec()
    old = Bundle(
        "v-old", spec, packet_bundle.model, packet_bundle.error_scale, packet_bundle.calibration
    )
    directory = old.save(tmp_path / "old")
    document = json.loads((directory / "bundle.json").read_text())
    del document["spec"]["record"]
    document["schema"].pop("record", None)
    (directory / "bundle.json").write_text(json.dumps(document))
    sums = "".join(
        f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("bundle.json", "weights.pt")
    )
    (directory / "SHA256SUMS").write_text(sums)

    loaded = Bundle.load(directory)

    assert loaded.spec.record == "flow" and loaded.spec.schema_hash == spec.schema_hash


def test_the_loop_picks_the_vectorizer_of_the_record_kind(packet_bundle: Any) -> None:
    """Detector._vectorizer gives packet models a packet vectorizer, carrying its state."""
    from detector.settings import Settings
    from detector.stream.loop import Detector
    from features.spec import FlowVectorizer

    stub = SimpleNamespace(settings=Settings())
    active = SimpleNamespace(bundle=packet_bundle)
    first = Detector._vectorizer(stub, active, None)  # type: ignore[arg-type]
    first(_packets(100, 4))

    swapped = Detector._vectorizer(stub, active, first.context)  # type: ignore[arg-type]
    flow_active = SimpleNamespace(bundle=SimpleNamespace(spec=_flow_spec()))
    flows = Detector._vectorizer(stub, flow_active, first.context)  # type: ignore[arg-type]

    assert isinstance(first, PacketVectorizer) and swapped.context is first.context
    assert isinstance(flows, FlowVectorizer)


def _flow_spec() -> Any:
    from features.spec import fit_vectorizer

    return fit_vectorizer(_flows_batch())[0].spec


def _flows_batch() -> FlowBatch:
    import pandas as pd

    from detector.tools.generate import generate
    from features.formats.netfraud import frame_to_batch

    return frame_to_batch(pd.DataFrame(generate(300, seed=1, attacks=False, hours=1)))


# --- the command line ---------------------------------------------------------------------


def _trained_record(registry: Path) -> str:
    from detector.model.registry import Registry

    registry_ = Registry(registry)
    version = registry_.pointer().version
    assert version is not None
    return registry_.load(version).spec.record


@pytest.mark.slow
def test_train_takes_packet_json_lines_and_captures(tmp_path: Path) -> None:
    """``netfraud train`` makes packet models from packet records and from a capture."""
    from detector.cli import main

    capture = _slips("test-cc/test-cc-capture-2.pcap")
    records = tmp_path / "packets.jsonl"
    records.write_bytes(b"".join(to_record(p) + b"\n" for p in read_packets(capture)))
    common = ["--epochs", "2", "--device", "cpu", "--log-format", "json"]

    from_records = main(
        [
            "train",
            "--format",
            "packet",
            "--data",
            str(records),
            "--model-dir",
            str(tmp_path / "a"),
            *common,
        ]
    )
    from_capture = main(
        ["train", "--data", str(capture), "--model-dir", str(tmp_path / "b"), *common]
    )

    assert from_records == from_capture == 0
    assert _trained_record(tmp_path / "a") == _trained_record(tmp_path / "b") == "packet"


def test_a_capture_is_refused_for_a_flow_format(tmp_path: Path) -> None:
    """Training a flow format on a capture fails with a message naming --format packet."""
    from detector.tools.pcap import capture_rows

    with pytest.raises(ValueError, match="--format packet"):
        capture_rows(_slips("test12-icmp-portscan.pcap"), "netfraud")


def test_replay_needs_a_file_or_a_capture(capsys: pytest.CaptureFixture[str]) -> None:
    """``netfraud replay`` with neither FILE nor --pcap is an error, before any broker."""
    from detector.cli import main

    assert main(["replay", "--topic", "t"]) == 1
    assert "--pcap" in capsys.readouterr().err
