"""Bootstrap intervals over test boxes: histogram AUC, agreement with the report, interval behaviour."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from halotrans.eval import metrics
from halotrans.eval.bootstrap import (
    BoxStats,
    bootstrap,
    box_stats,
    combine,
    histogram_auc,
    model_stats,
    paired_difference,
)
from halotrans.eval.report import evaluate_model
from halotrans.eval.truth import BoxTruth

K = 4
MP = 1e11  # M☉/h per voxel


def random_box(seed: int, n: int = 10) -> BoxTruth:
    """Random classes (mostly no halo) on an (n,n,n) grid; no halo catalogue."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=(n, n, n), p=[0.55, 0.2, 0.15, 0.1]).astype(np.int64)
    return BoxTruth(f"boxes/box_{seed:04d}.h5", labels, np.zeros((n, n, n), np.float32), None,
                    rng.normal(size=(n, n, n)).astype(np.float32), MP, 10.0)


def noisy_probs(labels: np.ndarray, rng, sharp: float = 1.0) -> np.ndarray:
    """Softmax of Gaussian logits with ``sharp`` added to the true class: continuous, imperfect scores."""
    logits = rng.normal(size=(K, *labels.shape))
    np.put_along_axis(logits, labels[None], sharp, axis=0)
    e = np.exp(logits)
    return (e / e.sum(axis=0)).astype(np.float32)


def leaves(tree: dict):
    """(path, leaf) of a combine/bootstrap metric tree."""
    for name, v in tree.items():
        if name == "per_class":
            for c, row in enumerate(v):
                for m, leaf in row.items():
                    yield f"{m}[{c}]", leaf
        else:
            yield name, v


@pytest.fixture(scope="module")
def boxes():
    rng = np.random.default_rng(42)
    truths = [random_box(s) for s in range(6)]
    # heterogeneous model quality from box to box
    probs = [noisy_probs(t.labels, rng, sharp=s) for t, s in zip(truths, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])]
    return truths, probs


# (a) histogram AUC ------------------------------------------------------------------------------

def test_histogram_auc_matches_exact_auc_on_continuous_scores():
    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.3
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    bins = 2048
    idx = np.minimum((s * bins).astype(int), bins - 1)
    pos, neg = np.bincount(idx[y], minlength=bins), np.bincount(idx[~y], minlength=bins)
    exact = metrics.roc_auc(s, y)
    assert 0.7 < exact < 0.9
    assert histogram_auc(pos, neg) == pytest.approx(exact, abs=2e-3)
    # coarse bins: worse but still a tie-corrected AUC
    assert abs(histogram_auc(pos.reshape(-1, 256).sum(1), neg.reshape(-1, 256).sum(1)) - exact) < 0.05
    assert math.isnan(histogram_auc(np.zeros(4), np.ones(4)))
    assert math.isnan(histogram_auc(np.ones(4), np.zeros(4)))
    assert histogram_auc([0, 0, 3], [2, 0, 0]) == 1.0 and histogram_auc([0, 1], [0, 1]) == 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        histogram_auc(np.ones(3), np.ones(4))


def test_box_stats_histograms_and_label_auc_exact(boxes):
    truths, probs = boxes
    t, p = truths[0], probs[0]
    st = box_stats(t.labels, p, K, MP, bins=512)
    assert st.kind == "probabilities" and st.class_hist.shape == (K, 2, 512) and st.halo_hist.shape == (2, 512)
    assert st.class_hist.dtype == np.int64 and st.confusion.dtype == np.int64
    for c in range(K):
        assert st.class_hist[c, 1].sum() == np.sum(t.labels == c)
        assert st.class_hist[c, 0].sum() == np.sum(t.labels != c)
    assert st.halo_hist[1].sum() == np.sum(t.labels > 0)

    lab = np.roll(t.labels, 1, axis=1)
    lab[0, 0, :3] = 0  # not a pure permutation
    st = box_stats(t.labels, lab, K, MP)
    assert st.kind == "labels"
    assert st.confusion.tolist() == metrics.confusion_matrix(t.labels, lab, K).tolist()
    for c in range(K):
        exact = metrics.roc_auc(lab == c, t.labels == c)
        assert histogram_auc(st.class_hist[c, 1], st.class_hist[c, 0]) == pytest.approx(exact, rel=1e-12)
    assert combine([st])["auc_halo_vs_none"] == pytest.approx(metrics.roc_auc(lab > 0, t.labels > 0), rel=1e-12)


# (b) agreement with evaluate_model --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["probabilities", "labels"])
def test_combine_equals_evaluate_model(boxes, kind):
    truths, probs = boxes
    preds = probs if kind == "probabilities" else [p.argmax(axis=0).astype(np.int64) for p in probs]
    ref, _ = evaluate_model(truths, preds, K, tolerance=1.0)
    got = combine(model_stats(truths, preds, K, tolerance=1.0))
    assert got["accuracy"] == pytest.approx(ref["accuracy"], rel=1e-12)
    assert got["surface_dice_halo"] == pytest.approx(ref["surface_dice_halo"], rel=1e-12)
    tol = 2e-3 if kind == "probabilities" else 1e-12
    assert got["auc_halo_vs_none"] == pytest.approx(ref["auc_halo_vs_none"], abs=tol)
    assert got["auc_mean_halo_classes"] == pytest.approx(ref["auc_mean_halo_classes"], abs=tol)
    for c in range(K):
        g, r = got["per_class"][c], ref["per_class"][c]
        assert g["recall"] == pytest.approx(r["accuracy"], rel=1e-12)
        assert g["precision"] == pytest.approx(r["precision"], rel=1e-12)
        assert g["mass_rel_error"] == pytest.approx(r["mass_rel_error"], rel=1e-9, abs=1e-12)
        assert g["mass_true"] == pytest.approx(r["mass_true"]) and g["mass_pred"] == pytest.approx(r["mass_pred"])
        assert g["surface_dice"] == pytest.approx(r["surface_dice"], rel=1e-12)
        assert g["auc"] == pytest.approx(r["auc"], abs=tol)
    if kind == "probabilities":
        assert 0.6 < got["per_class"][1]["auc"] < 0.99  # a non-trivial check
        assert any(abs(got["per_class"][c]["mass_rel_error"]) > 1e-3 for c in range(K))


# (c) interval behaviour --------------------------------------------------------------------------

def test_identical_boxes_collapse_the_interval(boxes):
    truths, probs = boxes
    st = box_stats(truths[0].labels, probs[0], K, MP)
    res = bootstrap([st] * 5, n_boot=200)
    assert res["n_boxes"] == 5 and res["n_boot"] == 200 and res["level"] == 0.68
    ref = combine([st] * 5)
    for (name, leaf), (_, v) in zip(leaves(res["metrics"]), leaves(ref)):
        assert leaf["value"] == pytest.approx(v, rel=1e-12, nan_ok=True), name
        assert leaf["lo"] == pytest.approx(leaf["value"], rel=1e-12), name
        assert leaf["hi"] == pytest.approx(leaf["value"], rel=1e-12), name


def test_heterogeneous_boxes_bracket_the_value_and_narrow_with_more_boxes():
    rng = np.random.default_rng(7)
    sharps = rng.uniform(0.0, 3.0, size=24)
    stats = []
    for i, s in enumerate(sharps):
        t = random_box(100 + i, n=8)
        stats.append(box_stats(t.labels, noisy_probs(t.labels, rng, s), K, MP, bins=256))
    widths = {}
    for n in (4, 24):
        res = bootstrap(stats[:n], n_boot=500, seed=1)
        w = []
        for name, leaf in leaves(res["metrics"]):
            if name.startswith(("mass_true", "mass_pred")):
                continue  # extensive: grow with the number of boxes
            assert leaf["lo"] <= leaf["value"] <= leaf["hi"], (n, name, leaf)
            w.append(leaf["hi"] - leaf["lo"])
        widths[n] = float(np.mean(w))
        assert widths[n] > 0
    assert widths[4] > 1.5 * widths[24], widths


def test_a_replicate_is_the_metric_of_the_drawn_boxes(boxes):
    """n_boot = 1: lo = hi = the metrics of the boxes drawn by Generator(seed), recomputed directly."""
    truths, probs = boxes
    stats = model_stats(truths, probs, K, bins=256)
    for seed in (0, 1, 2):
        draw = np.random.default_rng(seed).integers(0, len(stats), size=(1, len(stats)))[0]
        assert len(set(draw.tolist())) < len(stats)  # repeats: the bilinear AUC terms are exercised
        drawn = [stats[i] for i in draw]
        res = bootstrap(stats, n_boot=1, seed=seed)["metrics"]
        for (name, leaf), (_, v) in zip(leaves(res), leaves(combine(drawn))):
            assert leaf["lo"] == leaf["hi"] == pytest.approx(v, rel=1e-12, nan_ok=True), name
        hist = sum(s.class_hist for s in drawn)
        for c in range(K):
            assert res["per_class"][c]["auc"]["lo"] == pytest.approx(histogram_auc(hist[c, 1], hist[c, 0]), rel=1e-12)
        halo = sum(s.halo_hist for s in drawn)
        assert res["auc_halo_vs_none"]["lo"] == pytest.approx(histogram_auc(halo[1], halo[0]), rel=1e-12)


# (d) reproducibility -----------------------------------------------------------------------------

def test_seed_reproducible(boxes):
    truths, probs = boxes
    stats = model_stats(truths, probs, K, bins=256)
    a, b = bootstrap(stats, n_boot=300, seed=3), bootstrap(stats, n_boot=300, seed=3)
    assert a == b
    c = bootstrap(stats, n_boot=300, seed=4)
    assert c["metrics"]["accuracy"]["value"] == a["metrics"]["accuracy"]["value"]
    assert [v for _, v in leaves(c["metrics"])] != [v for _, v in leaves(a["metrics"])]


# (e) validation ----------------------------------------------------------------------------------

def test_bad_inputs_raise(boxes):
    truths, probs = boxes
    lab, p = truths[0].labels, probs[0]
    with pytest.raises(ValueError, match="expected"):
        box_stats(lab, p[:, :-1], K, MP)
    with pytest.raises(ValueError, match="expected"):
        box_stats(lab, p[:-1], K, MP)
    with pytest.raises(ValueError, match="shape"):
        box_stats(lab, lab[:-1], K, MP)
    with pytest.raises(ValueError, match=r"\(N,N,N\)"):
        box_stats(lab[0], lab[0], K, MP)
    bad = p.copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        box_stats(lab, bad, K, MP)
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        box_stats(lab, bad, K, MP)
    with pytest.raises(ValueError, match="outside"):
        box_stats(lab, p * 3 - 1, K, MP)  # logits, not probabilities
    with pytest.raises(ValueError, match="predicted labels outside"):
        box_stats(lab, np.full_like(lab, K), K, MP)
    with pytest.raises(ValueError, match="truth labels outside"):
        box_stats(lab - 1, lab, K, MP)
    with pytest.raises(ValueError, match="integer"):
        box_stats(lab.astype(float), lab, K, MP)
    with pytest.raises(ValueError, match="dtype"):
        box_stats(lab, lab > 0, K, MP)
    with pytest.raises(ValueError, match="voxel_mass"):
        box_stats(lab, lab, K, float("nan"))
    with pytest.raises(ValueError, match="box_0001"):
        model_stats(truths[:2], [probs[0], probs[1][:2]], K)
    with pytest.raises(ValueError, match="2 predictions for 3 boxes"):
        model_stats(truths[:3], probs[:2], K)
    st = [box_stats(lab, lab, K, MP, bins=16), box_stats(lab, lab, K, MP, bins=32)]
    with pytest.raises(ValueError, match="same number of classes and bins"):
        combine(st)
    with pytest.raises(ValueError, match="no boxes"):
        bootstrap([])
    with pytest.raises(ValueError, match="level"):
        bootstrap(st[:1], level=1.5)
    with pytest.raises(ValueError, match="not the same box"):
        paired_difference(st[:1], [box_stats(truths[1].labels, lab, K, MP, bins=16)], n_boot=10)


# (f) paired difference ---------------------------------------------------------------------------

def test_paired_difference(boxes):
    truths, probs = boxes
    a = model_stats(truths, probs, K, bins=256)
    res = paired_difference(a, a, n_boot=300)
    for name, leaf in leaves(res["metrics"]):
        assert leaf == {"value": 0.0, "lo": 0.0, "hi": 0.0, "frac_positive": 0.0}, name

    # a clearly worse model (labels shifted by one voxel) on the same boxes: the ordering holds
    rng = np.random.default_rng(5)
    worse = model_stats(truths, [noisy_probs(np.roll(t.labels, 2, axis=0), rng, 1.5) for t in truths], K, bins=256)
    d = paired_difference(a, worse, n_boot=300)["metrics"]
    ca, cw = combine(a), combine(worse)
    assert d["accuracy"]["value"] == pytest.approx(ca["accuracy"] - cw["accuracy"], rel=1e-12)
    for c in range(K):
        leaf = d["per_class"][c]["auc"]
        assert leaf["value"] == pytest.approx(ca["per_class"][c]["auc"] - cw["per_class"][c]["auc"], rel=1e-12)
        assert 0 < leaf["lo"] <= leaf["value"] <= leaf["hi"] and leaf["frac_positive"] == 1.0


def test_full_size_bootstrap_is_fast():
    """2000 replicates of 8 boxes × 5 classes × 2048 bins, statistics built directly."""
    rng = np.random.default_rng(0)
    k, bins = 5, 2048
    stats = [BoxStats(confusion=rng.integers(0, 1000, (k, k)), mass_true=rng.uniform(1, 2, k) * 1e15,
                      mass_pred=rng.uniform(1, 2, k) * 1e15, surface_dice=rng.integers(1, 100, (k + 1, 2)),
                      class_hist=rng.integers(0, 1000, (k, 2, bins)), halo_hist=rng.integers(0, 1000, (2, bins)),
                      kind="probabilities") for _ in range(8)]
    t0 = time.perf_counter()
    res = bootstrap(stats, n_boot=2000)
    elapsed = time.perf_counter() - t0
    assert len(res["metrics"]["per_class"]) == k
    assert elapsed < 10.0, elapsed
