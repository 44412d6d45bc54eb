"""Quantization recipes: what to quantize. Each export target maps the scheme onto its own packing (how)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCHEMES = ("none", "fp16", "int8", "int4")


@dataclass(frozen=True)
class QuantizationRecipe:
    """``scheme`` for the linear layers (and embedding where a target supports it); state I/O stays float32.

    - ``fp16``: weights and compute in float16.
    - ``int8``: 8-bit weights, dynamic 8-bit activations where the target supports them.
    - ``int4``: 4-bit grouped weights (``group_size`` columns share a scale); activations per target.
    """

    scheme: str = "none"
    group_size: int = 32

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"quantize must be one of {list(SCHEMES)}, got {self.scheme!r}")
        if self.group_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"group_size must be one of 16, 32, 64, 128, 256, got {self.group_size}")

    @property
    def tag(self) -> str:
        """Short name used in file names and reports (``none`` -> ``fp32``)."""
        return "fp32" if self.scheme == "none" else self.scheme

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizationRecipe":
        return cls(**data)
