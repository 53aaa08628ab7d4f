"""Box data set: cube symmetries, periodic crops, class binning, weights, normalisation, splits."""

from __future__ import annotations

import itertools
import json

import h5py
import numpy as np
import pytest
import torch

from halotrans.config import ConfigError, load_config
from halotrans.data.boxes import IGNORE_INDEX, BoxDataset, load_inputs, mass_to_class, periodic_crop
from halotrans.data.stats import class_weights, training_stats
from halotrans.data.symmetries import CUBE_SYMMETRIES, N_SYMMETRIES, apply_symmetry, inverse_symmetry
from halotrans.io import DataError
from halotrans.sims.boxio import box_path, write_box
from tests.helpers import synthetic_box, write_synthetic_boxes


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    return write_synthetic_boxes(tmp_path_factory.mktemp("boxes"), range(4), n=24)


# --- symmetries -----------------------------------------------------------------------------------

def _which(y: np.ndarray, x: np.ndarray) -> list[int]:
    return [i for i in range(N_SYMMETRIES) if np.array_equal(apply_symmetry(x, i), y)]


def test_48_distinct_symmetries_form_a_group():
    x = np.random.default_rng(0).standard_normal((3, 5, 5, 5))  # generic: no symmetry of its own
    images = [apply_symmetry(x, i) for i in range(N_SYMMETRIES)]
    assert N_SYMMETRIES == 48 and CUBE_SYMMETRIES[0] == ((0, 1, 2), (False, False, False))
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(images, 2))
    for a, b in itertools.product(range(N_SYMMETRIES), repeat=2):  # closure: b∘a is one of the 48
        assert len(_which(apply_symmetry(images[a], b), x)) == 1
    for i in range(N_SYMMETRIES):
        assert np.array_equal(apply_symmetry(images[i], inverse_symmetry(i)), x)


def test_symmetry_torch_matches_numpy_and_keeps_channels():
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 5, 6))
    for i in (0, 7, 29, 47):
        got = apply_symmetry(torch.from_numpy(x), i).numpy()
        assert np.array_equal(got, apply_symmetry(x, i))
    # a permutation of the spatial axes permutes the shape; leading axes untouched
    perm_index = CUBE_SYMMETRIES.index(((2, 0, 1), (True, False, False)))
    y = apply_symmetry(x, perm_index)
    assert y.shape == (2, 2, 6, 4, 5)
    assert y[1, 0, 5, 0, 0] == x[1, 0, 0, 0, 0]  # flipped output axis 0 (= input axis 2)


def test_periodic_crop_wraps():
    a = np.arange(4 * 6**3).reshape(4, 6, 6, 6)
    c = periodic_crop(a, (4, 5, 0), 3)
    assert c.shape == (4, 3, 3, 3)
    for i, j, k in itertools.product(range(3), repeat=3):
        assert np.array_equal(c[:, i, j, k], a[:, (4 + i) % 6, (5 + j) % 6, k])
    # a crop as large as the box is a periodic roll
    assert np.array_equal(periodic_crop(a, (2, 3, 1), 6), np.roll(a, (-2, -3, -1), axis=(1, 2, 3)))


def test_crop_and_symmetry_keep_inputs_and_labels_aligned(tmp_path):
    # labels a pointwise function of δ: every crop + symmetry must keep label == f(input) voxel by voxel
    delta, _, extra = synthetic_box(16, 3)
    halo_mass = np.where(delta > 0.2, 12.0 + delta, 0.0)
    write_box(box_path(tmp_path, 0), delta, halo_mass, {"box_size": 16.0, "seed": 0, "z_init": 99.0}, extra)
    stats = training_stats(tmp_path, [0])
    ds = BoxDataset([box_path(tmp_path, 0)], ("delta", "T"), (12.5, 13.0), stats, crop=10)
    full_x = load_inputs(box_path(tmp_path, 0), ("delta", "T"), stats)
    for sym in (0, 5, 13, 40):
        x, y = ds.crop_at(0, (12, 3, 9), sym)
        assert np.array_equal(x, apply_symmetry(periodic_crop(full_x, (12, 3, 9), 10), sym))
        d = x[0] * stats["delta"]["std"] + stats["delta"]["mean"]
        assert np.array_equal(y, mass_to_class(np.where(d > 0.2, 12.0 + d, 0.0), (12.5, 13.0)))
    xb, yb = ds.batch(8, seed=0, step=0, rank=0)  # random crops and symmetries too
    d = xb[:, 0].numpy() * stats["delta"]["std"] + stats["delta"]["mean"]
    expect = mass_to_class(np.where(d > 0.2, 12.0 + d, 0.0), (12.5, 13.0))
    assert np.mean(yb.numpy() == expect) > 0.999  # float32 round trip may move a voxel across an edge
    assert len({int(v) for v in yb.unique()}) == 4


# --- classes and weights --------------------------------------------------------------------------

def test_mass_to_class_hand_computed():
    m = np.array([0.0, 11.9, 12.99, 13.0, 13.49, 13.5, 14.0, 15.2]).reshape(2, 2, 2)
    assert mass_to_class(m, (13.0, 13.5, 14.0)).ravel().tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    edges7 = (12.0, 12.5, 13.0, 13.5, 14.0)
    assert mass_to_class(m, edges7).ravel().tolist() == [0, 1, 3, 4, 4, 5, 6, 6]
    assert mass_to_class(m, edges7).dtype == np.int64


def test_class_weights_hand_computed():
    counts = np.array([60, 30, 10, 0])
    np.testing.assert_allclose(class_weights(counts, "none"), [1, 1, 1, 1])
    # inverse: w ∝ 1/f = (1/.6, 1/.3, 1/.1) ; Σ f w = 3 (three present classes) → w = (1/1.8, 1/.9, 1/.3)
    np.testing.assert_allclose(class_weights(counts, "inverse"), [1 / 1.8, 1 / 0.9, 1 / 0.3, 0])
    f = np.array([0.6, 0.3, 0.1])
    w = 1 / np.sqrt(f)
    np.testing.assert_allclose(class_weights(counts, "inverse_sqrt"), [*(w / (f * w).sum()), 0])


def test_dataset_class_counts_match_labels(boxes):
    stats = training_stats(boxes, [0, 1])
    ds = BoxDataset([box_path(boxes, s) for s in (0, 1)], ("delta",), (12.5, 13.0), stats, crop=8)
    with h5py.File(box_path(boxes, 0)) as f0, h5py.File(box_path(boxes, 1)) as f1:
        m = np.concatenate([f0["halo_mass"][...].ravel(), f1["halo_mass"][...].ravel()])
    expect = [(m <= 0).sum(), ((m > 0) & (m < 12.5)).sum(), ((m >= 12.5) & (m < 13.0)).sum(), (m >= 13.0).sum()]
    assert ds.class_counts().tolist() == expect
    assert expect[1] > 0 and expect[3] > 0  # the synthetic boxes populate the classes


# --- normalisation --------------------------------------------------------------------------------

def test_stats_are_training_boxes_only_and_cached(boxes):
    stats = training_stats(boxes, [0, 1])
    with h5py.File(box_path(boxes, 0)) as f0, h5py.File(box_path(boxes, 1)) as f1:
        d = np.concatenate([f0["delta"][...].ravel(), f1["delta"][...].ravel()]).astype(np.float64)
        t = np.concatenate([f0["tidal/T"][...].ravel(), f1["tidal/T"][...].ravel()]).astype(np.float64)
    assert stats["delta"]["mean"] == pytest.approx(d.mean(), abs=1e-9)
    assert stats["delta"]["std"] == pytest.approx(d.std(), rel=1e-9)
    assert stats["T"]["mean"] == pytest.approx(t.mean(), rel=1e-9)
    table = json.loads((boxes / "stats.json").read_text())
    assert table["0,1"]["inputs"] == stats
    assert training_stats(boxes, [2, 3]) != stats  # another split, another entry
    x = load_inputs(box_path(boxes, 0), ("T", "delta"), stats)
    assert x.shape == (2, 24, 24, 24) and x.dtype == np.float32
    with h5py.File(box_path(boxes, 0)) as f:
        np.testing.assert_allclose(x[1], (f["delta"][...] - stats["delta"]["mean"]) / stats["delta"]["std"], rtol=1e-5)


def test_stats_recomputed_when_a_box_changes(tmp_path):
    write_synthetic_boxes(tmp_path, [0], n=8)
    a = training_stats(tmp_path, [0])
    delta, halo_mass, extra = synthetic_box(8, 0)
    write_box(box_path(tmp_path, 0), 2 * delta, halo_mass, {"box_size": 8.0, "seed": 0, "z_init": 99.0}, extra)
    b = training_stats(tmp_path, [0])
    assert b["delta"]["std"] == pytest.approx(2 * a["delta"]["std"])


# --- sampling -------------------------------------------------------------------------------------

def test_batches_are_a_function_of_seed_step_rank(boxes):
    stats = training_stats(boxes, [0, 1])
    ds = BoxDataset([box_path(boxes, s) for s in (0, 1)], ("delta", "T"), (12.5,), stats, crop=8)
    x1, y1 = ds.batch(3, seed=0, step=5, rank=1)
    x2, y2 = ds.batch(3, seed=0, step=5, rank=1)
    assert x1.shape == (3, 2, 8, 8, 8) and y1.shape == (3, 8, 8, 8)
    assert x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for other in (dict(seed=1, step=5, rank=1), dict(seed=0, step=6, rank=1), dict(seed=0, step=5, rank=0)):
        assert not torch.equal(ds.batch(3, **other)[0], x1)


def test_validation_tiles_cover_boxes_and_pad_evenly(boxes):
    stats = training_stats(boxes, [0, 1])
    ds = BoxDataset([box_path(boxes, s) for s in (2, 3)], ("delta",), (12.5,), stats, crop=16, augment=False)
    tiles = ds.tiles(max_crops=1000)
    assert len(tiles) == 2 * 2**3  # 24 voxels in crops of 16: 2 per axis (the second one wraps)
    covered = np.zeros((2, 24, 24, 24), bool)
    for b, o in tiles:
        idx = [(oo + np.arange(16)) % 24 for oo in o]
        covered[(b, *np.ix_(*idx))] = True
    assert covered.all()
    assert len(ds.tiles(max_crops=5)) == 5
    per_rank = [list(ds.tile_batches(16, batch_size=3, rank=r, world_size=3)) for r in range(3)]
    assert len({len(p) for p in per_rank}) == 1  # same number of batches on every rank
    labelled = sum(int((y != IGNORE_INDEX).all(dim=(1, 2, 3)).sum()) for p in per_rank for _, y in p)
    assert labelled == 16


# --- errors ---------------------------------------------------------------------------------------

def test_clear_errors(boxes, tmp_path):
    stats = training_stats(boxes, [0])
    with pytest.raises(DataError, match="crop 32 is larger than the box"):
        BoxDataset([box_path(boxes, 0)], ("delta",), (12.5,), stats, crop=32)
    with pytest.raises(DataError, match="box file not found"):
        BoxDataset([box_path(boxes, 9)], ("delta",), (12.5,), stats, crop=8)
    write_synthetic_boxes(tmp_path, [0], n=8, with_shear=False)
    with pytest.raises(DataError, match=r"missing dataset /tidal/T.*python -m halotrans shear"):
        load_inputs(box_path(tmp_path, 0), ("delta", "T"), stats)
    with pytest.raises(DataError, match="training box file"):
        training_stats(tmp_path, [0, 1])


def test_splits_never_share_a_box():
    cfg = load_config(None, ["data.train_seeds=0-7", "data.val_seeds=8", "data.test_seeds=9-10"])
    assert cfg.data.n_classes == 5
    with pytest.raises(ConfigError, match=r"share box\(es\) \[7\]"):
        load_config(None, ["data.train_seeds=0-7", "data.val_seeds=7-8"])
    with pytest.raises(ConfigError, match="test_seeds"):
        load_config(None, ["data.train_seeds=0-7", "data.val_seeds=8", "data.test_seeds=3"])
    assert load_config(None, ["data.val_seeds=''", "data.test_seeds=''"]).data.val_seeds == ""


def test_real_simulated_boxes(sim_boxes):
    stats = training_stats(sim_boxes, [0, 1])
    ds = BoxDataset([box_path(sim_boxes, s) for s in (0, 1)], ("delta", "T"), (12.5, 13.0, 13.5), stats, crop=32)
    x = np.concatenate([a.reshape(2, -1) for a in ds.x], axis=1)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=1), 1, rtol=1e-4)
    counts = ds.class_counts()
    assert counts.sum() == 2 * 32**3 and (counts > 0).all()
    assert 0.15 < 1 - counts[0] / counts.sum() < 0.6  # ~1/3 of Lagrangian voxels end in halos
