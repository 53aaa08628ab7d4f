"""Every metric against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from halotrans.eval import metrics


def test_accuracy_and_confusion_matrix():
    true = np.array([0, 1, 2, 2, 0, 1])
    pred = np.array([0, 2, 2, 1, 0, 1])
    assert metrics.accuracy(true, pred) == pytest.approx(4 / 6)
    cm = metrics.confusion_matrix(true, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 0, 0],
                                       [0, 1, 1],
                                       [0, 1, 1]])
    np.testing.assert_allclose(metrics.class_recall(cm), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(metrics.class_precision(cm), [1.0, 0.5, 0.5])
    cm4 = metrics.confusion_matrix(true, pred, 4)  # class 3 never occurs: NaN recall and precision
    assert math.isnan(metrics.class_recall(cm4)[3]) and math.isnan(metrics.class_precision(cm4)[3])
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(true, pred, 2)
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion_matrix(true.astype(float), pred, 3)


def test_roc_curve_and_auc_with_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.5, 0.5, 0.1])
    positive = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    fpr, tpr, thr = metrics.roc_curve(scores, positive)
    # thresholds inf, 0.9, 0.8, 0.5, 0.1: tied scores enter together
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.5, 0.1])
    # Mann-Whitney by hand: 0.9 beats 3 negatives; 0.8 beats 2 and ties 1; 0.5 beats 1 and ties 1
    assert metrics.roc_auc(scores, positive) == pytest.approx((3 + 2.5 + 1.5) / 9)


def test_auc_limits():
    y = np.array([0, 0, 1, 1], dtype=bool)
    assert metrics.roc_auc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert metrics.roc_auc(np.array([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    assert metrics.roc_auc(np.full(4, 0.7), y) == 0.5  # all tied
    assert math.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([True, True])))
    with pytest.raises(ValueError, match="positives and negatives"):
        metrics.roc_curve(np.array([0.1, 0.2]), np.array([False, False]))


def test_auc_equals_pair_counting_on_random_ties():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, size=300) / 4.0  # many ties
    y = rng.random(300) < 0.3
    pos, neg = s[y], s[~y]
    by_pairs = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert metrics.roc_auc(s, y) == pytest.approx(by_pairs, abs=1e-12)


def test_class_masses_and_relative_error():
    labels = np.array([[0, 1], [1, 2]])
    masses = metrics.class_masses(labels, 4, voxel_mass=2.5e10)
    np.testing.assert_allclose(masses, [2.5e10, 5e10, 2.5e10, 0])
    err = metrics.mass_relative_error([3e10, 4e10, 2.5e10, 1e10], masses)
    np.testing.assert_allclose(err[:3], [0.2, -0.2, 0.0])
    assert math.isnan(err[3])  # no true mass in class 3


def cube(n: int, lo: tuple[int, int, int], side: int) -> np.ndarray:
    m = np.zeros((n, n, n), dtype=bool)
    idx = [(l + np.arange(side)) % n for l in lo]
    m[np.ix_(*idx)] = True
    return m


def test_boundary_of_a_cube_is_periodic():
    assert metrics.boundary(cube(10, (2, 2, 2), 4)).sum() == 4**3 - 2**3  # 56
    assert metrics.boundary(cube(10, (8, 8, 8), 4)).sum() == 56  # wraps through the faces
    assert metrics.boundary(np.ones((6, 6, 6), bool)).sum() == 0  # the whole periodic box has no surface
    slab = np.zeros((6, 6, 6), bool)
    slab[2:4] = True  # a slab through the box: only its two faces are boundary
    assert metrics.boundary(slab).sum() == 2 * 36


def test_periodic_neighbourhood():
    m = np.zeros((10, 10, 10), bool)
    m[0, 0, 0] = True
    near = metrics.within(m, 1.5)
    assert near.sum() == 19  # the voxel, 6 faces and 12 edges: distances 0, 1 and sqrt(2)
    assert near[9, 0, 0] and near[9, 9, 0] and not near[9, 9, 9] and not near[2, 0, 0]
    assert metrics.within(m, 2)[2, 0, 0] and metrics.within(m, 0).sum() == 1
    assert metrics.within(m, math.sqrt(8))[2, 0, 8]  # (2, 0, -2) through the z face


def test_surface_dice_on_shifted_cube():
    true = cube(10, (2, 2, 2), 4)
    pred = cube(10, (3, 2, 2), 4)  # shifted by one voxel along x
    # tau = 0: shared boundary voxels are those with y or z on a face, x in {3,4,5}: 3 * 12 = 36 each way
    assert metrics.surface_dice_counts(pred, true, 0) == (72, 112)
    assert metrics.surface_dice(pred, true, 0) == pytest.approx(72 / 112)
    assert metrics.surface_dice(pred, true, 1) == 1.0  # every boundary voxel within one voxel
    assert metrics.surface_dice(true, true, 0) == 1.0
    assert metrics.surface_dice(cube(12, (0, 0, 0), 2), cube(12, (6, 6, 6), 2), 1.5) == 0.0
    assert math.isnan(metrics.surface_dice(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), 1))


def test_periodic_components_join_across_faces():
    m = np.zeros((6, 6, 6), bool)
    m[0, 1, 1] = m[5, 1, 1] = True   # neighbours through the x face
    m[3, 3, 3] = True                # isolated
    m[2, 0, 4] = m[2, 5, 4] = True   # neighbours through the y face
    lab, n = metrics.periodic_components(m)
    assert n == 3
    assert lab[0, 1, 1] == lab[5, 1, 1] and lab[2, 0, 4] == lab[2, 5, 4]
    assert len({lab[0, 1, 1], lab[3, 3, 3], lab[2, 0, 4]}) == 3 and lab[~m].max() == 0


def test_halo_mass_comparison_by_hand():
    n, mp = 8, 1e11
    halo_id = -np.ones((n, n, n), np.int32)
    logm = np.zeros((n, n, n), np.float32)
    true = np.zeros((n, n, n), np.int64)
    halo_id[1:3, 1:3, 1:3] = 4          # 8 voxels, class 1
    logm[1:3, 1:3, 1:3] = np.log10(8 * mp)
    true[1:3, 1:3, 1:3] = 1
    halo_id[5, 5, 2:6] = 7              # 4 voxels, class 2
    logm[5, 5, 2:6] = np.log10(4 * mp)
    true[5, 5, 2:6] = 2
    pred = true.copy()
    pred[3, 1, 1] = 1                   # halo 4 predicted one voxel too large
    pred[5, 5, 2:6] = 0                 # halo 7 missed
    out = metrics.halo_mass_comparison(halo_id, logm, true, pred, 3, mp)
    np.testing.assert_array_equal(out["halo"], [4, 7])
    np.testing.assert_array_equal(out["true_class"], [1, 2])
    np.testing.assert_allclose(out["true_mass"], [8 * mp, 4 * mp], rtol=1e-5)  # float32 log10 M
    np.testing.assert_allclose(out["pred_mass"], [9 * mp, 0])
    np.testing.assert_allclose(out["overlap"], [1, 0])
    np.testing.assert_array_equal(out["merged"], [False, False])
    np.testing.assert_array_equal(out["pred_class"], [1, 0])
    s = metrics.halo_summary(out["true_mass"], out["pred_mass"], out["merged"], out["true_class"],
                             out["pred_class"], 3)
    assert s["n_halos"] == 2 and s["detected_fraction"] == 0.5 and s["class_accuracy"] == 0.5
    assert s["log_ratio_median"] == pytest.approx(math.log10(9 / 8), abs=1e-5)
    c2 = s["by_class"]["2"]
    assert c2["n_halos"] == 1 and c2["detected_fraction"] == 0.0 and math.isnan(c2["log_ratio_median"])
    assert s["by_class"]["1"]["log_ratio_median"] == pytest.approx(math.log10(9 / 8), abs=1e-5)

def test_touching_halos_of_one_class_merge():
    n, mp = 6, 1.0
    halo_id = -np.ones((n, n, n), np.int32)
    halo_id[0:2, 0, 0] = 0
    halo_id[2:5, 0, 0] = 1              # touches halo 0 along x
    true = (halo_id >= 0).astype(np.int64)
    logm = np.where(halo_id == 0, np.log10(2), np.where(halo_id == 1, np.log10(3), 0)).astype(np.float32)
    out = metrics.halo_mass_comparison(halo_id, logm, true, true, 2, mp)
    np.testing.assert_allclose(out["pred_mass"], [5, 5])  # one predicted component of 5 voxels
    np.testing.assert_array_equal(out["merged"], [True, True])
    # the same halos in different predicted classes stay apart
    pred = true.copy()
    pred[halo_id == 1] = 2
    out = metrics.halo_mass_comparison(halo_id, logm, true, pred, 3, mp)
    np.testing.assert_allclose(out["pred_mass"], [2, 3])
    np.testing.assert_array_equal(out["merged"], [False, False])
