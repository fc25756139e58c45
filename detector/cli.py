"""The ``netfraud`` command: one entry point, one subcommand per job.

Flags override environment variables (``NETFRAUD_<SECTION>__<KEY>``), which
override the TOML file given by ``--config``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from detector import logs
from detector.errors import ConfigError, NetfraudError
from detector.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config, _overrides(args))
        logs.configure(settings.log.level, settings.log.format)
        return int(args.handler(args, settings))
    except NetfraudError as exc:
        print(f"netfraud: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


#: Flag destination -> dotted settings key.
_SETTING_FLAGS = {
    "bootstrap_servers": "kafka.bootstrap_servers",
    "client": "kafka.client",
    "topics": "topics.input",
    "format": "topics.format",
    "alerts_topic": "topics.alerts",
    "dead_letter_topic": "topics.dead_letters",
    "group": "consumer.group_id",
    "model_dir": "model.registry",
    "device": "model.device",
    "metrics_port": "metrics.port",
    "log_level": "log.level",
    "log_format": "log.format",
    "delivery": "delivery.mode",
    "feedback_topic": "topics.feedback",
    "archive_dir": "archive.path",
    "retrain_every": "retrain.every",
    "window_hours": "retrain.window_hours",
    "validation_file": "retrain.validation_file",
    "retrain_epochs": "retrain.max_epochs",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, dest, None) for dest, key in _SETTING_FLAGS.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netfraud",
        description="Streaming network-traffic anomaly detection on Kafka.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file (or NETFRAUD_CONFIG)")
    common.add_argument("--bootstrap-servers", help="Kafka host:port[,host:port]")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", choices=["auto", "json", "console"])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="consume, score and publish alerts")
    p.add_argument("--topics", help="input topics, comma-separated")
    p.add_argument("--format", help="record format of the input topics")
    p.add_argument("--group", help="consumer group id")
    p.add_argument("--model-dir", type=Path, help="model registry directory")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--metrics-port", type=int, help="port for /metrics, /healthz, /readyz (0: off)")
    p.add_argument("--alerts-topic")
    p.add_argument("--dead-letter-topic")
    p.add_argument("--feedback-topic", help="analyst feedback and suppressions topic")
    p.add_argument("--delivery", choices=["at-least-once", "exactly-once"])
    p.add_argument(
        "--client",
        choices=["kafka-python", "confluent"],
        help="Kafka client library (confluent needs the confluent extra)",
    )
    p.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="consumer processes in the group: a number or 'auto' (one per core); "
        "worker i serves metrics on --metrics-port + i",
    )
    p.add_argument(
        "--stop-after-idle",
        type=float,
        metavar="SECONDS",
        help="exit once no record has arrived for this long (batch runs, demos)",
    )
    p.add_argument("--archive-dir", type=Path, help="archive below-threshold rows here")
    p.add_argument(
        "--retrain-every",
        metavar="DURATION",
        help="retrain in the background this often: 30m, 6h, 1d (needs the archive)",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser("train", parents=[common], help="train a model bundle from a file")
    p.add_argument(
        "--data", type=Path, required=True, help="JSON lines, CSV, Parquet or a tool's log"
    )
    p.add_argument("--format", help="record format of the file (default: netfraud)")
    p.add_argument("--label-column", default=None, help="label column (default per format)")
    p.add_argument("--benign", default=None, help="label value of normal rows (default per format)")
    p.add_argument("--model-dir", type=Path, help="model registry directory")
    p.add_argument(
        "--target-fpr", type=float, default=0.01, help="false-positive rate to calibrate for"
    )
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="upper bound on training epochs")
    p.add_argument("--no-promote", action="store_true", help="store the bundle without serving it")
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", parents=[common], help="measure a model on a labelled file")
    p.add_argument("--data", type=Path, required=True, help="labelled file in a supported format")
    p.add_argument("--format", help="record format of the file (default: netfraud)")
    p.add_argument("--label-column", default=None, help="label column (default per format)")
    p.add_argument("--benign", default=None, help="label value of normal rows (default per format)")
    p.add_argument("--model-dir", type=Path, help="model registry directory")
    p.add_argument("--version", default=None, help="model version (default: the one in service)")
    p.add_argument("--report", type=Path, required=True, help="directory for report.json and plots")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also fit IsolationForest and PCA on half the normal rows and compare",
    )
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("generate", parents=[common], help="write labelled synthetic flows")
    p.add_argument("--records", type=int, default=50_000, help="normal flows (attacks come on top)")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--start", type=float, default=None, help="epoch seconds of the first flow")
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", type=Path, required=True, help="JSON lines file to write")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("replay", parents=[common], help="publish a file of records to a topic")
    p.add_argument("file", type=Path, nargs="?", help="JSON lines file, or a pcap/pcapng capture")
    p.add_argument("--pcap", type=Path, help="capture to publish as packet records (pcap, pcapng)")
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=None, help="records per second (default: max)")
    p.add_argument(
        "--speed", type=float, default=None, help="captures: replay at X times their own timing"
    )
    p.add_argument("--partitions", type=int, default=3, help="partitions if the topic is created")
    p.add_argument("--key-field", default="src_ip", help="JSON field used as the message key")
    p.set_defaults(handler=_replay)

    p = sub.add_parser("models", parents=[common], help="list, show, promote or roll back models")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("version", nargs="?")
    p.add_argument("--model-dir", type=Path, help="model registry directory")
    p.set_defaults(handler=_models)

    p = sub.add_parser("demo", parents=[common], help="generate, train, stream and report")
    p.add_argument("--workdir", type=Path, default=Path(".demo"))
    p.add_argument("--records", type=int, default=40_000, help="normal flows in the stream")
    p.set_defaults(handler=_demo)
    _analyst_parsers(sub, common)
    _retrain_parser(sub, common)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from detector.serve import serve
    from detector.workers import run_workers, worker_count

    workers = worker_count(args.workers)
    if workers > 1:
        return run_workers(settings, workers, stop_after_idle_s=args.stop_after_idle)
    return serve(settings, stop_after_idle_s=args.stop_after_idle)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.pcap import is_capture
    from detector.tools.train import train_command

    if args.format is None and is_capture(args.data):
        args.format = "packet"  # a capture holds packets, whatever the topics carry
    return train_command(args, settings)


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.evaluate import evaluate_command

    return evaluate_command(args, settings)


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.generate import DEFAULT_START, generate

    rows = generate(
        args.records,
        args.seed,
        not args.no_attacks,
        args.start if args.start is not None else DEFAULT_START,
        args.hours,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    attacks = sum(r["label"] == "attack" for r in rows)
    print(f"wrote {len(rows)} flows ({attacks} attack) to {args.output}")
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.pcap import is_capture, replay_command
    from detector.tools.replay import ensure_topic, json_lines, publish

    if args.pcap is not None or (args.file is not None and is_capture(args.file)):
        return replay_command(args, settings)
    if args.file is None:
        raise ConfigError("replay needs a FILE of JSON lines, or --pcap CAPTURE")
    ensure_topic(settings, args.topic, args.partitions)
    total = sum(1 for _ in args.file.open("rb"))
    sent = publish(settings, args.topic, json_lines(args.file, args.key_field), total, args.rate)
    print(f"published {sent} records to {args.topic}")
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.models import models_command

    return models_command(args, settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.demo import run_demo

    return run_demo(settings, args.workdir, args.records)


def _analyst_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``alerts``, ``feedback`` and ``suppressions``: the analyst's commands."""
    p = sub.add_parser("alerts", parents=[common], help="follow alerts as a table or JSON lines")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since", help="from a time: ISO 8601, or ago as 15m, 2h, 7d")
    start.add_argument("--from-beginning", action="store_true", help="from the first alert")
    p.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep waiting for new alerts (--no-follow: stop at the current end)",
    )
    p.add_argument(
        "--severity", choices=["low", "medium", "high", "critical"], help="lowest severity shown"
    )
    p.add_argument("--host", help="only alerts with this source or destination IP (or network)")
    p.add_argument("--json", action="store_true", help="one alert document per line, no table")
    p.add_argument("--max", type=int, metavar="N", help="stop after N alerts")
    p.add_argument("--alerts-topic")
    p.set_defaults(handler=_alerts)

    p = sub.add_parser("feedback", parents=[common], help="give a verdict on one alert")
    p.add_argument("event_id", metavar="EVENT_ID", help="the alert's event.id (8+ leading digits)")
    p.add_argument("--verdict", required=True, choices=["false-positive", "true-positive"])
    p.add_argument("--note", help="why, for the next analyst")
    p.add_argument("--expires", default="7d", help="suppression lifetime: 2h, 7d, ... (7d)")
    p.add_argument(
        "--scope",
        choices=["host-port", "host", "pattern"],
        default="host-port",
        help="what a false positive suppresses (default: host-port)",
    )
    p.add_argument("--alerts-topic")
    p.add_argument("--feedback-topic")
    p.set_defaults(handler=_feedback)

    p = sub.add_parser("suppressions", parents=[common], help="list or remove suppressions")
    p.add_argument("action", choices=["list", "remove"])
    p.add_argument("rule_id", nargs="?", metavar="RULE_ID", help="for remove: the rule's id")
    p.add_argument("--all", action="store_true", help="list expired and removed rules too")
    p.add_argument("--json", action="store_true", help="one rule per line as JSON")
    p.add_argument("--feedback-topic")
    p.set_defaults(handler=_suppressions)


def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.alerts_cli import alerts_command

    return alerts_command(args, settings)


def _feedback(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.feedback import feedback_command

    return feedback_command(args, settings)


def _suppressions(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.feedback import suppressions_command

    return suppressions_command(args, settings)


def _retrain_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``retrain``: exit 0 promoted, 3 champion kept, 1 failed."""
    p = sub.add_parser(
        "retrain",
        parents=[common],
        help="train a challenger on recent traffic; promote it if it passes the gate",
        description="Exit codes: 0 challenger promoted, 3 champion kept, 1 failed.",
    )
    p.add_argument("--model-dir", type=Path, help="model registry directory")
    p.add_argument("--archive-dir", type=Path, help="archive to train from ([archive] path)")
    p.add_argument("--window-hours", type=float, help="hours of archive, up to its newest row")
    p.add_argument("--from-topic", metavar="TOPIC", help="read the window from Kafka instead")
    p.add_argument("--since", help="window start, ISO 8601 (Kafka timestamps with --from-topic)")
    p.add_argument("--until", help="window end (exclusive), ISO 8601")
    p.add_argument("--validation-file", type=Path, help="labelled file for detection figures")
    p.add_argument("--epochs", dest="retrain_epochs", type=int, help="cap on training epochs")
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_retrain)


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from detector.lifecycle.retrain import retrain_command

    return retrain_command(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
