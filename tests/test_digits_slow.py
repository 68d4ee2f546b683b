"""Slow: the digits bits/dim benchmark (the target: a model trained for at most 10 minutes on
CPU beats a tuned scikit-learn GaussianMixture by at least 0.1 bits/dim, paired per test image).

Run with ``pytest -m slow tests/test_digits_slow.py`` (about 11 minutes on 2 CPU cores: 8 of training).
"""
import math

import pytest

pytestmark = pytest.mark.slow


def test_digits_score_model_beats_tuned_gmm():
    from sdediff.bench.digits import digits_experiment

    res = digits_experiment(train_seconds=480.0, threads=2, num_samples=0, check_images=0)
    assert res["train_seconds"] <= 600.0, "the training budget is at most 10 minutes"
    diff = res["paired_diff"]
    # The bar: the paired mean difference (model - GMM, same 300 images and dequantization draw) is at
    # most -0.1 bits/dim; 2 standard errors of margin so a lucky draw of test images cannot pass it.
    assert diff["mean"] + 2 * diff["se"] <= -0.1, diff
    # Memorization guard: no test image far off (a memorizing model sends a few to hundreds of bpd).
    assert res["model_bpd"]["max"] <= 6.0, res["model_bpd"]
    assert math.isfinite(res["model_bpd"]["mean"])
