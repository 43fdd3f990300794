"""Calibration, training and evaluation inputs for each corpus model of the conformance
benchmark, by the ``data`` kind its manifest entry (``benchmarks/corpus.json``) names.

* ``photos``: natural photos (:func:`benchmarks.corpus.fetch_images`), split by photo between
  the calibration/training side and the evaluation side, multiplied by seeded crops
  (:mod:`benchmarks.photo_crops`) and scaled as the model expects (``raw`` 0..255, ``unit``
  x/255, ``signed`` x/127.5 − 1).
* ``features``: seeded standard-normal arrays of the input's shape. No real speech or MFCC
  data is reachable offline here, so the keyword-spotting rows convert real weights on
  synthetic features: their agreement figures say how the quantized model follows the float
  one on such inputs, not on speech.
* ``tokens``: seeded random token ids in [1, vocabulary) of the model's first Embedding.
* ``tones``: seeded synthetic audio at 22,050 Hz: three sine partials at random MIDI pitches
  48–84 with a decaying envelope plus −40 dB noise (Basic Pitch's input is raw audio).

Labels: none of these inputs has ground truth. Jobs that need labels (QAT ``gradient``,
compress) get the float model's own top-1 (single classification output), or, for
multi-output models, the float model's outputs as ``y_<output name>`` targets in an .npz.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import corpus, photo_crops

__all__ = ["SAMPLE_RATE", "SCALES", "make_tones", "inputs_for", "pseudo_labels", "write_npz"]

SAMPLE_RATE = 22050
SCALES = {"raw": (1.0, 0.0), "unit": (1.0 / 255.0, 0.0), "signed": (1.0 / 127.5, -1.0)}


def _vocabulary(model) -> int:
    keras_model = model.keras_model
    for layer in getattr(keras_model, "layers", []):
        if type(layer).__name__ == "Embedding":
            return int(layer.input_dim)
    raise ValueError(f"{model.source}: token inputs need an Embedding layer; none found")


def make_tones(count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    out = np.empty((count, length, 1), np.float32)
    for i in range(count):
        wave = np.zeros(length)
        for _ in range(3):
            frequency = 440.0 * 2 ** ((rng.integers(48, 85) - 69) / 12)
            onset = rng.uniform(0, t[-1] / 2)
            envelope = np.where(t >= onset, np.exp(-(t - onset) * rng.uniform(1, 4)), 0.0)
            wave += 0.2 * envelope * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 6.28))
        wave += 0.01 * rng.standard_normal(length)
        out[i, :, 0] = wave
    return out


def inputs_for(model, data: dict, counts: dict[str, int], seed: int = 0,
               cache: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{side: {input name: array}}`` for the sides in ``counts`` (``calibration``,
    ``train``, ``eval``); ``eval`` never shares a photo with the other sides."""
    spec = model.inputs[0]
    if len(model.inputs) != 1:
        raise ValueError(f"{model.source}: the conformance data covers single-input models. "
                         f"Received: {len(model.inputs)} inputs")
    shape = tuple(spec.shape)
    out = {}
    for k, (side, count) in enumerate(sorted(counts.items())):
        rng = np.random.default_rng(seed + 1000 * k)
        kind = data["kind"]
        if kind == "photos":
            photos = corpus.fetch_images(cache or corpus.DEFAULT_CACHE)
            fit_side, eval_side = photo_crops.split_photos(photos, seed=seed)
            keys = eval_side if side == "eval" else fit_side
            crops = photo_crops.make_crops([photos[key] for key in keys], count,
                                           data["input_size"], seed + 1000 * k)
            scale, offset = SCALES[data["scale"]]
            array = crops * scale + offset
        elif kind == "features":
            array = rng.standard_normal((count, *shape))
        elif kind == "tokens":
            array = rng.integers(1, _vocabulary(model), (count, *shape))
        elif kind == "tones":
            array = make_tones(count, shape[0], rng)
        else:
            raise ValueError(f"Unknown data kind {kind!r}. Available: photos, features, "
                             "tokens, tones")
        out[side] = {spec.name: np.asarray(array, dtype=spec.dtype)}
    return out


def pseudo_labels(model, x: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """The float model's outputs on ``x`` by output name (the targets used as labels)."""
    n = len(next(iter(x.values())))
    parts = [model.predict({k: v[i:i + batch] for k, v in x.items()}) for i in range(0, n, batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(model.output_names)}


def write_npz(folder: str, x: dict[str, np.ndarray], targets: dict[str, np.ndarray],
              name: str) -> str:
    """An .npz holding ``x`` (by input name, ``x`` for one input) and labels: ``y`` (top-1
    class) for a single output, ``y_<output name>`` (the float outputs) for several."""
    arrays = dict(x) if len(x) > 1 else {"x": next(iter(x.values()))}
    if len(targets) == 1:
        (y,) = targets.values()
        y = y.reshape(len(y), -1)
        arrays["y"] = (y[:, 0] > 0.5).astype(np.int64) if y.shape[1] == 1 else y.argmax(1)
    else:
        arrays.update({f"y_{k}": v for k, v in targets.items()})
    path = os.path.join(folder, f"{name}.npz")
    np.savez(path, **arrays)
    return path
