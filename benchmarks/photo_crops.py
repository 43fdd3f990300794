"""Calibration and evaluation samples from a few natural photos, split by PHOTO.

A photo goes either to calibration or to evaluation, never both (:func:`split_photos`,
seeded, per source group so each side gets photos of every kind). Each side is then
multiplied into many samples by seeded random crops (a square of 40–100 % of the photo's
shorter side at a random place), random horizontal flips and a resize to the model's input
size (:func:`make_crops`). Crops of one photo are correlated, so the sample count overstates
the independent evidence: the README says so.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CROP_MIN_FRACTION", "split_photos", "make_crops"]

CROP_MIN_FRACTION = 0.4  # smallest crop side, as a share of the photo's shorter side


def split_photos(photos: dict[str, str], calibration_share: float = 0.4,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration keys, evaluation keys) of ``photos`` (``{"group/file": path}``).

    In every group (the part of the key before ``/``) a seeded shuffle puts
    ``round(calibration_share * n)`` photos (at least one, and at least one left for
    evaluation) on the calibration side.

    Raises:
      ValueError: a share outside (0, 1), or a group with fewer than 2 photos.
    """
    if not 0.0 < calibration_share < 1.0:
        raise ValueError(f"calibration_share must be in (0, 1). Received: {calibration_share}")
    groups: dict[str, list[str]] = {}
    for key in sorted(photos):
        groups.setdefault(key.split("/")[0], []).append(key)
    rng = np.random.default_rng(seed)
    calibration, evaluation = [], []
    for group, keys in sorted(groups.items()):
        if len(keys) < 2:
            raise ValueError(f"Photo group {group!r} has {len(keys)} photo(s); splitting by photo "
                             "needs at least 2.")
        order = [keys[i] for i in rng.permutation(len(keys))]
        n = min(max(1, round(calibration_share * len(keys))), len(keys) - 1)
        calibration += sorted(order[:n])
        evaluation += sorted(order[n:])
    return calibration, evaluation


def make_crops(paths: list[str], count: int, size: int, seed: int) -> np.ndarray:
    """``count`` RGB crops (float32, 0..255, shape (count, size, size, 3)) cycling over
    ``paths``: random square crop, random horizontal flip, bilinear resize to ``size``."""
    from PIL import Image

    if count < 1 or not paths:
        raise ValueError(f"make_crops needs count >= 1 and photos. Received: count={count}, "
                         f"{len(paths)} photos")
    images = [Image.open(p).convert("RGB") for p in paths]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        image = images[i % len(images)]
        width, height = image.size
        side = int(min(width, height) * rng.uniform(CROP_MIN_FRACTION, 1.0))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.BILINEAR)
        array = np.asarray(crop, np.float32)
        out[i] = array[:, ::-1] if rng.random() < 0.5 else array
    return out
