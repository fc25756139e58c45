"""serve --workers parsing and per-worker settings; confluent-kafka option mapping."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.settings import load_settings
from detector.stream.delivery import transactional_id
from detector.workers import _exit_code, worker_count, worker_settings

confluent = pytest.importorskip("detector.stream.confluent")


def test_worker_count_accepts_numbers_and_auto() -> None:
    """A positive number is taken as is; auto is one worker per usable core."""
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_worker_count_refuses_anything_else(value: str) -> None:
    """Zero, negatives and words are refused with the flag named."""
    with pytest.raises(ConfigError, match="--workers"):
        worker_count(value)


def test_each_worker_gets_its_own_port_member_id_and_transactional_id() -> None:
    """Worker i serves metrics on port + i; ids that must be unique get a suffix."""
    settings = load_settings(
        overrides={
            "metrics.port": 9400,
            "consumer.group_instance_id": "edge",
            "delivery.mode": "exactly-once",
        },
        environ={},
    )
    first, second = worker_settings(settings, 0), worker_settings(settings, 1)
    assert (first.metrics.port, second.metrics.port) == (9400, 9401)
    assert (first.consumer.group_instance_id, second.consumer.group_instance_id) == (
        "edge-0",
        "edge-1",
    )
    assert first.delivery.transactional_id != second.delivery.transactional_id


def test_metrics_stay_off_for_every_worker_when_the_port_is_zero() -> None:
    """A metrics port of 0 keeps the endpoint off in each worker."""
    settings = load_settings(overrides={"metrics.port": 0}, environ={})
    assert worker_settings(settings, 3).metrics.port == 0


def test_a_worker_ended_by_a_forwarded_signal_counts_as_a_clean_stop() -> None:
    """Killed by the SIGTERM the parent passed on: 0; by another signal: 128 + n."""
    assert _exit_code(-signal.SIGTERM, [signal.SIGTERM]) == 0
    assert _exit_code(-signal.SIGKILL, [signal.SIGTERM]) == 128 + signal.SIGKILL
    assert _exit_code(3, []) == 3


def test_consumer_commits_only_what_it_is_told() -> None:
    """Auto commit and offset store are off; the assignment strategy is mapped."""
    settings = load_settings(
        overrides={"consumer.assignment_strategy": "cooperative-sticky"}, environ={}
    )
    config = confluent.consumer_config(settings)
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky"


def test_an_assignor_librdkafka_lacks_is_refused() -> None:
    """librdkafka has no eager sticky assignor: say so instead of failing later."""
    settings = load_settings(overrides={"consumer.assignment_strategy": "sticky"}, environ={})
    with pytest.raises(ConfigError, match="sticky"):
        confluent.consumer_config(settings)


def test_producer_is_idempotent_with_acks_all_and_not_with_acks_1() -> None:
    """acks=all brings idempotence; acks=1 cannot have it."""
    strong = confluent.producer_config(load_settings(environ={}))
    weak = confluent.producer_config(load_settings(overrides={"producer.acks": "1"}, environ={}))
    assert (strong["acks"], strong["enable.idempotence"]) == ("all", True)
    assert (weak["acks"], weak["enable.idempotence"]) == (1, False)


def test_exactly_once_makes_the_producer_transactional_and_reads_committed() -> None:
    """Exactly-once: a transactional id (with idempotence and acks=all even if
    acks=1 was asked for), and input read as committed; neither otherwise."""
    settings = load_settings(
        overrides={"delivery.mode": "exactly-once", "producer.acks": "1"}, environ={}
    )
    producer = confluent.producer_config(settings)
    assert producer["transactional.id"] == transactional_id(settings)
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)
    assert confluent.consumer_config(settings)["isolation.level"] == "read_committed"
    plain = load_settings(environ={})
    assert "transactional.id" not in confluent.producer_config(plain)
    assert confluent.consumer_config(plain)["isolation.level"] == "read_uncommitted"


def test_sasl_ssl_settings_map_to_librdkafka_names(tmp_path: Path) -> None:
    """SASL credentials (password from its file) and TLS files keep their meaning."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = load_settings(
        overrides={
            "kafka.security_protocol": "SASL_SSL",
            "kafka.sasl_mechanism": "SCRAM-SHA-256",
            "kafka.sasl_username": "netfraud",
            "kafka.sasl_password_file": str(secret),
            "kafka.ssl_cafile": "/etc/ca.pem",
            "kafka.ssl_check_hostname": False,
        },
        environ={},
    )
    config = confluent.connection_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl.username"], config["sasl.password"]) == ("netfraud", "s3cret")
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert "ssl.certificate.location" not in config
