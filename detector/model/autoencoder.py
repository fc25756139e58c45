"""A dense autoencoder whose reconstruction error is the anomaly score.

Contract: a higher score always means more anomalous. The model is trained on
normal traffic only, so records it reconstructs badly are unlike that traffic.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Activation = Literal["relu", "gelu", "tanh", "silu"]
Norm = Literal["none", "layer", "batch"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and training hyper-parameters, saved beside the weights.

    Attributes:
        hidden: Widths of the encoder's hidden layers (mirrored by the decoder).
        bottleneck: Width of the code layer.
        activation: Non-linearity between layers.
        dropout: Dropout rate after each hidden layer (training only).
        norm: Normalisation after each hidden layer.
        denoise: Standard deviation of Gaussian noise added to inputs during
            training (targets stay clean); 0 disables it.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Rows per training step.
        max_epochs: Upper bound on passes over the training rows.
        patience: Epochs without improvement of the held-out loss before
            training stops.
        seed: Seeds weight initialisation, shuffling and noise.
    """

    hidden: tuple[int, ...] = (64, 32)
    bottleneck: int = 12
    activation: Activation = "gelu"
    dropout: float = 0.0
    norm: Norm = "none"
    denoise: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    max_epochs: int = 200
    patience: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        values = dict(data)
        values["hidden"] = tuple(values.get("hidden", cls.hidden))
        return cls(**values)


class Autoencoder(nn.Module):
    """Encoder ``width -> hidden... -> bottleneck``, decoder mirrored."""

    def __init__(self, width: int, config: AutoencoderConfig) -> None:
        super().__init__()
        self.width = width
        self.config = config
        sizes = [width, *config.hidden, config.bottleneck]
        self.encoder = self._stack(sizes, last_plain=False)
        self.decoder = self._stack(sizes[::-1], last_plain=True)

    def _stack(self, sizes: list[int], last_plain: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if last_plain and i == len(sizes) - 2:
                break
            if self.config.norm == "layer":
                layers.append(nn.LayerNorm(b))
            elif self.config.norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            layers.append(_ACTIVATIONS[self.config.activation]())
            if self.config.dropout > 0:
                layers.append(nn.Dropout(self.config.dropout))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` (rows x width)."""
        return self.decoder(self.encoder(x))  # type: ignore[no-any-return]
