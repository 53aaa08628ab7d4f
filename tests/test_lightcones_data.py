"""The light-cone data set: normalised parameters, splits, line-of-sight fitting, thermal noise."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from halotrans.config import load_config
from halotrans.io import DataError
from halotrans.skatr.dataset import (
    LightConeDataset,
    denormalize_params,
    normalize_params,
    split_indices,
    thermal_noise,
    thermal_noise_sigma,
    uv_coverage,
)
from tests.helpers import TINY_LIGHTCONES as TINY


@pytest.mark.slow
def test_items_and_parameters_invert(tiny_set):
    ds = LightConeDataset(tiny_set, split="all")
    assert len(ds) == 2 and ds.param_names == ["omega_m", "e0", "log10_lx", "log10_tvir", "zeta"]
    x, theta = ds[1]
    assert x.shape == (1, 8, 8, 45) and x.dtype == torch.float32 and theta.shape == (5,)
    assert ((theta >= 0) & (theta <= 1)).all()
    with h5py.File(tiny_set) as f:
        np.testing.assert_array_equal(x[0].numpy(), f["brightness_temp"][1])
        physical = f["params"][1, 1:]
    np.testing.assert_allclose(denormalize_params(theta.numpy(), ds.priors), physical, rtol=1e-6)


def test_normalisation_round_trip():
    priors = np.array([[0.3, 10.0], [0.2, 0.4], [100.0, 1500.0], [38.0, 42.0], [4.0, 5.3], [10.0, 250.0]])
    theta = priors[:, 0] + np.random.default_rng(0).random((50, 6)) * (priors[:, 1] - priors[:, 0])
    u = normalize_params(theta, priors)
    assert (u >= 0).all() and (u <= 1).all()
    np.testing.assert_allclose(normalize_params(priors.T, priors), [[0] * 6, [1] * 6])
    np.testing.assert_allclose(denormalize_params(u, priors), theta, rtol=1e-12)


def test_splits_are_disjoint_fixed_and_complete():
    s = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(np.concatenate(list(s.values()))) == list(range(100))
    again = split_indices(100, (0.8, 0.1, 0.1), seed=3)
    assert all((s[k] == again[k]).all() for k in s)
    assert not (split_indices(100, (0.8, 0.1, 0.1), seed=4)["val"] == s["val"]).all()


@pytest.mark.slow
def test_line_of_sight_crop_and_pad(tiny_set):
    crop = LightConeDataset(tiny_set, split="all", los_multiple=10)
    pad = LightConeDataset(tiny_set, split="all", los_multiple=10, los_fit="pad")
    full = LightConeDataset(tiny_set, split="all")
    assert crop[0][0].shape[-1] == 40 and pad[0][0].shape[-1] == 50
    torch.testing.assert_close(crop[0][0], full[0][0][..., :40])  # keeps the low-redshift end
    torch.testing.assert_close(pad[0][0][..., :45], full[0][0])
    assert (pad[0][0][..., 45:] == 0).all() and np.isnan(pad.redshifts[45:]).all()
    assert crop.redshifts[0] == 5.0


@pytest.mark.slow
def test_noise_has_the_requested_sigma_per_redshift(tiny_set):
    clean = LightConeDataset(tiny_set, split="all")
    noisy = LightConeDataset(tiny_set, split="all", noise_mk=5.0, noise_z_ref=8.0, noise_seed=11)
    sigma = thermal_noise_sigma(clean.redshifts, 5.0, 8.0, 100.0)
    np.testing.assert_allclose(noisy.noise_sigma, sigma)
    assert sigma[0] < 5.0 < sigma[-1]  # the sky is brighter at low frequency (high z)
    diff = np.stack([(noisy[i][0] - clean[i][0]).numpy()[0] for i in range(len(clean))])
    z_ref = np.argmin(np.abs(clean.redshifts - 8.0))
    ratio = diff / sigma
    assert ratio.std() == pytest.approx(1.0, rel=0.08)
    assert abs(diff.mean(axis=(0, 1, 2))).max() < 1e-4 * sigma.max()  # no k_perp = 0 mode: slice means kept
    assert diff[..., z_ref].std() == pytest.approx(sigma[z_ref], rel=0.35)
    torch.testing.assert_close(noisy[0][0], noisy[0][0])  # fixed seed: the same noise every time
    fresh = LightConeDataset(tiny_set, split="all", noise_mk=5.0)
    assert not torch.equal(fresh[0][0], fresh[0][0])


def test_noise_model_statistics_on_a_larger_grid():
    rng = np.random.default_rng(0)
    z = np.linspace(6.0, 20.0, 30)
    d = 6000.0 + 300.0 * z
    sigma = thermal_noise_sigma(z, 10.0, 8.0, 100.0)
    cover = uv_coverage(32, 4.0, z, d, max_baseline_m=None)
    n = np.stack([thermal_noise(sigma, cover, rng) for _ in range(20)])
    np.testing.assert_allclose(n.std(axis=(0, 1, 2)) / sigma, 1.0, atol=0.05)
    limited = uv_coverage(32, 4.0, z, d, max_baseline_m=500.0)
    kept = limited.sum(axis=(0, 1))
    assert kept[0] > kept[-1] > 0  # longer wavelengths at high z: fewer modes on the same baselines
    m = np.stack([thermal_noise(sigma, limited, rng) for _ in range(40)])
    assert (m / sigma).std() == pytest.approx(1.0, abs=0.03)  # few modes per slice: pool the slices
    spec = np.abs(np.fft.fft2(m[0], axes=(0, 1))) ** 2
    assert spec[~limited].max() < 1e-10 * spec[limited].mean()  # no power outside the baselines


@pytest.mark.slow
def test_from_config_and_dataloader(tiny_set):
    cfg = load_config(TINY, [f"lightcone.out={tiny_set}", "lightcone.split=[0.5,0.5,0.0]",
                             "lightcone.noise_mk=2.0"]).lightcone
    train = LightConeDataset.from_config(cfg, "train")
    val = LightConeDataset.from_config(cfg, "val", noise_seed=0)
    assert len(train) == len(val) == 1 and set(train.seeds) | set(val.seeds) == {0, 4}
    loader = torch.utils.data.DataLoader(train, batch_size=1, num_workers=1)
    x, theta = next(iter(loader))
    assert x.shape == (1, 1, 8, 8, 40) and theta.shape == (1, 5)


def test_missing_file_and_bad_layout_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LightConeDataset(tmp_path / "none.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["brightness_temp"] = np.zeros((2, 4, 4, 10), np.float32)
    with pytest.raises(DataError, match="missing dataset"):
        LightConeDataset(bad)
