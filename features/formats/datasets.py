"""Labelled evaluation data sets: NSL-KDD and UNSW-NB15.

These files describe connections by features computed offline, without
addresses or timestamps, so they fit the canonical flow schema poorly. They
are offered two ways:

* :func:`load_nsl_kdd` / :func:`load_unsw_nb15` (and :func:`load_table`,
  which picks by file name) return a :class:`LabelledTable`: the data set's
  own feature columns, split into numeric and categorical, with the labels
  held apart. Evaluation on these data sets uses this.
* The adapters ``nsl-kdd`` and ``unsw-nb15`` turn the same rows into a
  :class:`~features.records.FlowBatch` on a best-effort basis, so that
  ``--format nsl-kdd`` works wherever flows are expected. What is made up:

  - ``ts`` is the row's ordinal, as seconds after the Unix epoch (row 0 is
    1970-01-01T00:00:00Z); ``decode`` keeps counting across batches of the
    same adapter instance.
  - ``src_ip`` and ``dst_ip`` are the placeholder ``0.0.0.0``, so every row
    shares one source key for stateful features; ports are missing.
  - Only duration, protocol, service, state, bytes and (UNSW-NB15) packets
    are carried over; the extras are ``label`` (``benign`` or ``attack``) and
    ``attack_type`` (the data set's class name).
  - UNSW-NB15 protocol names that are not IANA keywords known here (Argus
    writes ``unas``, ``any``, ``arp``, ...) become 255, IANA's reserved
    number, rather than losing the row. Argus states map to Zeek's where the
    meaning is clear: ``FIN`` SF, ``INT`` and ``REQ`` S0, ``CON`` S1 for TCP
    and SF otherwise; the rest are left out.

On Kafka each message is one comma-separated line. For UNSW-NB15 a header
line (``id,dur,proto,...``) arriving as a message sets the column order for
the lines after it and is skipped; the default is the order of the
published training and testing sets. NSL-KDD files have no header.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.formats import register
from features.formats.base import Decoded, validate
from features.records import (
    FAILED_STATES,
    STRING_FIELDS,
    FloatArray,
    FlowBatch,
    ObjectArray,
    Reject,
    from_columns,
)

#: The 41 NSL-KDD features, in file order (names as in the KDD'99 task).
NSL_KDD_FEATURES: Final = (
    "duration",
    "protocol_type",
    "service",
    "flag",
    "src_bytes",
    "dst_bytes",
    "land",
    "wrong_fragment",
    "urgent",
    "hot",
    "num_failed_logins",
    "logged_in",
    "num_compromised",
    "root_shell",
    "su_attempted",
    "num_root",
    "num_file_creations",
    "num_shells",
    "num_access_files",
    "num_outbound_cmds",
    "is_host_login",
    "is_guest_login",
    "count",
    "srv_count",
    "serror_rate",
    "srv_serror_rate",
    "rerror_rate",
    "srv_rerror_rate",
    "same_srv_rate",
    "diff_srv_rate",
    "srv_diff_host_rate",
    "dst_host_count",
    "dst_host_srv_count",
    "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate",
    "dst_host_srv_diff_host_rate",
    "dst_host_serror_rate",
    "dst_host_srv_serror_rate",
    "dst_host_rerror_rate",
    "dst_host_srv_rerror_rate",
)
NSL_KDD_CATEGORICAL: Final = ("protocol_type", "service", "flag")
NSL_KDD_NUMERIC: Final = tuple(c for c in NSL_KDD_FEATURES if c not in NSL_KDD_CATEGORICAL)
#: Every column of an NSL-KDD file: the features, the class, the difficulty.
NSL_KDD_COLUMNS: Final = (*NSL_KDD_FEATURES, "label", "difficulty")

#: Columns of the UNSW-NB15 training and testing sets, in file order.
UNSW_NB15_COLUMNS: Final = (
    "id",
    "dur",
    "proto",
    "service",
    "state",
    "spkts",
    "dpkts",
    "sbytes",
    "dbytes",
    "rate",
    "sttl",
    "dttl",
    "sload",
    "dload",
    "sloss",
    "dloss",
    "sinpkt",
    "dinpkt",
    "sjit",
    "djit",
    "swin",
    "stcpb",
    "dtcpb",
    "dwin",
    "tcprtt",
    "synack",
    "ackdat",
    "smean",
    "dmean",
    "trans_depth",
    "response_body_len",
    "ct_srv_src",
    "ct_state_ttl",
    "ct_dst_ltm",
    "ct_src_dport_ltm",
    "ct_dst_sport_ltm",
    "ct_dst_src_ltm",
    "is_ftp_login",
    "ct_ftp_cmd",
    "ct_flw_http_mthd",
    "ct_src_ltm",
    "ct_srv_dst",
    "is_sm_ips_ports",
    "attack_cat",
    "label",
)
UNSW_NB15_CATEGORICAL: Final = ("proto", "service", "state")
UNSW_NB15_NUMERIC: Final = tuple(
    c for c in UNSW_NB15_COLUMNS if c not in {*UNSW_NB15_CATEGORICAL, "id", "attack_cat", "label"}
)

#: IANA numbers of protocol keywords that appear in these data sets.
IANA_PROTOCOLS: Final[Mapping[str, int]] = {
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "pup": 12,
    "udp": 17,
    "xns-idp": 22,
    "rdp": 27,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "idrp": 45,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "ipv6-no": 59,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "eigrp": 88,
    "ospf": 89,
    "etherip": 97,
    "encap": 98,
    "pim": 103,
    "ipcomp": 108,
    "vrrp": 112,
    "l2tp": 115,
    "sctp": 132,
}
#: Stand-in protocol number for names not in :data:`IANA_PROTOCOLS`.
UNKNOWN_PROTOCOL: Final = 255
PLACEHOLDER_ADDRESS: Final = "0.0.0.0"
_ZEEK_STATES: Final = FAILED_STATES | {"SF", "S1", "S2", "S3"}
#: Argus states with a clear Zeek equivalent (``CON`` depends on the protocol).
_ARGUS_STATES: Final[Mapping[str, str]] = {"FIN": "SF", "INT": "S0", "REQ": "S0"}


@dataclass(frozen=True)
class LabelledTable:
    """A labelled data set as a feature table, for evaluation.

    Attributes:
        frame: One row per record; the columns are exactly
            ``numeric_columns + categorical_columns``, under the data set's
            own names. Numeric columns are ``float64`` (``NaN`` where the
            source left a value unset); categorical ones hold ``str``.
        numeric_columns: Names of the numeric features, in file order.
        categorical_columns: Names of the categorical features.
        label: ``True`` where the record is an attack, shape ``(rows,)``.
        attack_class: The data set's finer class of each row (``str``):
            the attack's name or category for attacks, the data set's own
            name for benign rows (``normal``, ``Normal``, ...).
    """

    frame: pd.DataFrame
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    label: npt.NDArray[np.bool_]
    attack_class: ObjectArray

    def __len__(self) -> int:
        return len(self.frame)


def load_nsl_kdd(path: Path) -> LabelledTable:
    """Read an NSL-KDD file (``KDDTrain+.txt``, ``KDDTest+.txt``, ...).

    The difficulty column is dropped; ``label`` is True unless the class is
    ``normal``.
    """
    frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    frame = _name_nsl_columns(frame, path)
    classes = frame["label"].str.strip()
    return _table(frame, NSL_KDD_NUMERIC, NSL_KDD_CATEGORICAL, classes != "normal", classes)


def load_unsw_nb15(path: Path) -> LabelledTable:
    """Read a UNSW-NB15 training or testing set, plain or zipped CSV."""
    frame = _read_unsw(path)
    label = pd.to_numeric(frame["label"], errors="raise") == 1
    classes = frame["attack_cat"].fillna("Normal").str.strip()
    return _table(frame, UNSW_NB15_NUMERIC, UNSW_NB15_CATEGORICAL, label, classes)


def load_table(path: Path) -> LabelledTable:
    """Read NSL-KDD (``*.txt``) or UNSW-NB15 (``*.csv``, ``*.zip``) by suffix."""
    if path.suffix.lower() in {".csv", ".zip"}:
        return load_unsw_nb15(path)
    return load_nsl_kdd(path)


def _table(
    frame: pd.DataFrame,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    label: pd.Series,
    classes: pd.Series,
) -> LabelledTable:
    features = pd.DataFrame(
        {
            **{c: pd.to_numeric(frame[c], errors="raise").astype(float) for c in numeric},
            **{c: frame[c].fillna("-").astype(str).str.strip() for c in categorical},
        }
    )
    return LabelledTable(
        frame=features,
        numeric_columns=numeric,
        categorical_columns=categorical,
        label=label.to_numpy(dtype=bool),
        attack_class=classes.astype(str).to_numpy(dtype=object),
    )


def _name_nsl_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    width = frame.shape[1]
    if width not in (len(NSL_KDD_COLUMNS), len(NSL_KDD_COLUMNS) - 1):
        raise ValueError(f"{path}: {width} columns; NSL-KDD has 42 or 43")
    frame.columns = list(NSL_KDD_COLUMNS[:width])
    return frame


def _read_unsw(path: Path) -> pd.DataFrame:
    """Read the CSV, from inside a zip if need be (``__MACOSX`` is ignored)."""
    if path.suffix.lower() != ".zip":
        return pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    with zipfile.ZipFile(path) as archive:
        members = [
            m
            for m in archive.namelist()
            if m.lower().endswith(".csv") and not m.startswith("__MACOSX/")
        ]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one CSV inside, found {members}")
        with archive.open(members[0]) as handle:
            frame = pd.read_csv(handle, dtype=str, encoding="utf-8-sig")
    missing = {"label", "attack_cat", *UNSW_NB15_NUMERIC} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a UNSW-NB15 set; missing {sorted(missing)}")
    return frame


# --- as canonical flows -------------------------------------------------------


def _nsl_flows(frame: pd.DataFrame) -> tuple[dict[str, object], dict[str, object]]:
    """Canonical columns and extras of NSL-KDD rows (text cells)."""
    classes = frame["label"].str.strip()
    values = {
        "duration": frame["duration"],
        "proto": _protocols(frame["protocol_type"]),
        "service": frame["service"],
        "conn_state": frame["flag"].where(frame["flag"].isin(_ZEEK_STATES)),
        "src_bytes": frame["src_bytes"],
        "dst_bytes": frame["dst_bytes"],
    }
    extras = {
        "label": np.where(classes == "normal", "benign", "attack"),
        "attack_type": classes,
    }
    return values, extras


def _unsw_flows(frame: pd.DataFrame) -> tuple[dict[str, object], dict[str, object]]:
    """Canonical columns and extras of UNSW-NB15 rows (text cells)."""
    proto = _protocols(frame["proto"])
    state = frame["state"].str.strip().str.upper()
    conn_state = state.map(_ARGUS_STATES).to_numpy(dtype=object)
    connected = (state == "CON").to_numpy(dtype=bool)
    conn_state[connected] = np.where(proto[connected] == 6, "S1", "SF")
    values = {
        "duration": frame["dur"],
        "proto": proto,
        "service": frame["service"].where(frame["service"].str.strip() != "-"),
        "conn_state": conn_state,
        "src_bytes": frame["sbytes"],
        "dst_bytes": frame["dbytes"],
        "src_pkts": frame["spkts"],
        "dst_pkts": frame["dpkts"],
    }
    attack = frame["label"].str.strip() == "1"
    extras = {
        "label": np.where(attack, "attack", "benign"),
        "attack_type": frame["attack_cat"].fillna("Normal").str.strip(),
    }
    return values, extras


def _protocols(names: pd.Series) -> FloatArray:
    """IANA numbers for protocol names (255 for names not known here)."""
    lowered = names.fillna("").str.strip().str.lower()
    mapped = lowered.map(IANA_PROTOCOLS)
    numeric = pd.to_numeric(lowered, errors="coerce")
    out = mapped.fillna(numeric).fillna(UNKNOWN_PROTOCOL)
    return np.asarray(out, dtype=np.float64)


_Flows = Callable[[pd.DataFrame], tuple[dict[str, object], dict[str, object]]]


def _to_batch(
    frame: pd.DataFrame, flows: _Flows, first_ts: int, position: npt.NDArray[np.int64]
) -> Decoded:
    """Turn text rows into a validated batch; bad numbers are rejected."""
    n = len(frame)
    if n == 0:
        return Decoded(FlowBatch.empty())
    values, extras = flows(frame)
    reasons: ObjectArray = np.full(n, None, dtype=object)
    columns: dict[str, npt.NDArray[np.generic]] = {}
    for name, column in values.items():
        if name in STRING_FIELDS:
            columns[name] = _cells(column)
        elif isinstance(column, pd.Series):
            columns[name] = _numbers(column, name, reasons)
        else:
            columns[name] = np.asarray(column, dtype=np.float64)
    columns["ts"] = np.arange(first_ts, first_ts + n, dtype=np.float64)
    columns["src_ip"] = np.full(n, PLACEHOLDER_ADDRESS, dtype=object)
    columns["dst_ip"] = columns["src_ip"]
    keep = pd.isna(reasons)
    batch = from_columns(
        {k: v[keep] for k, v in columns.items()},
        int(keep.sum()),
        position=position[keep],
        extras={k: _cells(v)[keep] for k, v in extras.items()},
    )
    decoded = validate(batch)
    early = [Reject(int(position[i]), str(reasons[i])) for i in np.flatnonzero(~keep)]
    decoded.rejects = sorted(early + decoded.rejects, key=lambda r: r.position)
    return decoded


def _numbers(column: pd.Series, name: str, reasons: ObjectArray) -> FloatArray:
    text = column.to_numpy(dtype=object)
    out = np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)
    given = np.array([isinstance(v, str) and v.strip() != "" for v in text], dtype=bool)
    for i in np.flatnonzero(given & np.isnan(out)):
        if reasons[i] is None:
            reasons[i] = f"field {name!r} is not a number: {str(text[i])[:40]!r}"
    return out


def _cells(column: object) -> ObjectArray:
    """Text cells as an object array, with ``None`` for missing ones."""
    out: ObjectArray = np.array(column, dtype=object)
    out[pd.isna(out)] = None
    return out


class _CsvDataset:
    """Shared decoding of one-line-per-message comma-separated data sets."""

    name: str
    columns: tuple[str, ...]
    required: frozenset[str] = frozenset()
    flows: _Flows

    def __init__(self) -> None:
        self._rows_seen = 0

    def decode(self, values: Sequence[bytes]) -> Decoded:
        """Decode lines; a header line updates the column order (skipped)."""
        rows: list[list[str]] = []
        index: list[int] = []
        rejects: list[Reject] = []
        skipped: list[int] = []
        for i, value in enumerate(values):
            fields, problem = self._split(value)
            if problem == "header":
                skipped.append(i)
            elif problem is not None:
                rejects.append(Reject(i, problem))
            else:
                rows.append(fields)
                index.append(i)
        frame = pd.DataFrame(rows, columns=list(self.columns), dtype=object)
        position = np.array(index, dtype=np.int64)
        decoded = _to_batch(frame, type(self).flows, self._rows_seen, position)
        self._rows_seen += len(rows)
        decoded.rejects = sorted(rejects + decoded.rejects, key=lambda r: r.position)
        decoded.skipped = skipped
        return decoded

    def read_file(self, path: Path) -> FlowBatch:
        """Read a whole file as best-effort flows (see the module doc).

        Raises:
            ValueError: A row could not be decoded (the first is named).
        """
        frame = self._read_frame(path)
        position = np.arange(len(frame), dtype=np.int64)
        decoded = _to_batch(frame, type(self).flows, 0, position)
        if decoded.rejects:
            first = decoded.rejects[0]
            raise ValueError(
                f"{path}: row {first.position + 1}: {first.reason} "
                f"({len(decoded.rejects)} bad rows in all)"
            )
        return decoded.batch

    def _read_frame(self, path: Path) -> pd.DataFrame:
        raise NotImplementedError

    def _split(self, value: bytes) -> tuple[list[str], str | None]:
        """Fields of one line, or what is wrong with it."""
        try:
            line = value.decode("utf-8-sig").rstrip("\r\n")
        except UnicodeDecodeError:
            return [], "line is not UTF-8 text"
        if not line.strip():
            return [], "empty message"
        fields = line.split(",")
        if self._is_header(fields):
            return [], self._use_header(fields)
        if len(fields) not in self._widths():
            return [], (
                f"expected {len(self.columns)} comma-separated fields "
                f"({', '.join(self.columns[:3])}, ...), got {len(fields)}"
            )
        return fields + [""] * (len(self.columns) - len(fields)), None

    def _widths(self) -> tuple[int, ...]:
        return (len(self.columns),)

    def _is_header(self, fields: list[str]) -> bool:
        return False

    def _use_header(self, fields: list[str]) -> str:
        """Adopt a header line's column order; ``"header"`` or a reason."""
        names = tuple(f.strip() for f in fields)
        missing = self.required - set(names)
        if missing or len(set(names)) != len(names):
            return f"header line lacks {sorted(missing)} or repeats a name"
        self.columns = names
        return "header"


class NslKdd(_CsvDataset):
    """Adapter for NSL-KDD lines (41 features, class, difficulty)."""

    name = "nsl-kdd"
    columns = NSL_KDD_COLUMNS
    flows = staticmethod(_nsl_flows)

    def _widths(self) -> tuple[int, ...]:
        return (len(NSL_KDD_COLUMNS), len(NSL_KDD_COLUMNS) - 1)

    def matches(self, sample: bytes) -> bool:
        """42 or 43 comma-separated fields with a protocol name second."""
        fields = sample.rstrip(b"\r\n").split(b",")
        return (
            len(fields) in self._widths()
            and fields[1] in {b"tcp", b"udp", b"icmp"}
            and fields[3].decode(errors="replace") in _ZEEK_STATES
        )

    def _read_frame(self, path: Path) -> pd.DataFrame:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        return _name_nsl_columns(frame, path)


class UnswNb15(_CsvDataset):
    """Adapter for UNSW-NB15 training/testing-set lines."""

    name = "unsw-nb15"
    columns = UNSW_NB15_COLUMNS
    required = frozenset(
        ("dur", "proto", "service", "state", "spkts", "dpkts", "sbytes", "dbytes")
    ) | {"label", "attack_cat"}
    flows = staticmethod(_unsw_flows)

    def matches(self, sample: bytes) -> bool:
        """The header line, or 45 fields with an Argus state fifth."""
        fields = sample.rstrip(b"\r\n").split(b",")
        if self._is_header([f.decode(errors="replace") for f in fields]):
            return True
        return len(fields) == len(self.columns) and fields[4].isupper()

    def _read_frame(self, path: Path) -> pd.DataFrame:
        return _read_unsw(path)

    def _is_header(self, fields: list[str]) -> bool:
        names = {f.strip().lstrip("\ufeff") for f in fields}
        return {"dur", "proto", "label"} <= names


register("nsl-kdd", NslKdd)
register("unsw-nb15", UnswNb15)
