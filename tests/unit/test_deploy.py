"""Deployment files: queries name real metrics, and deploy/check.sh catches breakage.

The metric tests need only the package. The check.sh tests run the real
validators (check-jsonschema, compose-go, kubeconform with the Kubernetes
schemas of kubernetes-validate): they are skipped, with the reason, when those
tools are not installed yet (`bash deploy/check.sh` installs the Go ones into
the cache), except under CI=true, where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from detector.ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHECK = DEPLOY / "check.sh"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "netfraud.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
IN_CI = os.environ.get("CI") == "true"

#: Sample-name suffixes prometheus_client adds to a family's name, by type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
NAME = re.compile(r"\bnetfraud_[A-Za-z0-9_]*[A-Za-z0-9]")


def exposed_names() -> dict[str, str]:
    """Every sample name ``Metrics()`` can expose, mapped to its family's type."""
    names: dict[str, str] = {}
    for family in Metrics().registry.collect():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.type
    return names


def dashboard_queries(node: Any) -> Iterator[str]:
    """PromQL strings of a Grafana dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from dashboard_queries(value)


def names_in(queries: list[str]) -> set[str]:
    return {name for q in queries for name in NAME.findall(q)}


# ---------------------------------------------------------------------------
# Metric names


def test_suffix_table_matches_real_exposition() -> None:
    """The suffix rules above are what prometheus_client really writes."""
    metrics = Metrics()
    for value in vars(metrics).values():
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        names = value._labelnames
        child = value.labels(*["x"] * len(names)) if names else value
        if isinstance(child, Histogram):
            child.observe(1.0)
        elif isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
    text = generate_latest(metrics.registry).decode()
    written = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"
    }
    assert written, "Metrics() registered nothing"
    assert written <= set(exposed_names())


def test_dashboard_queries_only_registered_metrics() -> None:
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text())))
    used = names_in(queries)
    assert len(used) >= 10, f"suspiciously few metric names found: {sorted(used)}"
    known = exposed_names()
    unknown = sorted(used - set(known))
    assert not unknown, (
        f"the dashboard queries {unknown}, which detector.ops.metrics.Metrics does not "
        "export (counters end in _total, histograms in _bucket/_sum/_count)"
    )


def test_alert_rules_only_use_registered_metrics() -> None:
    if IN_CI:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    else:
        yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) is not installed")
    rules = yaml.safe_load(RULES.read_text())
    queries = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    unknown = sorted(names_in(queries) - set(exposed_names()))
    assert not unknown, f"rules.yml uses {unknown}, which Metrics() does not export"


def test_dashboard_has_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in (
        "throughput",
        "consumer lag",
        "alerts by severity",
        "dead letters by reason",
        "score distribution",
        "model version",
        "feature drift",
        "batch stage latency",
        "record-to-alert latency p99",
    ):
        assert wanted in titles, f"no panel for {wanted!r}"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_a_wrong_suffix_is_caught() -> None:
    """The name check is not fooled by a real family with the wrong suffix."""
    known = exposed_names()
    assert "netfraud_alerts_total" in known
    assert "netfraud_alerts_bucket" not in known  # counter, not histogram
    assert "netfraud_score_bucket" in known
    assert "netfraud_score_total" not in known  # histogram, not counter
    assert "netfraud_consumer_lag" in known
    assert "netfraud_consumer_lag_total" not in known  # gauge


# ---------------------------------------------------------------------------
# deploy/check.sh on good and broken copies


def run_check(deploy: Path, *groups: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEPLOY_CHECK_DIR=str(deploy), DEPLOY_CHECK_REPO=str(REPO))
    # One Kubernetes version keeps the test quick; check.sh itself does two.
    env["DEPLOY_CHECK_K8S_VERSIONS"] = "1.37.0"
    flags = [] if IN_CI else ["--no-install"]  # CI may build tools; locally never
    return subprocess.run(
        ["bash", str(CHECK), *flags, *groups],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    target = tmp_path / "deploy"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.fixture(scope="module")
def validators_ready(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], None]:
    """Per group: skip unless its validators are installed; the pristine tree passes."""
    seen: dict[str, str | None] = {}

    def ready(group: str) -> None:
        if group not in seen:
            copy = tmp_path_factory.mktemp(group) / "deploy"
            shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
            result = run_check(copy, group)
            skips = [line for line in result.stdout.splitlines() if line.startswith("skip")]
            if skips and not IN_CI:
                seen[group] = "; ".join(skips)
            else:
                assert result.returncode == 0, (
                    f"deploy/check.sh {group} fails on the unmodified files:\n"
                    f"{result.stdout}{result.stderr}"
                )
                seen[group] = None
        if seen[group]:
            pytest.skip(f"validators for {group!r} not installed ({seen[group]})")

    return ready


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}; update this test"
    path.write_text(text.replace(old, new, 1))


BREAKAGES = {
    # group, file, old, new, the check line that must fail
    "compose: unknown service key": (
        "compose",
        "compose.yaml",
        "    stop_grace_period: 45s\n",
        "    stop_grace_period: 45s\n    restart_policy: always\n",
        "compose-spec JSON schema",
    ),
    "compose: depends_on an undefined service": (
        "compose",
        "compose.yaml",
        "    depends_on:\n      - netfraud\n",
        "    depends_on:\n      - netfraud-typo\n",
        "compose-go",
    ),
    "k8s: unknown Deployment field": (
        "k8s",
        "k8s/deployment.yaml",
        "      automountServiceAccountToken: false\n",
        "      automountServiceAccountTokens: false\n",
        "kubeconform",
    ),
    "k8s: replicas above the partition count": (
        "k8s",
        "k8s/deployment.yaml",
        "  replicas: 3\n",
        "  replicas: 8\n",
        "project rules",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_check_sh_fails_on_a_broken_file(
    case: str, deploy_copy: Path, validators_ready: Callable[[str], None]
) -> None:
    group, relpath, old, new, failing = BREAKAGES[case]
    validators_ready(group)
    edit(deploy_copy / relpath, old, new)
    result = run_check(deploy_copy, group)
    assert result.returncode != 0, f"check.sh accepted a broken {relpath}:\n{result.stdout}"
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any(failing in line for line in failed), (
        f"expected the {failing!r} check to fail; got:\n{result.stdout}"
    )
