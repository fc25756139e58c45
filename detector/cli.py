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
from detector.errors import NetfraudError
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
    p.add_argument("--delivery", choices=["at-least-once", "exactly-once"])
    p.add_argument(
        "--stop-after-idle",
        type=float,
        metavar="SECONDS",
        help="exit once no record has arrived for this long (batch runs, demos)",
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

    p = sub.add_parser("generate", parents=[common], help="write labelled synthetic flows")
    p.add_argument("--records", type=int, default=50_000, help="normal flows (attacks come on top)")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--start", type=float, default=None, help="epoch seconds of the first flow")
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", type=Path, required=True, help="JSON lines file to write")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("replay", parents=[common], help="publish a file of records to a topic")
    p.add_argument("file", type=Path)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, default=None, help="records per second (default: max)")
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
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from detector.serve import serve

    return serve(settings, stop_after_idle_s=args.stop_after_idle)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from detector.tools.train import train_command

    return train_command(args, settings)


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
    from detector.tools.replay import ensure_topic, json_lines, publish

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


if __name__ == "__main__":
    raise SystemExit(main())
