"""benchmarks/adaround_4bit_clip.py: the plain converter and 4-bit AdaRound on a real model."""

import numpy as np
import pytest

from benchmarks import adaround_4bit_clip


@pytest.mark.slow
def test_measure_scores_both_methods_on_resnet8():
    """ResNet-8 with 10 calibration / 10 evaluation crops and 5 AdaRound steps: both methods
    are scored against the float model and every 4-bit layer deploys exactly, with its
    clipping recorded."""
    results = adaround_4bit_clip.measure("resnet8_cifar10", 5, 10, 10)
    assert set(results) == {"converter_per_channel", "adaround_4bit"}
    for row in results.values():
        assert 0.0 <= row["top1_agreement"] <= 1.0 and np.isfinite(row["sqnr_db"])
    layers = results["adaround_4bit"]["adaround_layers"]
    assert len(layers) == 10 and all(layer["deployed_exactly"] for layer in layers)
    assert all(0.25 <= layer["clip_ratio_min"] <= layer["clip_ratio_median"] <= 1.0
               for layer in layers)
    assert "4-bit grid clipped per channel" in results["adaround_4bit"]["notes"][-1]
