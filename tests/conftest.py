"""Shared fixtures: the session's Kafka broker and a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_fixtures import (  # noqa: F401
    kafka_broker,
    pytest_runtest_makereport,
    topic_factory,
)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated training flows (normal only) and a stream with attacks."""
    from helpers import write_jsonl

    from detector.tools.generate import DEFAULT_START, generate

    root = tmp_path_factory.mktemp("data")
    train = write_jsonl(root / "train.jsonl", generate(24_000, seed=11, attacks=False, hours=24))
    stream = write_jsonl(
        root / "stream.jsonl",
        generate(6_000, seed=12, attacks=True, start=DEFAULT_START + 86_400, hours=6, episodes=5),
    )
    return {"train": train, "stream": stream}


@pytest.fixture(scope="session")
def model_registry(demo_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one small model in service, trained on ``demo_data``."""
    from detector.model.autoencoder import AutoencoderConfig
    from detector.model.fit import TrainOptions, train_bundle
    from detector.model.registry import Registry
    from detector.tools.train import load_labelled

    batch, normal = load_labelled(demo_data["train"], "netfraud")
    bundle = train_bundle(
        batch, normal, AutoencoderConfig(max_epochs=25, seed=3), TrainOptions(device="cpu", seed=3)
    )
    registry = Registry(tmp_path_factory.mktemp("models"))
    registry.publish(bundle)
    registry.promote(bundle.version)
    return registry.root
