"""Prometheus metrics that ``serve`` exports.

Labels never carry addresses or other unbounded values: only topic,
partition, severity, stage, reason kind and model version.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Buckets for per-batch stage timings and record-to-alert latency, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The detector's metrics, registered in their own registry.

    A registry per instance keeps tests and several loops in one process
    from colliding.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "netfraud_records_consumed", "Records read from input topics.", ["topic"], registry=r
        )
        self.records_scored = Counter(
            "netfraud_records_scored", "Records that were scored.", registry=r
        )
        self.records_invalid = Counter(
            "netfraud_records_invalid",
            "Records sent to the dead-letter topic, by kind of reason.",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            "netfraud_alerts", "Alerts published, by severity.", ["severity"], registry=r
        )
        self.suppressed = Counter(
            "netfraud_alerts_suppressed", "Alerts withheld by a suppression rule.", registry=r
        )
        self.batch_seconds = Histogram(
            "netfraud_batch_stage_seconds",
            "Time spent per micro-batch in each stage of the loop.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.alert_latency = Histogram(
            "netfraud_record_to_alert_seconds",
            "From the record's Kafka timestamp to its alert being acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score = Histogram(
            "netfraud_score",
            "Anomaly scores (higher is more anomalous; 1.0 is the threshold).",
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2, 4, 8, 16, 64),
            registry=r,
        )
        self.lag = Gauge(
            "netfraud_consumer_lag",
            "Records behind the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "netfraud_model_info",
            "The model version in service (value 1).",
            ["version"],
            registry=r,
        )
        self.commit_failures = Counter(
            "netfraud_commit_failures", "Offset commits that failed.", registry=r
        )
        self.produce_failures = Counter(
            "netfraud_produce_failures",
            "Batches whose alerts or dead letters were not acknowledged.",
            registry=r,
        )
        self.model_reloads = Counter(
            "netfraud_model_reloads",
            "Model swaps attempted by hot reload, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "netfraud_feature_drift_psi",
            "Population stability index of a feature against training data.",
            ["feature"],
            registry=r,
        )
        self.paused = Gauge(
            "netfraud_consumer_paused",
            "1 while consumption is paused for backpressure.",
            registry=r,
        )

    def set_model(self, version: str) -> None:
        """Record which model version is in service."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
