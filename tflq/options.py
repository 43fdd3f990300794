"""Converter modes and options: plain values, no TensorFlow import (cheap to validate)."""

from __future__ import annotations

import dataclasses
import enum

from tflq.settings import setting

__all__ = ["Mode", "ALL_MODES", "RANGE_ESTIMATORS", "EQUALIZE_RELU6", "parse_modes",
           "ConvertOptions"]


class Mode(str, enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"
    INT8 = "int8"
    INT16X8 = "int16x8"

    def __str__(self) -> str:
        return self.value

    @property
    def needs_calibration(self) -> bool:
        return self in (Mode.INT8, Mode.INT16X8)

    @property
    def integer_only(self) -> bool:
        """True when every op must run on integer kernels (float ops are an error)."""
        return self in (Mode.INT8, Mode.INT16X8)


ALL_MODES = tuple(m.value for m in Mode)
# Activation range estimators of :mod:`tflq.ptq.ranges` (named here: options are a leaf).
RANGE_ESTIMATORS = ("minmax", "percentile", "mse", "kl")
# How cross-layer equalization treats ReLU6 (:data:`tflq.ptq.equalize.RELU6_MODES`).
EQUALIZE_RELU6 = ("bounded", "relu", "keep")


def parse_modes(text: str | list[str]) -> list[Mode]:
    """Parses a comma list (or list) of mode names, keeping order, refusing unknown ones."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"No conversion mode given. Available: {list(ALL_MODES)}")
    modes = []
    for name in names:
        if name not in ALL_MODES:
            raise ValueError(f"Unknown mode {name!r}. Available: {sorted(ALL_MODES)}")
        if Mode(name) not in modes:
            modes.append(Mode(name))
    return modes


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Converter settings shared by all modes.

    Attributes:
      integer_io: int8 (int16 for ``int16x8``) model input/output instead of float32.
      per_channel: per-channel weight scales for ``int8`` (the TFLite default).
      allow_float_ops: let ``int8``/``int16x8`` keep ops without integer kernels in float.
      range_estimator: ``int8`` activation ranges from :mod:`tflq.ptq.ranges` (``minmax``,
        ``percentile``, ``mse``, ``kl``) instead of the converter's min/max; None: the
        converter's own calibration.
      percentile: for ``range_estimator="percentile"``.
      equalize: ``int8`` after cross-layer equalization and bias correction
        (:mod:`tflq.ptq.equalize`; with ``adaround`` the learned rounding replaces the bias
        correction; per tensor, weight ranges clipped first:
        :mod:`tflq.ptq.weight_clip`); ``equalize_relu6`` how it treats ReLU6 (``bounded``,
        ``relu``, ``keep``: :data:`tflq.ptq.equalize.RELU6_MODES`).
      selective: keep the fewest most sensitive ``int8`` ops in float that bring the
        accuracy drop within the ``max_accuracy_drop`` gate and/or the agreement above
        ``min_agreement`` on calibration samples held apart (:mod:`tflq.ptq.selective`).
      adaround: ``int8`` weights rounded by AdaRound (:mod:`tflq.ptq.adaround`) on the
        calibration data; ``adaround_bits`` 8 (int8) or 4 (15 int8 code levels),
        ``adaround_iterations`` steps per layer, ``adaround_reg`` the regularizer weight λ.
      range_search: ``int8`` activation ranges searched tensor by tensor for the smallest
        model output error on the calibration samples, starting from the ``percentile``
        estimator, set in the converter's own calibrated model (:mod:`tflq.ptq.thresholds`).
      auto: ``int8`` from the best of the plain converter and tflq's methods, scored on a
        slice of the calibration data held apart for selection (:mod:`tflq.ptq.auto`).
    """

    integer_io: bool = setting(
        "int8/int16x8 models take and return integers instead of float32.", False)
    per_channel: bool = setting("int8 weights per tensor instead of per channel.", True,
                                flag="per_tensor", negate=True)
    allow_float_ops: bool = setting(
        "Let int8/int16x8 keep ops without integer kernels in float.", False)
    range_estimator: str | None = setting(
        "int8 activation ranges from tflq's estimators instead of the converter's min/max "
        "(tf_keras models).", None, choices=RANGE_ESTIMATORS)
    percentile: float = setting("Percentile for --range_estimator=percentile.", 99.99)
    equalize: bool = setting("int8 after cross-layer equalization and bias correction "
                             "(with --adaround, its learned rounding replaces the bias "
                             "correction; tf_keras models).", False)
    equalize_relu6: str = setting(
        "How --equalize treats ReLU6: bounded (kept; a channel is scaled only as far as no "
        "calibration activation changes whether it is clipped, so the float model is "
        "unchanged on that data: channels ReLU6 clips keep scale 1), relu (replaced by ReLU "
        "as Nagel et al. do: every channel can be scaled, the float model changes where "
        "activations exceed 6) or keep (pairs "
        "through ReLU6 are not equalized).", "bounded", choices=EQUALIZE_RELU6)
    selective: bool = setting(
        "int8 keeps the fewest most sensitive ops in float (TFLite's QuantizationDebugger "
        "RMSE/scale) that bring the accuracy drop within --max_accuracy_drop (labelled data) "
        "and/or the top-1 agreement above --min_agreement, chosen on one calibration sample in "
        "five held apart (never on --eval_data); if even all-float misses it, the best model is "
        "written and the gate exits 3.", False)
    adaround: bool = setting(
        "int8 weights rounded by AdaRound (learned up/down rounding, layer by layer on the "
        "calibration data); the .tflite carries exactly the learned codes.", False)
    adaround_bits: int = setting(
        "AdaRound weight grid: 8 (int8) or 4 (15 int8 code levels per channel: 0, ±18, ±36, "
        "±54, ±73, ±91, ±109, ±127, times T_c/127 with a clipping threshold T_c chosen per "
        "channel for the smallest layer output error; biases then corrected).", 8,
        choices=(8, 4))
    adaround_iterations: int = setting("AdaRound optimizer steps per layer.", 500)
    adaround_reg: float = setting("AdaRound rounding-regularizer weight λ.", 0.01)
    auto: bool = setting(
        "int8 from the best of the plain converter, the range estimators, range search, "
        "equalization and AdaRound, "
        "chosen on one calibration sample in five held apart (never on --eval_data); the report "
        "lists every candidate's score.", False)
    range_search: bool = setting(
        "int8 activation ranges searched tensor by tensor for the smallest model output error "
        "on the calibration samples (changes kept only when better on both halves), set in the "
        "converter's own calibrated model and quantized by the converter.", False)

    def __post_init__(self):
        if self.range_estimator is not None:
            if self.range_estimator not in RANGE_ESTIMATORS:
                raise ValueError(f"Unknown range estimator {self.range_estimator!r}. "
                                 f"Available: {list(RANGE_ESTIMATORS)}")
            if not self.per_channel:
                raise ValueError("Range estimators calibrate through tflq's QAT graph, which "
                                 "has per-channel weights: drop --per_tensor or the estimator.")
        if self.selective and (self.integer_io or self.range_estimator or self.equalize):
            raise ValueError("--selective works on the converter's own int8 with float I/O: "
                             "drop --integer_io, --range_estimator and --equalize.")
        if self.range_search and (self.range_estimator or self.selective):
            raise ValueError("--range_search sets the activation ranges itself, in the "
                             "converter's own int8: drop --range_estimator and --selective.")
        if self.auto and (self.range_estimator or self.equalize or self.selective
                          or self.adaround or self.range_search):
            raise ValueError("--auto chooses the range estimator, range search, equalization "
                             "and AdaRound itself: drop --range_estimator, --range_search, "
                             "--equalize, --adaround and --selective.")
        if self.equalize_relu6 not in EQUALIZE_RELU6:
            raise ValueError(f"equalize_relu6 must be one of {list(EQUALIZE_RELU6)}. "
                             f"Received: {self.equalize_relu6!r}")
        if self.equalize_relu6 != "bounded" and not self.equalize:
            raise ValueError("--equalize_relu6 needs --equalize.")
        if self.adaround_bits not in (8, 4):
            raise ValueError(f"adaround_bits must be 8 or 4. Received: {self.adaround_bits!r}")
        if self.adaround_bits != 8 and not self.adaround:
            raise ValueError("--adaround_bits needs --adaround.")
        if not isinstance(self.adaround_iterations, int) or self.adaround_iterations < 1:
            raise ValueError(f"adaround_iterations must be a positive integer. Received: "
                             f"{self.adaround_iterations!r}")
        if not self.adaround_reg >= 0:
            raise ValueError(f"adaround_reg must be >= 0. Received: {self.adaround_reg!r}")
        if self.selective and self.adaround:
            raise ValueError("--selective works on the converter's own int8: drop --adaround.")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100]. Received: {self.percentile}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
