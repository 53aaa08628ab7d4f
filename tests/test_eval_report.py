"""The comparison report: files for several named predictions, values, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from halotrans.eval import metrics
from halotrans.eval.report import class_names, write_report
from halotrans.eval.truth import BoxTruth, load_truth, voxel_mass
from halotrans.io import DataError
from halotrans.sims.boxio import write_box

EDGES = (13.0, 13.5)  # 4 classes: none, <13, 13-13.5, >=13.5
MP = 1e11  # M☉/h per voxel


def synthetic_box(seed: int, n: int = 12) -> BoxTruth:
    """Three cubic proto-halos (one per halo class) with consistent catalogue masses."""
    rng = np.random.default_rng(seed)
    halo_id = -np.ones((n, n, n), np.int32)
    logm = np.zeros((n, n, n), np.float32)
    labels = np.zeros((n, n, n), np.int64)
    for h, (lo, side, cls) in enumerate([((1, 1, 1), 2, 1), ((5, 5, 5), 3, 2), ((8, 1, 7), 4, 3)]):
        sl = tuple(slice(l, l + side) for l in lo)
        halo_id[sl], logm[sl], labels[sl] = h, np.log10(side**3 * MP), cls
    return BoxTruth(f"boxes/box_{seed:04d}.h5", labels, logm, halo_id,
                    rng.normal(size=(n, n, n)).astype(np.float32), MP, 12.0)


def probs_from(labels: np.ndarray, k: int, rng, sharp: float = 3.0) -> np.ndarray:
    logits = rng.normal(size=(k, *labels.shape))
    np.put_along_axis(logits, labels[None], sharp, axis=0)
    e = np.exp(logits)
    return (e / e.sum(axis=0)).astype(np.float32)


@pytest.fixture
def truths():
    return [synthetic_box(1), synthetic_box(2)]


def test_report_for_two_models(tmp_path, truths):
    rng = np.random.default_rng(0)
    perfect = [probs_from(t.labels, 4, rng, sharp=50.0) for t in truths]
    shifted = [np.roll(t.labels, 1, axis=0) for t in truths]  # hard labels (like PINOCCHIO)
    out = tmp_path / "report"
    res = write_report(out, truths, {"vipr": perfect, "PINOCCHIO": shifted}, EDGES, tolerance=1.0,
                       meta={"vipr": {"step": 3}})
    files = sorted(p.name for p in out.iterdir())
    assert files == ["confusion.png", "halo_masses.png", "report.json", "report.md", "roc.png", "slices.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == res and list(res["models"]) == ["vipr", "PINOCCHIO"]

    v = res["models"]["vipr"]
    assert v["kind"] == "probabilities" and v["accuracy"] == 1.0 and v["auc_halo_vs_none"] == 1.0
    true_counts = sum(np.bincount(t.labels.ravel(), minlength=4) for t in truths)
    for c, row in enumerate(v["per_class"]):
        assert row["auc"] == 1.0 and row["accuracy"] == 1.0 and row["surface_dice"] == 1.0
        assert row["mass_true"] == pytest.approx(true_counts[c] * MP) and row["mass_rel_error"] == 0.0
    assert v["halos"]["n_halos"] == 6 and v["halos"]["detected_fraction"] == 1.0
    assert v["halos"]["log_ratio_median"] == pytest.approx(0.0, abs=1e-5)

    p = res["models"]["PINOCCHIO"]
    true_all = np.concatenate([t.labels.ravel() for t in truths])
    pred_all = np.concatenate([s.ravel() for s in shifted])
    assert p["kind"] == "labels"
    assert p["accuracy"] == pytest.approx(metrics.accuracy(true_all, pred_all))
    assert p["confusion"] == metrics.confusion_matrix(true_all, pred_all, 4).tolist()
    for c in range(4):
        assert p["per_class"][c]["auc"] == pytest.approx(metrics.roc_auc(pred_all == c, true_all == c))
        assert p["per_class"][c]["mass_rel_error"] == pytest.approx(0.0)  # a shift keeps the mass
    assert p["surface_dice_halo"] == 1.0  # one-voxel shift is within tau = 1

    md = (out / "report.md").read_text()
    assert "| vipr | 1.0000 |" in md and "| PINOCCHIO |" in md
    for name in class_names(EDGES):
        assert f"| {name} | vipr |" in md and f"| {name} | PINOCCHIO |" in md
    assert not list(out.glob("*.tmp-*"))


def test_report_with_gradcam_and_extra_rows(tmp_path, truths):
    rng = np.random.default_rng(1)
    preds = {name: [probs_from(t.labels, 4, rng, sharp=s) for t in truths]
             for name, s in [("vipr", 4.0), ("copra", 2.0), ("MONAI UNETR", 1.0)]}
    preds["logistic regression"] = [np.zeros_like(t.labels) for t in truths]  # predicts "no halo" everywhere
    cams = {"copra": (truths[0].delta, rng.random((3, 12, 12, 12)), [1, 2, 3])}
    res = write_report(tmp_path, truths, preds, EDGES, gradcams=cams)
    assert (tmp_path / "gradcam.png").is_file() and "gradcam.png" in res["figures"].values()
    lr = res["models"]["logistic regression"]
    assert lr["halos"]["detected_fraction"] == 0.0 and lr["per_class"][1]["mass_rel_error"] == -1.0
    assert lr["per_class"][1]["auc"] == 0.5 and lr["per_class"][1]["precision"] is None  # never predicted
    accs = [res["models"][m]["accuracy"] for m in ("vipr", "copra", "MONAI UNETR")]
    assert accs[0] >= accs[1] >= accs[2]  # sharper logits around the truth rank as expected
    assert "| – |" in (tmp_path / "report.md").read_text()  # undefined numbers shown as a dash


def test_bad_predictions_are_clear_errors_and_write_nothing(tmp_path, truths):
    rng = np.random.default_rng(2)
    good = [probs_from(t.labels, 4, rng) for t in truths]
    out = tmp_path / "r"
    cases = [
        ({"m": [probs_from(t.labels, 5, rng) for t in truths]}, "predicts 5 classes but the data are binned into 4"),
        ({"m": [p[:, :6] for p in good]}, "probabilities of shape"),
        ({"m": good[:1]}, "1 predictions for 2 boxes"),
        ({"m": [t.labels[:6] for t in truths]}, "labels of shape"),
        ({"m": [t.labels + 1 for t in truths]}, "labels outside 0..3"),
        ({}, "no predictions"),
    ]
    for preds, msg in cases:
        with pytest.raises(DataError, match=msg):
            write_report(out, truths, preds, EDGES)
        assert not out.exists()
    with pytest.raises(DataError, match="no test boxes"):
        write_report(out, [], {"m": []}, EDGES)


def test_load_truth_from_a_box_file(tmp_path):
    n = 8
    logm = np.zeros((n, n, n), np.float32)
    logm[:2] = 12.5
    logm[4:6] = 13.2
    logm[7] = 13.5  # exactly on an edge: the upper class, as in training
    ids = np.where(logm > 0, np.searchsorted([12.0, 13.0, 13.4], logm), -1).astype(np.int32)
    attrs = {"box_size": 8.0, "seed": 3, "z_init": 99.0, "particle_mass": 2.5e10}
    path = write_box(tmp_path / "box_0003.h5", np.zeros((n, n, n)), logm, attrs, extra={"halo_id": ids})
    t = load_truth(path, EDGES)
    np.testing.assert_array_equal(t.labels[0, 0, 0], 1)
    assert t.labels[4, 0, 0] == 2 and t.labels[7, 0, 0] == 3 and t.labels[3, 0, 0] == 0
    assert t.voxel_mass == 2.5e10 and t.box_size == 8.0 and t.halo_id is not None and t.name == "box_0003"

    no_ids = write_box(tmp_path / "box_0004.h5", np.zeros((n, n, n)), logm, {**attrs, "seed": 4})
    assert load_truth(no_ids, EDGES).halo_id is None
    with pytest.raises(DataError, match="not found"):
        load_truth(tmp_path / "box_0009.h5", EDGES)


def test_voxel_mass_from_cosmology():
    # Om0 rho_crit (L/N)^3 with L/N = 1 Mpc/h
    assert voxel_mass({"cosmology": {"Om0": 0.3}, "box_size": 32.0}, 32) == pytest.approx(0.3 * 2.775e11)
    with pytest.raises(DataError, match="particle_mass"):
        voxel_mass({"box_size": 32.0}, 32, "b.h5")


def test_class_names():
    assert class_names((13.0, 13.5, 14.0)) == ["no halo", "<13", "13–13.5", "13.5–14", "≥14"]
