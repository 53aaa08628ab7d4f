"""Physics input channels: multi-scale smoothed δ and the ellipsoidal collapse time (fields.smoothing,
fields.collapse, fields.features), their shear-stage hook, and their use as data.inputs.

Checked against independent references (numpy FFT, scipy's real-space Gaussian filter, numpy's cubic
roots, hand-computed spherical and planar limits), on the real 32³ boxes of the ``sim_boxes`` fixture.
The per-voxel halo/no-halo AUC of every channel is printed (and, where data/reference/boxes exists,
measured on its eight 64³ boxes).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

from halotrans.cli import main
from halotrans.config import load_config
from halotrans.data.boxes import load_inputs
from halotrans.data.config import DataConfig
from halotrans.data.stats import INPUT_DATASETS, compute_stats
from halotrans.eval.metrics import roc_auc
from halotrans.fields.channels import feature_names, is_input_name
from halotrans.fields.collapse import DELTA_C, F_MAX, inverse_collapse_time, tidal_eigenvalues
from halotrans.fields.features import compute_features, growth_at_z_init
from halotrans.fields.smoothing import smoothed_density
from halotrans.fields.tidal import tidal_tensor
from halotrans.io import DataError
from halotrans.sims.boxio import read_attrs

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference" / "boxes"


def read(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def numpy_smoothed(delta: np.ndarray, box_size: float, radius: float, window: str) -> np.ndarray:
    """Reference: numpy FFT with the window written out from its definition."""
    n = delta.shape[0]
    k = 2 * np.pi * np.fft.fftfreq(n, d=box_size / n)
    kz = 2 * np.pi * np.fft.rfftfreq(n, d=box_size / n)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2)
    x = kk * radius
    if window == "gaussian":
        w = np.exp(-x**2 / 2)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(x > 0, 3 * (np.sin(x) - x * np.cos(x)) / x**3, 1.0)
    return np.fft.irfftn(np.fft.rfftn(delta.astype(np.float64)) * w, s=delta.shape, axes=(0, 1, 2))


def hand_cubic_f(l1: float, l2: float, l3: float) -> float:
    """F = 1/b_c from the module docstring's formula, by numpy's polynomial roots (smallest positive D)."""
    d = l1 + l2 + l3
    coeffs = [-(l1 * l2 * l3 / 126 + 5 * l1 * d * (d - l1) / 84), -(3 / 14) * l1 * (d - l1), -l1, 1.0]
    roots = [r.real for r in np.roots(coeffs) if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and r.real > 0]
    if not roots:
        return 0.0
    b_c = min(roots)
    if d > 0:
        b_c -= 0.364 / d * np.exp(-6.5 * (l1 - l2) / d - 2.8 * (l2 - l3) / d)
    return 1.0 / b_c if b_c > 0 else 0.0


# -- smoothing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["gaussian", "tophat"])
@pytest.mark.parametrize("radius", [0.0, 2.0, 4.0])
def test_smoothing_matches_numpy_reference(sim_boxes, window, radius):
    path = sim_boxes / "box_0000.h5"
    delta, box_size = read(path, "delta"), float(read_attrs(path)["box_size"])
    ours = smoothed_density(torch.from_numpy(delta).double(), box_size, radius, window).numpy()
    ref = numpy_smoothed(delta, box_size, radius, window) if radius else delta
    assert np.abs(ours - ref).max() < 1e-12 * np.abs(ref).max()
    assert ours.mean() == pytest.approx(delta.mean(), abs=1e-9)  # W(0) = 1


def test_gaussian_smoothing_matches_real_space_filter(sim_boxes):
    """Independent of any FFT: scipy's periodic real-space Gaussian of σ = R / cell."""
    path = sim_boxes / "box_0001.h5"
    delta, box_size = read(path, "delta").astype(np.float64), float(read_attrs(path)["box_size"])
    cell, radius = box_size / delta.shape[0], 3.0
    ours = smoothed_density(torch.from_numpy(delta), box_size, radius).numpy()
    ref = ndimage.gaussian_filter(delta, sigma=radius / cell, mode="wrap", truncate=8.0)
    assert np.abs(ours - ref).max() < 0.01 * ref.std()


# -- ellipsoidal collapse ----------------------------------------------------------------------------
@pytest.mark.parametrize("delta0", [0.3, 1.0, DELTA_C, 2.5, 8.0])
def test_spherical_limit_is_delta_c(delta0):
    """λ1 = λ2 = λ3 = δ0/3: the axis collapses when the linear δ reaches δ_c = 1.686, F = δ0/1.686."""
    lam = torch.full((3,), delta0 / 3, dtype=torch.float64)
    f = float(inverse_collapse_time(*lam))
    assert f == pytest.approx(hand_cubic_f(delta0 / 3, delta0 / 3, delta0 / 3), rel=1e-12)
    assert f == pytest.approx(delta0 / DELTA_C, rel=1e-4)
    assert delta0 / f == pytest.approx(1.686, abs=2e-4)  # linear δ at collapse


def test_planar_and_no_collapse_limits():
    """(λ, 0, 0): Zel'dovich b_c = 1/λ exactly to 3rd order, then the correction; λ1 ≤ 0: never collapses."""
    lam1 = 0.8
    f = float(inverse_collapse_time(*torch.tensor([lam1, 0.0, 0.0], dtype=torch.float64)))
    assert f == pytest.approx(1.0 / (1.0 / lam1 - 0.364 / lam1 * np.exp(-6.5)), rel=1e-12)
    l = torch.tensor([[0.0, -0.1, -2.0], [-0.2, -0.3, -3.0], [-0.5, -1.0, -1.0]], dtype=torch.float64).T
    assert inverse_collapse_time(*l).tolist() == [0.0, 0.0, 0.0]


def test_general_eigenvalues_match_hand_cubic():
    rng = np.random.default_rng(1)
    lam = np.sort(rng.normal(size=(3, 400)) * rng.uniform(0.05, 4.0, size=400), axis=0)[::-1].copy()
    ours = inverse_collapse_time(*torch.from_numpy(lam)).numpy()
    ref = np.array([hand_cubic_f(*lam[:, i]) for i in range(lam.shape[1])])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_collapse_is_finite_for_extreme_eigenvalues():
    rng = np.random.default_rng(2)
    scale = 10.0 ** rng.uniform(-12, 4, size=20000)
    lam = np.sort(rng.normal(size=(3, 20000)) * scale, axis=0)[::-1].copy()
    lam[:, :100] = 0.0
    lam[1:, 100:200] = lam[0, 100:200]  # exactly degenerate
    f = inverse_collapse_time(*torch.from_numpy(lam))
    assert torch.isfinite(f).all() and f.min() >= 0 and f.max() <= F_MAX
    assert (f[:100] == 0).all()


def test_eigenvalues_are_ordered_and_sum_to_trace(sim_boxes):
    path = sim_boxes / "box_0000.h5"
    delta = torch.from_numpy(read(path, "delta")).double()
    tij = tidal_tensor(delta, 32.0, smoothing=2.0)
    lam = tidal_eigenvalues(tij, chunk=1000)
    assert (lam[0] >= lam[1]).all() and (lam[1] >= lam[2]).all()
    torch.testing.assert_close(lam.sum(0), tij[0] + tij[1] + tij[2], atol=1e-12, rtol=0)


def test_peak_centre_is_spherical_and_scaled_by_growth():
    """At the centre of a cubic-symmetric peak T_ij ∝ δ_ij: F = δ0,R/1.686 with δ0 = δ(z_init)/D(z_init)."""
    n, box_size, growth = 32, 32.0, 0.0127
    x = np.arange(n) - n // 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    delta0 = 3.0 * np.exp(-r2 / (2 * 3.0**2))
    delta0 -= delta0.mean()  # a box's δ has zero mean (T_ij drops k = 0: tr T = δ − mean δ)
    out = compute_features(torch.from_numpy(delta0 * growth), box_size, [2.0], growth=growth)
    c = (n // 2,) * 3
    d0_centre = float(out["delta_R2"][c]) / growth
    assert float(out["collapse_R2"][c]) == pytest.approx(d0_centre / DELTA_C, rel=2e-4)
    # the same box at another starting redshift gives the same F
    other = compute_features(torch.from_numpy(delta0 * 2 * growth), box_size, [2.0], growth=2 * growth)
    torch.testing.assert_close(other["collapse_R2"], out["collapse_R2"], rtol=1e-10, atol=1e-12)


def test_growth_from_cosmology_matches_the_box_attr(sim_boxes, tmp_path):
    path = sim_boxes / "box_0002.h5"
    stored = growth_at_z_init(path)
    bare = tmp_path / "box_0002.h5"
    shutil.copyfile(path, bare)
    with h5py.File(bare, "r+") as f:
        del f.attrs["growth_z_init"]
    assert growth_at_z_init(bare) == pytest.approx(stored, rel=1e-3)
    with h5py.File(bare, "r+") as f:
        del f.attrs["cosmology"]
    with pytest.raises(DataError, match="growth_z_init"):
        growth_at_z_init(bare)


# -- the shear-stage hook ----------------------------------------------------------------------------
def fingerprint(paths) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


@pytest.fixture
def boxes(sim_boxes, tmp_path) -> list[Path]:
    """Copies of two real boxes (the session's boxes stay untouched)."""
    out = []
    for name in ("box_0000.h5", "box_0001.h5"):
        out.append(Path(shutil.copyfile(sim_boxes / name, tmp_path / name)))
    return out


def test_shear_stage_writes_features_and_skips_when_done(boxes, capsys):
    before = fingerprint(boxes)
    assert main(["shear", str(boxes[0].parent)]) == 0  # default: no features, nothing rewritten
    assert "features" not in capsys.readouterr().out and fingerprint(boxes) == before

    assert main(["shear", str(boxes[0].parent), "--set", "shear.feature_radii=[2,4]"]) == 0
    assert "features: 2 box(es) computed, 0 skipped" in capsys.readouterr().out
    names = feature_names([2.0, 4.0])
    assert names == ["delta_R2", "collapse_R2", "delta_R4", "collapse_R4", "collapse_max"]
    for path in boxes:
        with h5py.File(path, "r") as f:
            g = f["features"]
            assert sorted(g) == sorted(names) and g.attrs["window"] == "gaussian"
            assert g.attrs["radii"].tolist() == [2.0, 4.0] and "T" in f["tidal"]
            stored = {n: g[n][...] for n in names}
        expected = compute_features(torch.from_numpy(read(path, "delta")), 32.0, [2.0, 4.0],
                                    growth=growth_at_z_init(path))
        for n in names:
            assert stored[n].dtype == np.float32 and np.isfinite(stored[n]).all()
            np.testing.assert_allclose(stored[n], expected[n].numpy(), rtol=1e-6, atol=1e-6)
        assert (stored["collapse_max"] == np.maximum(stored["collapse_R2"], stored["collapse_R4"])).all()

    done = fingerprint(boxes)
    assert main(["shear", str(boxes[0].parent), "--set", "shear.feature_radii=[2,4]"]) == 0
    assert "features: 0 box(es) computed, 2 skipped" in capsys.readouterr().out
    assert fingerprint(boxes) == done

    assert main(["shear", str(boxes[0]), "--set", "shear.feature_radii=[2,4]",
                 "--set", "shear.feature_window=tophat"]) == 0
    assert "features: 1 box(es) computed, 0 skipped" in capsys.readouterr().out
    assert read(boxes[0], "features/delta_R2").tolist() != read(boxes[1], "features/delta_R2").tolist()
    assert sorted(p.name for p in boxes[0].parent.iterdir()) == ["box_0000.h5", "box_0001.h5"]


@pytest.mark.mpi
def test_under_mpiexec_rank0_adds_the_features(boxes, mpiexec):
    """2 MPI ranks: slab-parallel shear, then rank 0 computes the features serially (same values)."""
    import sys

    from tests.helpers import run

    with h5py.File(boxes[0], "r+") as f:
        del f["tidal"]
    proc = run([*mpiexec, "-n", "2", sys.executable, "-m", "halotrans", "shear", str(boxes[0]),
                "--set", "shear.feature_radii=[2]"], timeout=300)
    assert "features: 1 box(es) computed" in proc.stdout and "2 MPI rank(s)" in proc.stdout
    expected = compute_features(torch.from_numpy(read(boxes[0], "delta")), 32.0, [2.0],
                                growth=growth_at_z_init(boxes[0]))
    np.testing.assert_allclose(read(boxes[0], "features/collapse_R2"), expected["collapse_R2"].numpy(),
                               rtol=1e-6, atol=1e-6)


def test_bad_feature_settings_are_config_errors(boxes):
    for bad in ("shear.feature_radii=[2,2.0]", "shear.feature_radii=[-1]", "shear.feature_window=sharpk"):
        assert main(["shear", str(boxes[0]), "--set", bad]) == 2


# -- data.inputs -------------------------------------------------------------------------------------
def test_data_inputs_accept_channels_and_stats_cover_them(boxes):
    assert main(["shear", str(boxes[0].parent), "--set", "shear.feature_radii=[2]"]) == 0
    inputs = ("delta", "T", "delta_R2", "collapse_R2", "collapse_max")
    assert DataConfig(inputs=inputs).inputs == inputs
    assert load_config(None, ["data.inputs=[delta,collapse_R2]"]).data.inputs == ("delta", "collapse_R2")
    for bad in (("delta_R",), ("collapse_Rx",), ("delta", "delta"), ("delta_r2",)):
        with pytest.raises(ValueError):
            DataConfig(inputs=bad)
    assert all(is_input_name(n) for n in inputs) and INPUT_DATASETS["delta_R1.5"] == "features/delta_R1.5"

    stats = compute_stats(boxes)
    assert set(inputs) <= set(stats)
    x = np.stack([load_inputs(p, inputs, stats) for p in boxes])  # (B, C, N, N, N)
    assert x.shape == (2, 5, 32, 32, 32) and np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3, 4)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3, 4)), 1.0, atol=1e-4)

    with pytest.raises(DataError, match="shear.feature_radii=\\[4\\]"):
        load_inputs(boxes[0], ("delta_R4",), stats)


# -- how informative is each channel --------------------------------------------------------------
def channel_aucs(paths, radii, window="gaussian") -> dict[str, list[float]]:
    """Per-voxel AUC of each channel for halo vs no halo and each mass class vs the rest (edges 13, 13.5, 14)."""
    from halotrans.data.boxes import mass_to_class

    values: dict[str, list[np.ndarray]] = {}
    classes = []
    for path in paths:
        delta = read(path, "delta")
        arrays = compute_features(torch.from_numpy(delta), float(read_attrs(path)["box_size"]), radii, window,
                                  growth_at_z_init(path))
        arrays = {"delta": delta, "-T": -read(path, "tidal/T"), **{k: v.numpy() for k, v in arrays.items()}}
        for k, v in arrays.items():
            values.setdefault(k, []).append(np.asarray(v, dtype=np.float64).ravel())
        classes.append(mass_to_class(read(path, "halo_mass"), (13.0, 13.5, 14.0)).ravel())
    y = np.concatenate(classes)
    return {k: [roc_auc(np.concatenate(v), y > 0)] + [roc_auc(np.concatenate(v), y == c) for c in range(1, 5)]
            for k, v in values.items()}


def print_table(title: str, aucs: dict[str, list[float]]) -> None:
    print(f"\n{title}\n{'channel':14s} {'halo':>6s} {'<13':>6s} {'13-13.5':>7s} {'13.5-14':>7s} {'>=14':>6s}")
    for k, row in aucs.items():
        print(f"{k:14s} " + " ".join(f"{a:6.3f}" for a in row))


def test_channel_aucs_on_real_boxes(sim_boxes, capsys):
    paths = sorted(sim_boxes.glob("box_*.h5"))
    aucs = channel_aucs(paths, [1.0, 2.0, 4.0])
    with capsys.disabled():
        print_table(f"per-voxel AUC, {len(paths)} real 32³ boxes (L = 32 Mpc/h), Gaussian window", aucs)
    assert aucs["delta_R2"][0] > aucs["delta"][0]  # smoothing helps (DESIGN.md: 0.75 → 0.90 at 64³)
    for r in ("1", "2", "4"):
        assert aucs[f"collapse_R{r}"][0] > 0.7
    assert aucs["collapse_max"][0] > 0.7


@pytest.mark.slow
@pytest.mark.skipif(not (REFERENCE / "box_0007.h5").is_file(), reason="no data/reference/boxes")
def test_channel_aucs_on_reference_boxes(capsys):
    """The eight 64³ reference boxes (64 Mpc/h): δ at R = 2 Mpc/h gives AUC ≈ 0.90 (DESIGN.md)."""
    aucs = channel_aucs([REFERENCE / f"box_{i:04d}.h5" for i in range(8)], [1.0, 2.0, 4.0, 8.0])
    with capsys.disabled():
        print_table("per-voxel AUC, data/reference/boxes box_0000-0007 (64³, 64 Mpc/h), Gaussian window", aucs)
    assert aucs["delta_R2"][0] == pytest.approx(0.90, abs=0.02)
    assert max(aucs[f"collapse_R{r}"][0] for r in ("1", "2", "4", "8")) > 0.8


def test_tiny_vipr_trains_on_physics_channels(sim_boxes, tmp_path):
    """configs/segment/tiny_vipr_physics.yaml end to end: its shear section adds the channels, then a
    few training steps read them (7 standardised input channels, stats in the run directory)."""
    import json

    from tests.helpers import halotrans_cli

    root = tmp_path / "boxes"
    root.mkdir()
    for p in sorted(sim_boxes.glob("box_*.h5")):
        shutil.copyfile(p, root / p.name)
    config = "segment/tiny_vipr_physics.yaml"
    proc = halotrans_cli("shear", root, "--config", config)
    assert "features: 4 box(es) computed" in proc.stdout
    out = tmp_path / "run"
    settings = (f"data.root={root}", f"train.out_dir={out}", "data.crop=16", "train.steps=2", "train.eval_every=0",
                "train.checkpoint_every=2", "train.warmup_steps=1", "model.hidden_size=32", "model.mlp_dim=64")
    halotrans_cli("train", "--config", config, *[a for s in settings for a in ("--set", s)], timeout=600)
    inputs = load_config(config).data.inputs
    norm = json.loads((out / "norm_stats.json").read_text())
    assert len(inputs) == 7 and set(inputs) <= set(norm)
    assert all(np.isfinite([s["mean"], s["std"]]).all() and s["std"] > 0 for s in norm.values())
