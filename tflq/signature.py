"""Model input/output specs: plain values, no TensorFlow import."""

from __future__ import annotations

import dataclasses

__all__ = ["TensorSpec"]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, shape without the batch axis, and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
