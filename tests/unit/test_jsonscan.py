"""The compiled JSON scanner decodes exactly what msgspec decodes, or declines.

The netfraud adapter's general path (msgspec, record by record where needed)
is the reference: for any batch, the adapter's output with the scanner must
be identical to the reference's, value for value, down to the sign of zero.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.tools.generate import generate
from features.formats import jsonscan
from features.formats import netfraud as nf
from features.formats.base import Decoded, validate
from features.records import FlowBatch


def _reference(values: Sequence[bytes]) -> Decoded:
    records, rejects = nf._decode_all(values)
    decoded = validate(nf._to_batch(records))
    decoded.rejects = rejects + decoded.rejects
    return decoded


def _assert_same(got: FlowBatch, want: FlowBatch) -> None:
    assert list(got.columns) == list(want.columns)
    for name, column in want.columns.items():
        mine = got.columns[name]
        assert mine.dtype == column.dtype, name
        if column.dtype.kind == "f":
            assert np.array_equal(mine, column, equal_nan=True), name
            assert np.array_equal(np.signbit(mine), np.signbit(column)), name
        else:
            assert mine.tolist() == column.tolist(), name
    assert got.position.tolist() == want.position.tolist()
    assert list(got.extras) == list(want.extras)
    for name, column in want.extras.items():
        assert got.extras[name].tolist() == column.tolist(), name


def _check(values: Sequence[bytes]) -> Decoded:
    got = nf.NetfraudJson().decode(values)
    want = _reference(values)
    _assert_same(got.batch, want.batch)
    assert got.rejects == want.rejects
    return got


def test_generated_traffic_takes_the_fast_path_and_decodes_identically() -> None:
    rows = generate(3_000, seed=4, hours=1.0)
    encoders = [msgspec.json.Encoder().encode, lambda r: json.dumps(r).encode()]
    for encode in encoders:
        values = [encode(r) for r in rows]
        scanned = nf._SCANNER.scan(values)
        assert scanned is not None and not scanned.declined.any()
        decoded = _check(values)
        assert len(decoded.batch) == len(values) and decoded.rejects == []


DECLINED = [
    b'{"ts": 1, "src_ip": "10.0.0.\\u0031", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6, "service": "\xc3\xa9"}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6, "x": {"a": [1]}}',
    b'{"ts": 1, "ts": 2, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1, "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": null, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6.0}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6, "src_port": 80.5}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6, "src_port": true}',
    b'{"ts": 1, "src_ip": 7, "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 01, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1., "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": -, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1e, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1e999, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1.8e308, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1e-302, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 12345678901234567890, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 0.30000000000000004, "ts": 0.1000000000000000055511151231257827, '
    b'"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": "2026-01-01T00:00:00Z", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6} {}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6,}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6',
    b'{"ts": 1, "src_ip": "10.0.0.1" "dst_ip": "10.0.0.2", "proto": 6}',
    b'{"ts": 1, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": nul}',
    b"[1, 2]",
    b"",
    b"\xff\xfe",
]


@pytest.mark.parametrize("value", DECLINED)
def test_unusual_or_bad_records_are_declined_and_decoded_the_general_way(value: bytes) -> None:
    plain = b'{"ts": 5, "src_ip": "10.0.0.9", "dst_ip": "10.0.0.2", "proto": "udp", "label": "x"}'
    values = [plain, value, plain]
    scanned = nf._SCANNER.scan(values)
    assert scanned is not None
    assert scanned.declined.tolist() == [False, True, False]
    _check(values)


ACCEPTED_NUMBERS = [
    b"0",
    b"-0",
    b"-0.0",
    b"0.0e5",
    b"1767657600.043374",
    b"1.5E2",
    b"2.5e-3",
    b"-12.25",
    b"999999999999999999",
    b"9007199254740993.0e-3",
    b"1e22",
    b"4.9e-22",
    b"0.000001",
    # Outside the exact fast path: converted by Python's float afterwards.
    b"1767225600.3948236",
    b"0.30000000000000004",
    b"-0.1000000000000000055511151231257827",
    b"123456789012345678901234.5",
    b"9007199254740993.5",
    b"1e23",
    b"-4.9e-23",
    b"1.7976931348623157e299",
    b"2.2250738585072014e-299",
    b"0.00000000000000000000000000000000000000000000000000000000012345678901234567",
]


@pytest.mark.parametrize("number", ACCEPTED_NUMBERS)
def test_floats_convert_exactly_on_either_path(number: bytes) -> None:
    value = b'{"ts": ' + number + b', "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "proto": 6}'
    scanned = nf._SCANNER.scan([value])
    assert scanned is not None and not scanned.declined[0]
    got = scanned.numbers["ts"][0]
    want = float(msgspec.json.decode(number))
    assert got == want and np.signbit(got) == np.signbit(want)
    _check([value])


def test_declined_records_leave_no_deferred_floats_behind() -> None:
    # Every float field as a float left to Python, then a duplicate key that
    # declines the record: the most deferred floats a record can hold.
    long = "0.30000000000000004"
    floats = [f.name for f in nf._SCANNER.fields if f.floating]
    assert "ts" in floats and len(floats) > 5
    numbers = ", ".join(f'"{name}": {long}' for name in floats)
    common = f'{numbers}, "src_ip": "a", "dst_ip": "b", "proto": 6'
    bad = f'{{{common}, "ts": {long}}}'.encode()
    good = f"{{{common}}}".encode()
    values = [bad, good] * 500
    scanned = nf._SCANNER.scan(values)
    assert scanned is not None
    assert scanned.declined.tolist() == [True, False] * 500
    assert np.isnan(scanned.numbers["ts"][0::2]).all()
    assert (scanned.numbers["ts"][1::2] == 0.30000000000000004).all()
    _check(values)


def test_a_hash_collision_is_caught_not_merged() -> None:
    buf = np.frombuffer(b"aaabbb", dtype=np.uint8)
    spans = np.array([[[0, 3]], [[3, 6]]], dtype=np.int64)
    same_hash = np.array([[7], [7]], dtype=np.uint64)
    codes = np.full((2, 1), -1, dtype=np.int64)
    first = np.empty((2, 1), dtype=np.int64)
    assert jsonscan._group(buf, spans, same_hash, codes, first) == -1
    spans_equal = np.array([[[0, 3]], [[0, 3]]], dtype=np.int64)
    assert jsonscan._group(buf, spans_equal, same_hash, codes, first) == 1
    assert codes[:, 0].tolist() == [0, 0]


_TEXT = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=12)
_NUMBER = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=6).map(float),
)
_VALUE = st.one_of(_TEXT, _NUMBER, st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
_FIELDS = [*nf._FIELDS, "extra", "other"]


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    base: dict[str, object] = {
        "ts": draw(st.one_of(st.floats(0, 2e9), st.integers(0, 2**40), _VALUE)),
        "src_ip": draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1"]) | _VALUE),
        "dst_ip": draw(st.sampled_from(["10.0.0.3", "192.0.2.7"]) | _VALUE),
        "proto": draw(st.sampled_from(["tcp", "udp", 6, 17, "icmp"]) | _VALUE),
    }
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=8)):
        base[name] = draw(_VALUE)
    for name in draw(st.lists(st.sampled_from(list(base)), max_size=2)):
        base.pop(name, None)
    keys = draw(st.permutations(list(base)))
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    text = json.dumps({k: base[k] for k in keys}, separators=sep, ensure_ascii=draw(st.booleans()))
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_records(), min_size=1, max_size=12))
def test_any_batch_decodes_as_the_general_path_does(values: list[bytes]) -> None:
    _check(values)
