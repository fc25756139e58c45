"""Alert documents: schema, stable ids, explanations in words."""

from __future__ import annotations

import json

import jsonschema
import numpy as np

from detector.model.threshold import Calibration
from detector.stream.alerts import SCHEMA_PATH, Origin, build_alert, event_id, format_value


def _alert(offset: int = 7, version: str = "v1") -> dict[str, object]:
    return build_alert(
        origin=Origin("flows", 2, offset, "netfraud"),
        row={
            "ts": 1767657600.5,
            "src_ip": "10.0.0.9",
            "dst_ip": "10.0.1.20",
            "src_port": 50000.0,
            "dst_port": 22.0,
            "proto": 6.0,
            "service": "ssh",
        },
        score=12.5,
        threshold=3.0,
        severity="high",
        risk=81.0,
        reasons=[
            {
                "name": "dst_ports_10s",
                "label": "new destination ports in 10s",
                "observed": 412.0,
                "expected": 3.0,
                "share": 0.61,
            }
        ],
        model_version=version,
        warming_up=False,
    )


def test_alert_matches_the_schema() -> None:
    """A built alert validates against alert.schema.json."""
    jsonschema.validate(_alert(), json.loads(SCHEMA_PATH.read_text()))


def test_event_id_is_stable_and_depends_on_model_version() -> None:
    """Replaying a record gives the same id; another model version another one."""
    assert event_id("t", 1, 5, "v1") == event_id("t", 1, 5, "v1")
    assert event_id("t", 1, 5, "v1") != event_id("t", 1, 5, "v2")
    assert _alert()["event"]["id"] == _alert()["event"]["id"]  # type: ignore[index]


def test_summary_reads_as_observed_versus_expected() -> None:
    """The one-line summary says what was seen and what was expected."""
    summary = _alert()["netfraud"]["summary"]  # type: ignore[index]
    assert summary == "new destination ports in 10s: 412, expected 3"


def test_values_read_without_scientific_notation() -> None:
    """Ports, counts and rates as an analyst reads them; absence as a dash."""
    assert format_value(8443.0) == "8,443"
    assert format_value(443.0) == "443"
    assert format_value(0.8217) == "0.822"
    assert format_value(None) == "-"
    assert format_value("ssl") == "ssl"


def test_risk_is_fifty_at_the_one_percent_tail() -> None:
    """Risk is 25 points per decade of rarity: 50 at the top 1% of normal scores."""
    benign = np.random.default_rng(0).exponential(size=100_000)
    calibration = Calibration.fit(benign, 0.01)
    risk = calibration.risk(np.array([calibration.threshold, np.quantile(benign, 0.999)]))
    assert abs(risk[0] - 50) < 1.5 and abs(risk[1] - 75) < 2.5
    assert list(calibration.severity(np.array([0.0, calibration.threshold]))) == [None, "low"]
