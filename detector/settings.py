"""One validated, frozen settings object, from file, environment and flags.

Sources, in rising priority:

1. a TOML file (``--config PATH`` or ``NETFRAUD_CONFIG``);
2. environment variables ``NETFRAUD_<SECTION>__<KEY>``, for example
   ``NETFRAUD_KAFKA__BOOTSTRAP_SERVERS=broker:9092``;
3. command-line flags.

An unknown or invalid key is a :class:`~detector.errors.ConfigError` that
names the key and says how to fix it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from detector.errors import ConfigError

ENV_PREFIX = "NETFRAUD_"
#: Variables with the prefix that configure tooling, not the detector.
TOOLING_VARIABLES = frozenset(
    {"NETFRAUD_CONFIG", "NETFRAUD_CACHE", "NETFRAUD_KAFKA_PORT", "NETFRAUD_KAFKA_DIR"}
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Connection to the Kafka cluster."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python", description="Kafka client library (confluent needs the extra)"
    )
    client_id: str = "netfraud"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="prefer sasl_password_file")
    sasl_password_file: Path | None = Field(None, description="file holding the password")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the broker")
    ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(None, description="client private key (mutual TLS)")
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    request_timeout_ms: int = Field(30_000, gt=0)

    def password(self) -> str | None:
        """The SASL password, read from its file when one is given."""
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return self.sasl_password.get_secret_value() if self.sasl_password else None


class TopicSettings(_Section):
    """Where records come from and where results go."""

    input: tuple[str, ...] = Field(("netfraud.flows",), description="input topics")
    format: str = Field("netfraud", description="record format of input topics")
    formats: dict[str, str] = Field(
        default_factory=dict, description="per-topic format, overriding `format`"
    )
    alerts: str = "netfraud.alerts"
    dead_letters: str = "netfraud.dead-letters"
    feedback: str = "netfraud.feedback"

    @field_validator("input", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return (
            tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, str)
            else value
        )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        _check_format(value)
        return value

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value.values():
            _check_format(name)
        return value

    def format_of(self, topic: str) -> str:
        """The record format of an input topic."""
        return self.formats.get(topic, self.format)


def _check_format(name: str) -> None:
    from features.formats import names

    known = names()
    if name not in known:
        raise ValueError(f"unknown record format {name!r}; use one of: {', '.join(known)}")


class ConsumerSettings(_Section):
    """Consumer group and micro-batching."""

    group_id: str = "netfraud"
    max_batch_records: int = Field(5_000, gt=0, description="records per micro-batch at most")
    max_batch_wait_ms: int = Field(200, ge=0, description="wait for a fuller batch at most")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(10_000, gt=0)
    heartbeat_interval_ms: int = Field(3_000, gt=0)
    max_poll_interval_ms: int = Field(300_000, gt=0)
    fetch_max_bytes: int = Field(
        16_777_216, gt=0, description="most bytes one fetch returns, all partitions together"
    )
    max_partition_fetch_bytes: int = Field(
        2_097_152,
        gt=0,
        description="per-partition fetch size; larger buffers more memory (docs/performance.md)",
    )
    group_instance_id: str | None = Field(None, description="static membership id")
    assignment_strategy: Literal["range", "roundrobin", "sticky", "cooperative-sticky"] = Field(
        "range",
        description="how partitions are split between instances (cooperative-sticky: "
        "incremental rebalances; change it in two rolling steps, see docs/operating.md)",
    )


class ProducerSettings(_Section):
    """Alert and dead-letter producer."""

    acks: Literal["all", "1"] = "all"
    linger_ms: int = Field(5, ge=0)
    batch_size: int = Field(262_144, gt=0)
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"
    flush_timeout_s: float = Field(30.0, gt=0, description="wait for acknowledgements at most")
    max_pending_batches: int = Field(
        4, gt=0, description="unacknowledged batches before consumption pauses"
    )


class ModelSettings(_Section):
    """Which model scores, and where."""

    registry: Path = Field(Path(".models"), description="model registry directory")
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    threads: int = Field(
        1,
        ge=0,
        description="torch CPU threads per process (0: torch's default); scale with workers",
    )
    reload_interval_s: float = Field(5.0, gt=0, description="how often to look for a promotion")
    explain_top: int = Field(3, ge=1, le=20, description="features named in each alert")


class ContextSettings(_Section):
    """Per-source-host state for the context features."""

    max_keys: int = Field(100_000, gt=0, description="source hosts kept in memory at most")
    idle_timeout_s: float = Field(3_600.0, gt=0, description="forget hosts idle this long")
    warmup_records: int = Field(
        20_000,
        ge=0,
        description="after an assignment, re-read this many already-scored records per "
        "partition to rebuild context state before scoring (0: start cold)",
    )


class DeliverySettings(_Section):
    """Delivery guarantee for alerts."""

    mode: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id: str | None = Field(
        None,
        description="exactly-once: unique per instance and stable across its restarts "
        "(default: <group>-<host>-<group_instance_id, else m<metrics port>>)",
    )


class MetricsSettings(_Section):
    """Prometheus metrics and health endpoints."""

    port: int = Field(9309, ge=0, le=65535, description="0 disables the HTTP endpoint")
    host: str = "0.0.0.0"
    summary_interval_s: float = Field(10.0, gt=0, description="seconds between summary logs")


class ArchiveSettings(_Section):
    """Archive of records scored below the threshold, for retraining."""

    path: Path | None = Field(None, description="directory of hourly Parquet files")
    retention_hours: float = Field(168.0, gt=0)
    flush_rows: int = Field(50_000, gt=0, description="buffered rows that trigger a write")
    flush_interval_s: float = Field(60.0, gt=0, description="write buffered rows this often")


class RetrainSettings(_Section):
    """Retraining a challenger from recent traffic, the gate it must pass, and its schedule."""

    window_hours: float = Field(
        24.0, gt=0, description="hours of archived traffic to train on, ending at the newest row"
    )
    min_rows: int = Field(5_000, gt=0, description="fewer usable rows in the window: no retrain")
    holdout_share: float = Field(
        0.2, gt=0, lt=1, description="share of the window held out to compare the models"
    )
    validation_file: Path | None = Field(None, description="labelled file for detection figures")
    validation_format: str = Field("netfraud", description="record format of validation_file")
    max_fpr_ratio: float = Field(
        1.25, gt=0, description="challenger false-positive rate at most this x the champion's"
    )
    max_detection_drop: float = Field(
        0.02, ge=0, le=1, description="detection rate on validation_file may fall this much"
    )
    max_epochs: int | None = Field(None, gt=0, description="cap on epochs (default: champion's)")
    every: float | None = Field(
        None, gt=0, description="seconds between retrains inside serve (30m, 6h, 1d accepted)"
    )

    @field_validator("every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        if isinstance(value, str) and value.strip()[-1:].lower() in units:
            text = value.strip()
            try:
                return float(text[:-1]) * units[text[-1].lower()]
            except ValueError:
                raise ValueError(f"not a duration: {value!r} (use 90s, 30m, 6h or 1d)") from None
        return value


class DriftSettings(_Section):
    """Drift of serving traffic against the training snapshot, and alert-rate jumps."""

    every_records: int = Field(10_000, gt=0, description="records per drift (PSI) update")
    alert_rate_factor: float = Field(
        3.0, gt=1, description="warn when the alert rate exceeds this x the calibrated rate"
    )
    alert_window_records: int = Field(
        5_000, gt=0, description="recent records the alert rate is measured over"
    )
    alert_sustained_s: float = Field(
        60.0, ge=0, description="how long the rate must stay high before the warning"
    )


class LimitsSettings(_Section):
    """Resource ceilings the loop enforces on itself."""

    max_rss_mb: float = Field(
        1_536.0,
        ge=0,
        description="pause consumption while this process's resident memory exceeds this many "
        "MiB (0: off); keep it under the container limit divided by --workers",
    )


class LogSettings(_Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section):
    """Everything netfraud can be configured with."""

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    producer: ProducerSettings = ProducerSettings()
    model: ModelSettings = ModelSettings()
    context: ContextSettings = ContextSettings()
    delivery: DeliverySettings = DeliverySettings()
    metrics: MetricsSettings = MetricsSettings()
    archive: ArchiveSettings = ArchiveSettings()
    retrain: RetrainSettings = RetrainSettings()
    drift: DriftSettings = DriftSettings()
    limits: LimitsSettings = LimitsSettings()
    log: LogSettings = LogSettings()

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked (for logging)."""
        return self.model_dump(mode="json")


def load_settings(
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge file, environment and flags into validated settings.

    Args:
        config: TOML file; ``NETFRAUD_CONFIG`` when omitted; none if neither.
        overrides: Dotted keys from command-line flags (``"consumer.group_id"``);
            ``None`` values are ignored.
        environ: The environment (``os.environ`` by default).

    Raises:
        ConfigError: Naming the file, variable or key that is wrong.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    path = config or (Path(env["NETFRAUD_CONFIG"]) if env.get("NETFRAUD_CONFIG") else None)
    if path is not None:
        _merge(merged, _read_toml(path))
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name not in TOOLING_VARIABLES:
            _set(merged, _env_key(name), value, origin=f"environment variable {name}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(merged, key.split("."), value, origin=f"flag for {key}")
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; check --config or NETFRAUD_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _env_key(name: str) -> list[str]:
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"environment variable {name} is not of the form "
            f"NETFRAUD_<SECTION>__<KEY> (for example NETFRAUD_KAFKA__BOOTSTRAP_SERVERS)"
        )
    return parts


def _set(target: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = target
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            section = _section_of(error["loc"])
            lines.append(f"unknown setting {key!r}; known keys here: {', '.join(section)}")
        else:
            lines.append(f"invalid setting {key!r}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(lines)


def _section_of(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return sorted(model.model_fields)
