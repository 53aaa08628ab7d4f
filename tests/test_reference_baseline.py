"""The no-network baseline (logistic regression on smoothed δ and T) and the mass calibration."""

from __future__ import annotations

import numpy as np
import pytest

from halotrans.data.boxes import load_classes
from halotrans.eval import metrics
from halotrans.eval.baseline import (
    SCALES,
    box_features,
    feature_names,
    fit_baseline,
    fit_logistic,
    load_baseline,
    save_baseline,
    smoothed_density,
)
from halotrans.eval.calibration import apply_class_bias, argmax_counts, fit_class_bias
from halotrans.io import DataError
from halotrans.sims.boxio import box_path

EDGES = (12.5, 13.0, 13.5)


def test_smoothing_damps_a_fourier_mode_by_the_gaussian():
    n, box = 16, 32.0
    x = np.arange(n) * box / n
    k = 2 * np.pi * 3 / box
    wave = np.cos(k * x)[:, None, None] * np.ones((1, n, n))
    for radius in (1.0, 4.0):
        out = smoothed_density(wave, box, radius)
        np.testing.assert_allclose(out, np.exp(-0.5 * (k * radius) ** 2) * wave, atol=1e-6)
    rng = np.random.default_rng(0)
    field = rng.normal(size=(n, n, n))
    smooth = smoothed_density(field, box, 2.0)
    assert abs(smooth.mean() - field.mean()) < 1e-6 and smooth.std() < 0.5 * field.std()


def test_fit_recovers_a_known_softmax_model():
    rng = np.random.default_rng(1)
    w_true = np.array([[2.0, -1.0, 0.0], [0.0, 1.5, -1.5]])
    b_true = np.array([0.5, 0.0, -0.5])
    f = rng.normal(size=(2, 40, 40, 40))
    z = np.einsum("fk,fxyz->kxyz", w_true, f) + b_true[:, None, None, None]
    p = np.exp(z - z.max(0))
    p /= p.sum(0)
    u = rng.random(size=p.shape[1:])
    labels = (u[None] > np.cumsum(p, axis=0)).sum(0)
    fit = fit_logistic([f], [labels], 3, l2=0.0, max_voxels=40**3)
    w = np.asarray(fit["weights"]) / np.asarray(fit["std"])[:, None]  # back to unstandardised features
    # softmax weights are defined up to a per-feature constant: compare differences to class 0
    np.testing.assert_allclose(w[:, 1:] - w[:, :1], w_true[:, 1:] - w_true[:, :1], atol=0.08)


def test_baseline_on_simulated_boxes(sim_boxes, tmp_path):
    paths = [box_path(sim_boxes, s) for s in range(3)]
    model = fit_baseline(paths, EDGES)
    assert len(model.weights) == len(SCALES) + 1 == len(feature_names())
    feats = box_features(box_path(sim_boxes, 3))
    assert feats.shape == (5, 32, 32, 32) and feats.dtype == np.float32
    probs = model.predict_box(box_path(sim_boxes, 3))
    assert probs.shape == (5, 32, 32, 32)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    truth = load_classes(box_path(sim_boxes, 3), EDGES)
    # the smoothed density alone separates proto-halo voxels from the rest well above chance
    assert metrics.roc_auc(1 - probs[0], truth > 0) > 0.75

    save_baseline(model, tmp_path / "b.json")
    again = load_baseline(tmp_path / "b.json")
    assert again == model
    np.testing.assert_array_equal(again.predict_proba(feats), probs)


def test_baseline_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_baseline(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{\"scales\": 1}")
    with pytest.raises(DataError, match="not a baseline file"):
        load_baseline(tmp_path / "bad.json")
    with pytest.raises(DataError, match="labels outside"):
        fit_logistic([np.zeros((2, 4, 4, 4))], [np.full((4, 4, 4), 7)], 3)
    with pytest.raises(DataError, match="as many label boxes"):
        fit_logistic([np.zeros((2, 4, 4, 4))], [], 3)


def _biased_probs(rng, n: int = 40_000):
    """Labels and probabilities of a 3-class problem whose argmax over-predicts class 2."""
    logits = rng.normal(size=(3, n)) * 1.5
    logits[1] -= 1.0
    logits[2] -= 2.0
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    labels = (rng.random(n)[None] > np.cumsum(p, axis=0)).sum(0)
    shifted = p * np.exp(np.array([0.0, 0.0, 1.5]))[:, None]  # a "weighted loss" favouring class 2
    return labels, shifted / shifted.sum(0)


def test_calibration_matches_class_counts_and_transfers():
    rng = np.random.default_rng(2)
    labels, probs = _biased_probs(rng)
    true = np.bincount(labels, minlength=3)
    assert argmax_counts(np.log(probs), np.zeros(3))[2] > 1.3 * true[2]
    bias = fit_class_bias([probs], [labels])
    assert bias[0] == 0 and bias[2] < 0
    counts = argmax_counts(np.log(apply_class_bias(probs, bias)), np.zeros(3))
    np.testing.assert_allclose(counts, true, rtol=0.02)
    # the offsets fitted on one sample correct another sample of the same model
    labels2, probs2 = _biased_probs(np.random.default_rng(3))
    counts2 = argmax_counts(np.log(apply_class_bias(probs2, bias)), np.zeros(3))
    np.testing.assert_allclose(counts2, np.bincount(labels2, minlength=3), rtol=0.1)
    shifted = apply_class_bias(probs.reshape(3, 40, 1000), bias)
    assert shifted.shape == (3, 40, 1000) and shifted.dtype == np.float32
    np.testing.assert_allclose(shifted.sum(0), 1.0, atol=1e-5)


def test_calibration_errors():
    with pytest.raises(DataError, match="one label box per"):
        fit_class_bias([np.ones((2, 3))], [])
    with pytest.raises(DataError, match="labels cover"):
        fit_class_bias([np.full((2, 4), 0.5)], [np.zeros(3, int)])
    with pytest.raises(DataError, match="class offsets"):
        apply_class_bias(np.full((2, 4), 0.5), np.zeros(3))
