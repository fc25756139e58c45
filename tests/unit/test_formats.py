"""Format adapters: real samples, bad input, detection and decoding properties.

Tests that read ``../shared/datasets`` (see :func:`shared_dataset`) are
skipped, with the reason, when that folder is absent, except under
``CI=true``, where its absence is a failure. The small samples under
``tests/unit/samples/`` were written for these tests from each tool's
documented output format.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.formats import Decoded, detect, get_adapter
from features.formats.cicflowmeter import JAVA_COLUMNS, CicFlowMeter, normalise
from features.formats.datasets import (
    NSL_KDD_CATEGORICAL,
    NSL_KDD_NUMERIC,
    UNSW_NB15_CATEGORICAL,
    UNSW_NB15_NUMERIC,
    load_nsl_kdd,
    load_table,
    load_unsw_nb15,
)
from features.formats.zeek import CONN_FIELDS, TsvLayout, ZeekConn
from features.formats.zeek import load_table as load_zeek_table
from features.records import FAILED_STATES, FLOW_FIELDS, FlowBatch

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
SAMPLES = Path(__file__).resolve().parent / "samples"
IN_CI = os.environ.get("CI") == "true"

MY_FORMATS = ("zeek", "suricata", "goflow2", "cicflowmeter", "nprobe", "nsl-kdd", "unsw-nb15")
FUTURE = 4102444800  # 2100-01-01T00:00:00Z


def shared_dataset(relative: str) -> Path:
    """Path of a file or folder under ``../shared/datasets``.

    Skips the calling test when it is missing, or fails it under ``CI=true``
    (CI always provides the shared data sets).
    """
    path = SHARED / relative
    if not path.exists():
        message = f"shared data set {path} is missing (expected beside the checkout)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def lines_of(path: Path) -> list[bytes]:
    """The non-empty lines of a file."""
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def column_values(batch: FlowBatch, row: int) -> dict[str, Any]:
    """One row's canonical values, with ``NaN`` turned into ``None``."""
    out: dict[str, Any] = {}
    for name in FLOW_FIELDS:
        value = batch.columns[name][row]
        out[name] = None if isinstance(value, float) and np.isnan(value) else value
    return out


def assert_same_batches(
    left: FlowBatch, right: FlowBatch, skip: Sequence[str] = (), positions: bool = True
) -> None:
    """Same rows, extras and (unless told) positions; ``NaN`` equals ``NaN``."""
    assert len(left) == len(right)
    for name in FLOW_FIELDS:
        if name in skip:
            continue
        a, b = left.columns[name], right.columns[name]
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert list(a) == list(b), name
    if positions:
        np.testing.assert_array_equal(left.position, right.position)
    assert left.extras.keys() == right.extras.keys()
    for name in left.extras:
        assert list(left.extras[name]) == list(right.extras[name]), name


# --- Zeek: the Stratosphere logs -----------------------------------------------

STRATOSPHERE = "stratosphere-zeek"
ZEEK_ROWS = {
    "001-zeek-scenario-malicious.conn.log.labeled": 992,
    "008-zeek-mixed.conn.log.labeled": 5663,
    "010-zeek-mixed.conn.log.labeled": 5347,
    "011-zeek-mixed.conn.log.labeled": 9048,
    "012-zeek-mixed.conn.log.labeled": 4740,
}


@pytest.mark.parametrize("name", sorted(ZEEK_ROWS))
def test_zeek_read_file_reads_every_stratosphere_row(name: str) -> None:
    """read_file turns each data line of a labelled log into one flow."""
    batch = get_adapter("zeek").read_file(shared_dataset(f"{STRATOSPHERE}/{name}"))

    assert len(batch) == ZEEK_ROWS[name]
    assert set(batch.extras) == {"label", "detailed_label"}
    assert set(batch.extras["label"]) <= {"Benign", "Malicious", "Background"}
    assert set(np.unique(batch.num("proto"))) <= {1.0, 6.0, 17.0}
    assert np.isfinite(batch.num("ts")).all()
    assert not np.isnan(batch.num("src_bytes")).any()  # orig_ip_bytes is always set


def test_zeek_decode_line_by_line_equals_read_file() -> None:
    """Header and data lines sent as messages give what read_file gives."""
    path = shared_dataset(f"{STRATOSPHERE}/008-zeek-mixed.conn.log.labeled")
    lines = lines_of(path)
    adapter = get_adapter("zeek")

    parts = []
    for start in range(0, len(lines), 700):
        part = adapter.decode(lines[start : start + 700])
        assert not part.rejects
        part.batch.position += start
        parts.append(part)

    batch = FlowBatch.concat([p.batch for p in parts])
    assert sum(len(p.skipped) for p in parts) == 8  # the '#' header lines
    assert_same_batches(batch, adapter.read_file(path))


def test_zeek_single_messages_decode_alone() -> None:
    """One message per decode call works once the header has been seen."""
    lines = lines_of(shared_dataset(f"{STRATOSPHERE}/010-zeek-mixed.conn.log.labeled"))
    adapter = get_adapter("zeek")

    results = [adapter.decode([line]) for line in lines[:60]]

    assert [len(r.skipped) for r in results[:8]] == [1] * 8
    assert all(len(r.batch) == 1 and not r.rejects for r in results[8:])


def zeek_json_lines(lines: Sequence[bytes], iso: bool = False) -> list[bytes]:
    """The same log as Zeek's JSON writer would give it (unset fields left out)."""
    text = [line.decode() for line in lines]
    fields = next(t for t in text if t.startswith("#fields")).split("\t")[1:]
    types = next(t for t in text if t.startswith("#types")).split("\t")[1:]
    out = []
    for line in text:
        if line.startswith("#"):
            continue
        record: dict[str, Any] = {}
        for field, kind, value in zip(fields, types, line.split("\t"), strict=True):
            if value in ("-", "(empty)"):
                continue
            if kind in ("count", "port"):
                record[field] = int(value)
            elif kind in ("time", "interval"):
                record[field] = float(value)
            elif kind == "bool":
                record[field] = value == "T"
            else:
                record[field] = value
        if iso:
            stamp = datetime.fromtimestamp(record["ts"], UTC).isoformat()
            record["ts"] = stamp.replace("+00:00", "Z")
        out.append(json.dumps(record).encode())
    return out


def test_zeek_json_decodes_like_the_tab_separated_log() -> None:
    """JSON built from the same rows gives the same flows and labels."""
    path = shared_dataset(f"{STRATOSPHERE}/011-zeek-mixed.conn.log.labeled")
    tsv = get_adapter("zeek").read_file(path)

    decoded = get_adapter("zeek").decode(zeek_json_lines(lines_of(path)))

    assert not decoded.rejects
    assert_same_batches(decoded.batch, tsv, positions=False)  # no header lines in JSON


def test_zeek_json_accepts_iso8601_timestamps() -> None:
    """``JSON::TS_ISO8601`` timestamps decode to the same epoch seconds."""
    path = shared_dataset(f"{STRATOSPHERE}/012-zeek-mixed.conn.log.labeled")
    lines = lines_of(path)[:300]
    tsv = get_adapter("zeek").decode(lines).batch

    decoded = get_adapter("zeek").decode(zeek_json_lines(lines, iso=True))

    assert not decoded.rejects
    np.testing.assert_allclose(decoded.batch.num("ts"), tsv.num("ts"), rtol=0, atol=1e-6)


def test_zeek_load_table_drops_background_and_labels_attacks() -> None:
    """The folder loads as one table of benign and malicious rows."""
    table = load_zeek_table(shared_dataset(STRATOSPHERE))

    assert len(table) == 8901 + 14797  # Benign + Malicious; Background dropped
    assert int(table.label.sum()) == 14797
    assert set(table.attack_class[table.label]) == {"External-Attack-to-Device", "CC"}
    assert list(table.frame.columns) == [*table.numeric_columns, *table.categorical_columns]
    assert all(table.frame[c].dtype == np.float64 for c in table.numeric_columns)
    assert not table.frame[list(table.categorical_columns)].isna().any().any()


def test_zeek_load_table_reads_one_file() -> None:
    """A single labelled log loads too; unset numbers stay NaN."""
    path = shared_dataset(f"{STRATOSPHERE}/001-zeek-scenario-malicious.conn.log.labeled")

    table = load_zeek_table(path)

    assert len(table) == 244 + 9  # Malicious + Benign; 739 Background rows dropped
    assert int(table.label.sum()) == 244
    assert table.frame["duration"].isna().any()


# --- Zeek: format details without the shared data ------------------------------

ZEEK_LINE = (
    "1709633640.123456\tCk2Fq41XfWqLR0Adv3\t10.1.2.3\t51514\t93.184.216.34\t443\ttcp"
    "\tssl\t0.820000\t812\t5230\tSF\tT\tF\t0\tShADadFf\t9\t1184\t8\t5562\t(empty)"
)


def zeek_line(**changes: str) -> bytes:
    """:data:`ZEEK_LINE` with some fields replaced (``id_orig_h`` for ``id.orig_h``)."""
    fields = dict(zip(CONN_FIELDS, ZEEK_LINE.split("\t"), strict=True))
    for key, value in changes.items():
        fields[key.replace("id_", "id.")] = value
    return "\t".join(fields.values()).encode()


def test_zeek_maps_a_line_to_canonical_fields() -> None:
    """Addresses, IP-level bytes and flags from history land where documented."""
    decoded = get_adapter("zeek").decode([zeek_line()])

    row = column_values(decoded.batch, 0)
    assert row["src_ip"] == "10.1.2.3" and row["dst_port"] == 443.0
    assert row["src_bytes"] == 1184.0 and row["dst_bytes"] == 5562.0
    assert row["src_pkts"] == 9.0 and row["proto"] == 6.0 and row["service"] == "ssl"
    assert row["tcp_flags"] == 2 | 16 | 8 | 1  # S, h/A, D/d, F/f


@pytest.mark.parametrize(
    ("history", "proto", "flags"),
    [("S", "tcp", 2.0), ("ShR", "tcp", 22.0), ("Dd", "udp", None), ("-", "tcp", None)],
)
def test_zeek_history_letters_give_tcp_flags(history: str, proto: str, flags: float | None) -> None:
    """History letters map to flags for TCP only; unset history gives none."""
    decoded = get_adapter("zeek").decode([zeek_line(history=history, proto=proto)])

    assert column_values(decoded.batch, 0)["tcp_flags"] == flags


def test_zeek_payload_bytes_stand_in_for_unset_ip_bytes() -> None:
    """``orig_bytes`` is used where ``orig_ip_bytes`` is unset."""
    decoded = get_adapter("zeek").decode([zeek_line(orig_ip_bytes="-")])

    assert column_values(decoded.batch, 0)["src_bytes"] == 812.0


def test_zeek_header_message_changes_the_column_order() -> None:
    """A '#fields' message is skipped and sets the order of later lines."""
    order = list(reversed(CONN_FIELDS))
    header = ("#fields\t" + "\t".join(order)).encode()
    values = dict(zip(CONN_FIELDS, ZEEK_LINE.split("\t"), strict=True))
    line = "\t".join(values[f] for f in order).encode()
    adapter = get_adapter("zeek")

    decoded = adapter.decode([zeek_line(), header, line])
    later = adapter.decode([line])

    assert decoded.skipped == [1] and not decoded.rejects
    assert_same_batches(decoded.batch.take(np.array([1])), later.batch, positions=False)


def test_zeek_line_of_another_width_asks_for_the_header() -> None:
    """A line with extra columns is rejected with advice to send the header."""
    decoded = get_adapter("zeek").decode([zeek_line() + b"\tBenign\t(empty)"])

    assert decoded.rejects[0].reason.startswith("expected 21 tab-separated fields")
    assert "'#fields' header" in decoded.rejects[0].reason


def test_zeek_mixed_json_and_tsv_keep_input_order() -> None:
    """A batch mixing both encodings comes out in input order."""
    record = json.dumps(
        {"ts": 1709633641.5, "id.orig_h": "10.0.0.9", "id.resp_h": "10.0.0.1", "proto": "udp"}
    ).encode()

    decoded = get_adapter("zeek").decode([zeek_line(), record, zeek_line(id_orig_p="9")])

    assert list(decoded.batch.position) == [0, 1, 2]
    assert list(decoded.batch.text("src_ip")) == ["10.1.2.3", "10.0.0.9", "10.1.2.3"]


# --- NSL-KDD and UNSW-NB15 --------------------------------------------------------

#: Rows and ``normal`` rows of each NSL-KDD file (as in the data sets' README).
NSL = {
    "KDDTrain+_20Percent.txt": (25192, 13449),
    "KDDTest+.txt": (22544, 9711),
    "KDDTest-21.txt": (11850, 2152),
}


@pytest.mark.parametrize("name", sorted(NSL))
def test_nsl_kdd_load_table_shapes_and_labels(name: str) -> None:
    """41 features (38 numeric, 3 categorical) and the documented row counts."""
    rows, normal = NSL[name]

    table = load_nsl_kdd(shared_dataset(f"nsl-kdd/{name}"))

    assert table.frame.shape == (rows, 41)
    assert table.numeric_columns == NSL_KDD_NUMERIC and len(NSL_KDD_NUMERIC) == 38
    assert table.categorical_columns == NSL_KDD_CATEGORICAL
    assert int((~table.label).sum()) == normal
    assert set(table.attack_class[~table.label]) == {"normal"}


def test_nsl_kdd_read_file_gives_placeholder_flows() -> None:
    """Rows become flows with row-order timestamps and 0.0.0.0 addresses."""
    path = shared_dataset("nsl-kdd/KDDTrain+_20Percent.txt")

    batch = get_adapter("nsl-kdd").read_file(path)

    assert len(batch) == 25192
    np.testing.assert_array_equal(batch.num("ts"), np.arange(25192.0))
    assert set(batch.text("src_ip")) == {"0.0.0.0"}
    assert int((batch.extras["label"] == "attack").sum()) == 25192 - 13449
    assert set(batch.text("conn_state")) <= FAILED_STATES | {"SF", "S1", "S2", "S3"}


def test_nsl_kdd_decode_counts_time_across_batches() -> None:
    """decode keeps the row-order clock running from batch to batch."""
    lines = lines_of(shared_dataset("nsl-kdd/KDDTest+.txt"))[:10]
    adapter = get_adapter("nsl-kdd")

    first, second = adapter.decode(lines[:4]), adapter.decode(lines[4:])

    assert list(first.batch.num("ts")) == [0.0, 1.0, 2.0, 3.0]
    assert list(second.batch.num("ts")) == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def test_unsw_nb15_load_table_shapes_and_labels() -> None:
    """The zipped partition: 82,332 rows, 45,332 attacks in nine categories."""
    table = load_table(shared_dataset("unsw-nb15/UNSW_NB15_training-set.csv.zip"))

    assert table.frame.shape == (82332, 42)
    assert table.numeric_columns == UNSW_NB15_NUMERIC and len(UNSW_NB15_NUMERIC) == 39
    assert table.categorical_columns == UNSW_NB15_CATEGORICAL
    assert int(table.label.sum()) == 45332
    assert set(table.attack_class[~table.label]) == {"Normal"}
    assert len(set(table.attack_class[table.label])) == 9


def test_unsw_nb15_read_file_gives_placeholder_flows() -> None:
    """Every row becomes a flow; Argus states map to Zeek's where clear."""
    path = shared_dataset("unsw-nb15/UNSW_NB15_training-set.csv.zip")

    batch = get_adapter("unsw-nb15").read_file(path)

    assert len(batch) == len(load_unsw_nb15(path)) == 82332
    assert np.isfinite(batch.num("proto")).all()
    assert set(batch.text("conn_state")) <= {"SF", "S0", "S1", None}
    assert int((batch.extras["label"] == "attack").sum()) == 45332


def test_unsw_nb15_decode_lines_match_read_file() -> None:
    """The first rows, as CSV lines after their header, match read_file."""
    path = shared_dataset("unsw-nb15/UNSW_NB15_training-set.csv.zip")
    with zipfile.ZipFile(path) as archive:
        text = archive.read("UNSW_NB15_training-set.csv").decode("utf-8-sig")
    lines = [line.encode() for line in text.splitlines()[:501]]

    decoded = get_adapter("unsw-nb15").decode(lines)

    assert decoded.skipped == [0] and not decoded.rejects
    expected = get_adapter("unsw-nb15").read_file(path).take(np.arange(500))
    expected.position = expected.position + 1
    assert_same_batches(decoded.batch, expected)


# --- Suricata, goflow2, nProbe, CICFlowMeter samples -------------------------------


def test_suricata_flow_events_become_flows_and_others_are_skipped() -> None:
    """Only flow events are decoded; alert, dns and stats are skipped."""
    decoded = get_adapter("suricata").read_file(SAMPLES / "suricata-eve.jsonl")
    full = get_adapter("suricata").decode(lines_of(SAMPLES / "suricata-eve.jsonl"))

    assert len(decoded) == 7
    assert full.skipped == [1, 3, 7] and not full.rejects
    assert list(decoded.text("conn_state")) == ["SF", "S0", "SF", "OTH", "REJ", "RSTO", "OTH"]
    assert list(decoded.text("service")) == ["tls", None, "dns", None, None, "http", None]
    first = column_values(decoded, 0)
    assert first["ts"] == pytest.approx(1709633641.002113)
    assert first["duration"] == pytest.approx(2.549747, abs=1e-6)
    assert (first["src_bytes"], first["dst_pkts"], first["tcp_flags"]) == (1873, 18, 0x1B)
    assert list(decoded.num("proto")) == [6, 6, 17, 1, 6, 6, 58]


def test_suricata_event_that_fails_but_is_not_a_flow_is_skipped() -> None:
    """A non-flow event with unexpected field types is skipped, not rejected."""
    odd = b'{"timestamp":"2024-03-05T10:00:00+0000","event_type":"anomaly","src_port":"x"}'
    flow = lines_of(SAMPLES / "suricata-eve.jsonl")[0]

    decoded = get_adapter("suricata").decode([odd, flow])

    assert decoded.skipped == [0] and not decoded.rejects and len(decoded.batch) == 1


@pytest.mark.parametrize("name", ["goflow2-v2.jsonl", "goflow2-v1.jsonl"])
def test_goflow2_both_spellings_decode(name: str) -> None:
    """snake_case and CamelCase records decode; counts are scaled by sampling."""
    decoded = get_adapter("goflow2").decode(lines_of(SAMPLES / name))

    assert not decoded.rejects
    batch = decoded.batch
    assert np.isnan(batch.num("dst_bytes")).all() and np.isnan(batch.num("dst_pkts")).all()
    assert (batch.num("sampling_rate") >= 1).all()
    if name == "goflow2-v2.jsonl":
        assert decoded.skipped == [3]  # the ARP sample
        assert list(batch.num("src_bytes")) == [152300 * 100, 76, 1514 * 512]
        assert list(batch.num("ts"))[:2] == [1709633640.0, 1709633690.5]
        assert batch.num("ts")[2] == pytest.approx(1709633702.555)  # sFlow: received
    else:
        assert list(batch.num("src_pkts")) == [12, 30]
        assert list(batch.num("duration")) == [45.0, 1.5]  # seconds, then ms fields


@pytest.mark.parametrize("name", ["nprobe-labels.jsonl", "nprobe-ids.jsonl"])
def test_nprobe_label_and_id_keys_decode(name: str) -> None:
    """Label keys and NetFlow v9 element ids both decode."""
    decoded = get_adapter("nprobe").decode(lines_of(SAMPLES / name))

    assert not decoded.rejects
    first = column_values(decoded.batch, 0)
    if name == "nprobe-labels.jsonl":
        assert (first["src_bytes"], first["dst_bytes"], first["tcp_flags"]) == (3486, 18311, 27)
        assert first["duration"] == pytest.approx(2.857)
        assert list(decoded.batch.text("service")) == ["TLS.Google", "MDNS", "SSH"]
        assert column_values(decoded.batch, 1)["duration"] == 3.0  # LAST - FIRST
    else:
        assert (first["src_ip"], first["dst_port"], first["dst_pkts"]) == ("10.0.0.1", 80, 5)
        assert first["duration"] == 5.0  # LAST_SWITCHED - FIRST_SWITCHED
        assert column_values(decoded.batch, 1)["ts"] == pytest.approx(1709633650.1)


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        (" Total Length of Fwd Packets", "tot_len_fwd_pkts"),
        ("TotLen Fwd Pkts", "tot_len_fwd_pkts"),
        ("totlen_fwd_pkts", "tot_len_fwd_pkts"),
        ("Total Backward Packets", "tot_bwd_pkts"),
        ("Tot Bwd Pkts", "tot_bwd_pkts"),
        (" Source IP", "src_ip"),
        ("Dst Port", "dst_port"),
        (" Destination Port", "dst_port"),
        ("FIN Flag Cnt", "fin_flags_cnt"),
        (" FIN Flag Count", "fin_flags_cnt"),
        ("CWE Flag Count", "cwr_flags_cnt"),
        ("Flow Byts/s", "flow_byts_s"),
        ("Flow Bytes/s", "flow_byts_s"),
        (" Flow Duration", "flow_duration"),
    ],
)
def test_cicflowmeter_names_normalise_to_one_key(spelling: str, expected: str) -> None:
    """Every spelling of a column normalises to the same key."""
    assert normalise(spelling) == expected


@pytest.mark.parametrize(
    "name",
    [
        "cicflowmeter-java.csv",
        "cicflowmeter-cicids2017.csv",
        "cicflowmeter-python.csv",
        "cicflowmeter-python.jsonl",
    ],
)
def test_cicflowmeter_spellings_decode_to_the_same_flows(name: str) -> None:
    """Java, CIC-IDS2017 and Python spellings, CSV or JSON, agree."""
    reference = get_adapter("cicflowmeter").read_file(SAMPLES / "cicflowmeter-java.csv")

    batch = get_adapter("cicflowmeter").read_file(SAMPLES / name)

    assert len(batch) == 4
    for field in FLOW_FIELDS:
        if field != "ts":
            a, b = batch.columns[field], reference.columns[field]
            assert [None if v != v else v for v in a] == [None if v != v else v for v in b]
    assert list(reference.num("duration")) == [3.450123, 9.8e-05, 0.041022, 0.0]
    assert list(reference.num("tcp_flags"))[:2] == [1 | 2 | 8 | 16, 2 | 4 | 16]
    if name != "cicflowmeter-cicids2017.csv":  # that data set's times lack seconds
        assert list(batch.num("ts")) == list(reference.num("ts"))


def test_cicflowmeter_reads_day_first_times_with_am_pm() -> None:
    """The Java timestamp '05/03/2024 02:30:45 PM' is 5 March, 14:30:45 UTC."""
    batch = get_adapter("cicflowmeter").read_file(SAMPLES / "cicflowmeter-java.csv")

    assert batch.num("ts")[1] == datetime(2024, 3, 5, 14, 30, 45, tzinfo=UTC).timestamp()
    assert list(batch.extras["label"]) == ["No Label"] * 4


@pytest.mark.parametrize("stamp", [1709633641, 1709633641000, "1709633641", "2024-03-05T10:14:01Z"])
def test_cicflowmeter_json_times_may_be_epoch_numbers(stamp: object) -> None:
    """Epoch seconds or milliseconds, as numbers or text, and ISO 8601 all work."""
    record = json_record(CIC_JSON, "timestamp", stamp)

    decoded = get_adapter("cicflowmeter").decode([record])

    assert decoded.batch.num("ts")[0] == 1709633641.0


def test_cicflowmeter_header_message_sets_the_order() -> None:
    """A header line on Kafka is skipped and later lines follow its order."""
    lines = lines_of(SAMPLES / "cicflowmeter-cicids2017.csv")
    adapter = get_adapter("cicflowmeter")

    first = adapter.decode(lines[:2])
    later = adapter.decode(lines[2:])

    assert first.skipped == [0] and len(first.batch) == 1
    assert len(later.batch) == 3 and not later.rejects


# --- bad input: each adapter says what was wrong -----------------------------------

SURICATA_FLOW: dict[str, Any] = json.loads(lines_of(SAMPLES / "suricata-eve.jsonl")[0])
GOFLOW2: dict[str, Any] = json.loads(lines_of(SAMPLES / "goflow2-v2.jsonl")[0])
NPROBE: dict[str, Any] = json.loads(lines_of(SAMPLES / "nprobe-labels.jsonl")[0])
CIC_JSON: dict[str, Any] = json.loads(lines_of(SAMPLES / "cicflowmeter-python.jsonl")[0])
ZEEK_JSON: dict[str, Any] = {
    "ts": 1709633640.123456,
    "uid": "Ck2Fq41XfWqLR0Adv3",
    "id.orig_h": "10.1.2.3",
    "id.orig_p": 51514,
    "id.resp_h": "93.184.216.34",
    "id.resp_p": 443,
    "proto": "tcp",
    "service": "ssl",
    "duration": 0.82,
    "orig_bytes": 812,
    "resp_bytes": 5230,
    "conn_state": "SF",
    "history": "ShADadFf",
    "orig_pkts": 9,
    "orig_ip_bytes": 1184,
    "resp_pkts": 8,
    "resp_ip_bytes": 5562,
}
INFINITE = "__INFINITE__"


def json_record(base: dict[str, Any], path: str, value: Any, *more: Any) -> bytes:
    """``base`` with ``path`` (``a/b`` for nested keys) set to ``value``.

    ``...`` as the value removes the key; ``more`` holds further path,
    value pairs.
    """
    record = json.loads(json.dumps(base))
    changes = [(path, value), *zip(more[::2], more[1::2], strict=True)]
    for where, what in changes:
        *parents, last = where.split("/")
        target = record
        for key in parents:
            target = target[key]
        if what is ...:
            del target[last]
        else:
            target[last] = what
    return json.dumps(record).replace(f'"{INFINITE}"', "1e999").encode()


def cic_line(**changes: str) -> bytes:
    """The first Java CICFlowMeter sample line with some columns replaced."""
    line = lines_of(SAMPLES / "cicflowmeter-java.csv")[1].decode()
    cells = dict(zip(JAVA_COLUMNS, line.split(","), strict=True))
    for key, value in changes.items():
        cells[key] = value
    return ",".join(cells.values()).encode()


NSL_LINE = (
    "0,tcp,http,SF,232,8153,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,5,5,0.20,0.20,0.00,0.00,"
    "1.00,0.00,0.00,30,255,1.00,0.00,0.03,0.04,0.03,0.01,0.00,0.01,normal,21"
)


def nsl_line(index: int, value: str) -> bytes:
    cells = NSL_LINE.split(",")
    cells[index] = value
    return ",".join(cells).encode()


FUTURE_ISO = "2100-01-01T00:00:00.000000+0000"
BAD_INPUT: list[tuple[str, str, bytes, str]] = [
    # (format, what is wrong, record, a phrase the reason must contain)
    ("zeek", "missing", zeek_line(id_orig_h="-"), "missing required field 'src_ip'"),
    ("zeek", "type", zeek_line(orig_ip_bytes="many"), "field 'orig_ip_bytes' is not a number"),
    ("zeek", "port", zeek_line(id_resp_p="70000"), "'dst_port' is not a port number"),
    ("zeek", "address", zeek_line(id_orig_h="10.1.2.300"), "'src_ip' is not an IP address"),
    ("zeek", "infinite", zeek_line(duration="inf"), "field 'duration' is infinite"),
    ("zeek", "nan", zeek_line(orig_pkts="nan"), "field 'orig_pkts' is not a number: 'nan'"),
    ("zeek", "future", zeek_line(ts=str(FUTURE)), "more than a day in the future"),
    ("zeek", "proto", zeek_line(proto="carrier-pigeon"), "not a known protocol"),
    ("zeek", "missing", json_record(ZEEK_JSON, "id.orig_h", ...), "field `id.orig_h`"),
    ("zeek", "type", json_record(ZEEK_JSON, "id.orig_p", "80"), "got `str` - at `$.id.orig_p`"),
    ("zeek", "port", json_record(ZEEK_JSON, "id.resp_p", 70000), "`int` <= 65535"),
    ("zeek", "address", json_record(ZEEK_JSON, "id.resp_h", "x::y::z"), "'dst_ip' is not an IP"),
    ("zeek", "infinite", json_record(ZEEK_JSON, "orig_bytes", INFINITE), "Number out of range"),
    ("zeek", "nan", json_record(ZEEK_JSON, "duration", "NaN"), "Expected `float | null`"),
    ("zeek", "future", json_record(ZEEK_JSON, "ts", FUTURE), "more than a day in the future"),
    ("zeek", "time", json_record(ZEEK_JSON, "ts", "yesterday"), "field 'ts' is not a time"),
    ("suricata", "missing", json_record(SURICATA_FLOW, "src_ip", ...), "field 'src_ip'"),
    (
        "suricata",
        "type",
        json_record(SURICATA_FLOW, "src_port", "80"),
        "got `str` - at `$.src_port`",
    ),
    ("suricata", "port", json_record(SURICATA_FLOW, "dest_port", -1), "`int` >= 0"),
    ("suricata", "address", json_record(SURICATA_FLOW, "dest_ip", "999.1.1.1"), "'dst_ip' is not"),
    ("suricata", "infinite", json_record(SURICATA_FLOW, "flow/bytes_toserver", INFINITE), "range"),
    (
        "suricata",
        "future",
        json_record(SURICATA_FLOW, "flow/start", FUTURE_ISO, "flow/end", FUTURE_ISO),
        "in the future",
    ),
    ("suricata", "time", json_record(SURICATA_FLOW, "flow/start", "soon"), "'flow.start' is not"),
    ("suricata", "hex", json_record(SURICATA_FLOW, "tcp/tcp_flags", "zz"), "hexadecimal"),
    (
        "goflow2",
        "missing",
        json_record(GOFLOW2, "dst_addr", ...),
        "missing required field 'dst_ip'",
    ),
    ("goflow2", "type", json_record(GOFLOW2, "bytes", "lots"), "got `str` - at `$.bytes`"),
    ("goflow2", "port", json_record(GOFLOW2, "src_port", 65536), "`int` <= 65535"),
    ("goflow2", "address", json_record(GOFLOW2, "src_addr", "198.51.100"), "'src_ip' is not an IP"),
    ("goflow2", "infinite", json_record(GOFLOW2, "packets", INFINITE), "Number out of range"),
    ("goflow2", "negative", json_record(GOFLOW2, "bytes", -5), "`float` >= 0.0"),
    (
        "goflow2",
        "future",
        json_record(GOFLOW2, "time_flow_start_ns", FUTURE * 10**9, "time_flow_end_ns", ...),
        "future",
    ),
    ("nprobe", "missing", json_record(NPROBE, "IPV4_SRC_ADDR", ...), "field 'src_ip'"),
    ("nprobe", "type", json_record(NPROBE, "IN_BYTES", "lots"), "field 'IN_BYTES' is not a number"),
    ("nprobe", "type", json_record(NPROBE, "IPV4_DST_ADDR", 167772161), "Expected `str | null`"),
    ("nprobe", "port", json_record(NPROBE, "L4_DST_PORT", 99999), "`int` <= 65535"),
    ("nprobe", "address", json_record(NPROBE, "IPV4_DST_ADDR", "localhost"), "not an IP address"),
    ("nprobe", "infinite", json_record(NPROBE, "OUT_PKTS", INFINITE), "Number out of range"),
    ("nprobe", "nan", json_record(NPROBE, "OUT_PKTS", "NaN"), "field 'OUT_PKTS' is not a number"),
    ("nprobe", "future", json_record(NPROBE, "FLOW_START_MILLISECONDS", FUTURE * 1000), "future"),
    ("cicflowmeter", "missing", cic_line(**{"Src IP": ""}), "missing required field 'src_ip'"),
    ("cicflowmeter", "type", cic_line(**{"Tot Fwd Pkts": "nine"}), "'Tot Fwd Pkts' is not a num"),
    ("cicflowmeter", "port", cic_line(**{"Dst Port": "65536"}), "'dst_port' is not a port"),
    ("cicflowmeter", "address", cic_line(**{"Dst IP": "104.16.207"}), "'dst_ip' is not an IP"),
    ("cicflowmeter", "infinite", cic_line(**{"TotLen Fwd Pkts": "inf"}), "'src_bytes' is infin"),
    ("cicflowmeter", "future", cic_line(Timestamp="01/01/2100 10:00:00 AM"), "in the future"),
    ("cicflowmeter", "time", cic_line(Timestamp="tea time"), "'Timestamp' is not a time"),
    ("cicflowmeter", "width", cic_line()[:-9], "expected 84 comma-separated fields"),
    ("cicflowmeter", "missing", json_record(CIC_JSON, "dst_ip", ...), "required field 'dst_ip'"),
    ("cicflowmeter", "type", json_record(CIC_JSON, "src_port", []), "'src_port' is not a number"),
    ("cicflowmeter", "nan", json_record(CIC_JSON, "tot_bwd_pkts", "NaN"), "is not a number"),
    ("cicflowmeter", "type", json_record(CIC_JSON, "src_ip", ["10.0.0.1"]), "'src_ip' is not text"),
    ("cicflowmeter", "type", json_record(CIC_JSON, "dst_ip", 167772161), "'dst_ip' is not text"),
    ("cicflowmeter", "type", json_record(CIC_JSON, "protocol", [6]), "'protocol' is not a scalar"),
    ("nsl-kdd", "missing", NSL_LINE.rsplit(",", 2)[0].encode(), "expected 43 comma-separated"),
    ("nsl-kdd", "type", nsl_line(4, "many"), "field 'src_bytes' is not a number"),
    ("nsl-kdd", "infinite", nsl_line(0, "inf"), "field 'duration' is infinite"),
    ("nsl-kdd", "negative", nsl_line(5, "-3"), "field 'dst_bytes' is negative"),
    ("unsw-nb15", "missing", b"1,0.5,tcp,-,FIN", "expected 45 comma-separated fields"),
]


@pytest.mark.parametrize(
    ("fmt", "record", "phrase"),
    [pytest.param(f, r, p, id=f"{f}-{what}-{i}") for i, (f, what, r, p) in enumerate(BAD_INPUT)],
)
def test_bad_record_is_rejected_with_its_reason(fmt: str, record: bytes, phrase: str) -> None:
    """The record is dead-lettered, alone, with a reason naming the problem."""
    good = {
        "zeek": zeek_line(),
        "suricata": json.dumps(SURICATA_FLOW).encode(),
        "goflow2": json.dumps(GOFLOW2).encode(),
        "nprobe": json.dumps(NPROBE).encode(),
        "cicflowmeter": cic_line(),
        "nsl-kdd": NSL_LINE.encode(),
        "unsw-nb15": None,
    }[fmt]
    values = [record] if good is None else [good, record, good]

    decoded = get_adapter(fmt).decode(values)

    bad_position = 0 if good is None else 1
    assert [r.position for r in decoded.rejects] == [bad_position]
    assert phrase in decoded.rejects[0].reason
    assert len(decoded.batch) == len(values) - 1


def test_bad_bytes_are_rejected_not_raised() -> None:
    """Invalid UTF-8, empty messages and broken JSON get a reason each."""
    cases = {
        "zeek": [b"", b"\xff\xfe\t" * 20 + b"x", b"{not json"],
        "cicflowmeter": [b"", cic_line().replace(b"192", b"\xff\xfe"), b"{"],
        "suricata": [b"", b"\x00", b'{"event_type": 3}'],
    }
    for fmt, values in cases.items():
        decoded = get_adapter(fmt).decode(values)
        assert [r.position for r in decoded.rejects] == [0, 1, 2], fmt


# --- detection -------------------------------------------------------------------------


def detection_samples() -> list[tuple[str, bytes]]:
    netfraud = {"ts": 1709633640.5, "src_ip": "10.0.0.5", "dst_ip": "10.0.0.6", "proto": "tcp"}
    return [
        ("netfraud", json.dumps(netfraud).encode()),
        ("zeek", zeek_line()),
        ("zeek", json.dumps(ZEEK_JSON).encode()),
        ("zeek", b"#separator \\x09"),
        ("suricata", lines_of(SAMPLES / "suricata-eve.jsonl")[2]),
        ("goflow2", lines_of(SAMPLES / "goflow2-v2.jsonl")[0]),
        ("goflow2", lines_of(SAMPLES / "goflow2-v1.jsonl")[0]),
        ("nprobe", lines_of(SAMPLES / "nprobe-labels.jsonl")[0]),
        ("nprobe", lines_of(SAMPLES / "nprobe-ids.jsonl")[0]),
        ("cicflowmeter", cic_line()),
        ("cicflowmeter", lines_of(SAMPLES / "cicflowmeter-cicids2017.csv")[0]),
        ("cicflowmeter", lines_of(SAMPLES / "cicflowmeter-python.jsonl")[0]),
        ("nsl-kdd", NSL_LINE.encode()),
        ("unsw-nb15", b"id,dur,proto,service,state,spkts,dpkts,sbytes,dbytes,label,attack_cat"),
    ]


@pytest.mark.parametrize(("fmt", "sample"), detection_samples())
def test_detect_picks_the_right_adapter(fmt: str, sample: bytes) -> None:
    """One record of each format is recognised as that format."""
    adapter = detect(sample)

    assert adapter is not None and adapter.name == fmt


# --- properties ----------------------------------------------------------------------

VALID: dict[str, list[bytes]] = {
    "zeek": [zeek_line(), zeek_line(history="S", proto="udp"), json.dumps(ZEEK_JSON).encode()],
    "suricata": lines_of(SAMPLES / "suricata-eve.jsonl"),
    "goflow2": lines_of(SAMPLES / "goflow2-v2.jsonl") + lines_of(SAMPLES / "goflow2-v1.jsonl"),
    "nprobe": lines_of(SAMPLES / "nprobe-labels.jsonl") + lines_of(SAMPLES / "nprobe-ids.jsonl"),
    "cicflowmeter": lines_of(SAMPLES / "cicflowmeter-java.csv")[1:]
    + lines_of(SAMPLES / "cicflowmeter-python.jsonl"),
    "nsl-kdd": [NSL_LINE.encode(), nsl_line(1, "udp"), nsl_line(3, "REJ")],
    "unsw-nb15": [
        b"7,0.121478,tcp,-,FIN,6,4,258,172,74.08749,252,254,14158.94238,8495.365234,0,0,"
        b"24.2956,8.375,30.177547,11.830604,255,621772692,2202533631,255,0,0,0,43,43,0,0,"
        b"1,0,1,1,1,1,0,0,0,1,1,0,Normal,0",
        b"9,0.000009,udp,dns,INT,2,0,114,0,111111.1072,254,0,50666664,0,0,0,0.009,0,0,0,"
        b"0,0,0,0,0,0,0,57,0,0,0,2,2,1,1,1,2,0,0,0,1,2,0,Generic,1",
    ],
}


@st.composite
def messy_values(draw: st.DrawFn, fmt: str) -> list[bytes]:
    """Arbitrary bytes, valid records, and valid records with bytes changed."""
    valid = st.sampled_from(VALID[fmt])

    @st.composite
    def mutated(inner: st.DrawFn) -> bytes:
        record = inner(valid)
        start = inner(st.integers(0, len(record)))
        end = inner(st.integers(start, len(record)))
        return record[:start] + inner(st.binary(max_size=12)) + record[end:]

    one = st.one_of(st.binary(max_size=120), valid, mutated(), retyped(VALID[fmt]))
    return draw(st.lists(one, max_size=12))


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@st.composite
def retyped(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    """A valid JSON record with one field (maybe nested) set to any JSON value."""
    objects = [v for v in valid if v[:1] == b"{"]
    if not objects:
        return draw(st.sampled_from(valid))
    record = json.loads(draw(st.sampled_from(objects)))
    target = record
    nested = [k for k, v in record.items() if isinstance(v, dict)]
    deeper = draw(st.booleans())
    if nested and deeper:
        target = record[draw(st.sampled_from(nested))]
    if target:
        target[draw(st.sampled_from(sorted(target)))] = draw(JSON_VALUES)
    return json.dumps(record).encode()


@pytest.mark.parametrize("fmt", MY_FORMATS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_never_raises_and_accounts_for_every_value(fmt: str, data: st.DataObject) -> None:
    """Every value is a row, a reject or a skip, exactly once."""
    values = data.draw(messy_values(fmt))

    decoded = get_adapter(fmt).decode(values)

    positions = (
        list(decoded.batch.position) + [r.position for r in decoded.rejects] + list(decoded.skipped)
    )
    assert sorted(positions) == list(range(len(values)))
    assert len(decoded.batch) + len(decoded.rejects) + len(decoded.skipped) == len(values)
    assert all(isinstance(r.reason, str) and r.reason for r in decoded.rejects)


def outcome_by_input(decoded: Decoded, skip: Sequence[str]) -> dict[int, object]:
    """What became of each input position: its row's values, or its reason."""
    out: dict[int, object] = {}
    for row, position in enumerate(decoded.batch.position):
        values = column_values(decoded.batch, row)
        out[int(position)] = {k: v for k, v in values.items() if k not in skip}
    for reject in decoded.rejects:
        out[reject.position] = reject.reason
    for position in decoded.skipped:
        out[position] = "skipped"
    return out


@pytest.mark.parametrize("fmt", MY_FORMATS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_reordering_records_leaves_each_row_unchanged(fmt: str, data: st.DataObject) -> None:
    """A record decodes to the same values wherever it sits in its batch."""
    # Header lines change the column order for what follows, by design.
    noise = st.binary(max_size=30).filter(lambda b: b[:1] != b"#" and b"dur" not in b.lower())
    records = st.one_of(st.sampled_from(VALID[fmt]), noise, retyped(VALID[fmt]))
    values = data.draw(st.lists(records))
    order = data.draw(st.permutations(range(len(values))))
    skip = ("ts",) if fmt in ("nsl-kdd", "unsw-nb15") else ()  # ts is the row ordinal there

    before = outcome_by_input(get_adapter(fmt).decode(values), skip)
    shuffled = outcome_by_input(get_adapter(fmt).decode([values[i] for i in order]), skip)

    assert {order[k]: v for k, v in shuffled.items()} == before


def test_header_state_is_per_adapter_instance() -> None:
    """A header seen by one adapter does not change another's column order."""
    header = ("#fields\t" + "\t".join(reversed(CONN_FIELDS))).encode()
    first = ZeekConn()
    first.decode([header])

    assert first.layout.fields == tuple(reversed(CONN_FIELDS))
    assert ZeekConn().layout == TsvLayout()
    assert CicFlowMeter().columns == JAVA_COLUMNS


def test_every_format_is_registered() -> None:
    """The registry offers each adapter under its documented name."""
    from features.formats import names

    assert set(MY_FORMATS) <= set(names())
