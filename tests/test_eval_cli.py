"""End to end: train tiny vipr and copra for a few steps, then ``python -m halotrans evaluate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from halotrans.cli import main
from halotrans.eval import metrics
from halotrans.sims.boxio import box_path, write_box
from tests.helpers import halotrans_cli

N = 32
MP = 3e10  # M☉/h per voxel


def write_boxes(root, seeds, n: int = N, shear: bool = True):
    """Smooth random δ; halos = periodic connected peaks, each with its Lagrangian mass (count × MP)."""
    for s in seeds:
        rng = np.random.default_rng(s)
        k = np.fft.fftfreq(n) * n
        k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        delta = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n, n, n))) * np.exp(-k2 / 32)).real
        delta /= delta.std()
        comp, _ = metrics.periodic_components(delta > 1.0)
        halo_id = (comp - 1).astype(np.int32)
        counts = np.bincount(comp.ravel())
        halo_mass = np.where(comp > 0, np.log10(counts[comp] * MP), 0).astype(np.float32)
        extra = {"halo_id": halo_id}
        if shear:
            extra["tidal/T"] = np.abs(np.gradient(delta, axis=0)).astype(np.float32)
        write_box(box_path(root, s), delta, halo_mass,
                  {"box_size": float(n), "seed": s, "z_init": 99.0, "particle_mass": MP}, extra)
    return root


def train(config: str, boxes, out, *extra: str):
    halotrans_cli("train", "--config", config, "--set", f"data.root={boxes}", "--set", f"train.out_dir={out}",
                  "--set", "train.steps=3", "--set", "train.eval_every=0", "--set", "train.checkpoint_every=3",
                  *sum((["--set", e] for e in extra), []), timeout=300)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    boxes = write_boxes(root / "boxes", range(4))
    return {
        "boxes": boxes,
        "vipr": train("segment/tiny_vipr.yaml", boxes, root / "vipr", "model.hidden_size=32", "model.mlp_dim=64"),
        "copra": train("segment/tiny_copra.yaml", boxes, root / "copra", "model.feature_size=4"),
    }


def whole_box_accuracy(run_dir, box) -> float:
    """Independent check: the trained net on the whole box in one pass (window = box) vs the labels."""
    from halotrans.data.boxes import load_classes, load_inputs
    from halotrans.train.checkpoint import load_for_inference

    model, _, meta = load_for_inference(run_dir)
    with torch.no_grad():
        pred = model(torch.from_numpy(load_inputs(box, meta["inputs"], meta["norm_stats"]))[None])[0].argmax(0)
    return metrics.accuracy(load_classes(box, meta["class_edges"]), pred.numpy())


@pytest.mark.slow
def test_evaluate_two_trained_runs(runs, tmp_path):
    out = tmp_path / "report"
    proc = halotrans_cli("evaluate", runs["vipr"], runs["copra"], runs["boxes"], "--out", out, timeout=300)
    assert "report:" in proc.stdout
    res = json.loads((out / "report.json").read_text())
    assert list(res["models"]) == ["vipr", "copra"]
    assert res["boxes"] == [str(box_path(runs["boxes"], 3))]  # the runs' test split
    assert {"report.md", "roc.png", "confusion.png", "slices.png", "halo_masses.png", "gradcam.png"} <= \
        {p.name for p in out.iterdir()}
    for name in ("vipr", "copra"):
        m = res["models"][name]
        assert m["accuracy"] == pytest.approx(whole_box_accuracy(runs[name], box_path(runs["boxes"], 3)), abs=1e-6)
        assert res["meta"][name]["window"] == 32 and res["meta"][name]["step"] == 3
        assert m["halos"]["n_halos"] > 0 and len(m["per_class"]) == 5
        mass_true = sum(p["mass_true"] for p in m["per_class"])
        assert mass_true == pytest.approx(N**3 * MP)  # every voxel's mass is in exactly one class
    md = (out / "report.md").read_text()
    assert "| vipr |" in md and "| copra |" in md and "![ROC curves" in md


def evaluate(*args, capsys) -> tuple[int, str]:
    """``python -m halotrans evaluate ...`` in this process (the same entry point, without a new interpreter)."""
    rc = main(["evaluate", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.slow
def test_sliding_windows_and_window_larger_than_box(runs, tmp_path, capsys):
    box = box_path(write_boxes(tmp_path / "big", [7], n=48), 7)  # a larger box than the 32³ training crops
    rc, slide = evaluate(runs["copra"], box, "--out", tmp_path / "w32", "--name", "copra-w32",
                         "--set", "eval.overlap=0.5", "--set", "eval.gradcam=false", capsys=capsys)
    assert rc == 0 and "wrapped" not in slide
    rc, wrap = evaluate(runs["copra"], box, "--out", tmp_path / "w64", "--set", "eval.window=64",
                        "--set", "eval.gradcam_layer=down.1", capsys=capsys)
    assert rc == 0 and "wrapped periodically" in wrap
    r32 = json.loads((tmp_path / "w32" / "report.json").read_text())
    r64 = json.loads((tmp_path / "w64" / "report.json").read_text())
    assert r32["meta"]["copra-w32"]["window"] == 32 and r64["meta"]["copra"]["window"] == 64
    assert r32["grid"] == "48×48×48"
    assert not (tmp_path / "w32" / "gradcam.png").exists() and (tmp_path / "w64" / "gradcam.png").exists()
    t32, t64 = (sum(p["mass_true"] for p in r["models"][m]["per_class"]) for r, m in ((r32, "copra-w32"), (r64, "copra")))
    assert t32 == t64 == pytest.approx(48**3 * MP)
    rc, _ = evaluate(runs["copra"], runs["boxes"], "--split", "val", "--out", tmp_path / "val",
                     "--set", "eval.gradcam=false", capsys=capsys)
    val = json.loads((tmp_path / "val" / "report.json").read_text())
    assert rc == 0 and val["boxes"] == [str(box_path(runs["boxes"], 2))]  # data.val_seeds of the run


@pytest.mark.slow
def test_bad_input_exits_2_and_writes_nothing(runs, tmp_path, capsys):
    boxes, out = runs["boxes"], tmp_path / "out"
    no_shear = write_boxes(tmp_path / "no_shear", [3], shear=False)
    other = shutil.copytree(runs["copra"], tmp_path / "copra_4class")
    blob = torch.load(other / "model.pt", weights_only=False)
    blob["meta"]["class_edges"] = [13.0, 13.5]  # as if trained with other classes
    blob["meta"]["n_classes"] = 4
    torch.save(blob, other / "model.pt")
    cases = [
        ((runs["vipr"], boxes, "--set", "eval.window=16"), "eval.window: the model rejected"),
        ((runs["copra"], boxes, "--set", "eval.gradcam_layer=nope"), "has no module 'nope'"),
        ((runs["copra"], boxes / "box_0042.h5"), "no such file"),
        ((runs["copra"], boxes, "--set", "data.test_seeds=9"), "missing test box file"),
        ((runs["copra"], no_shear), "missing dataset /tidal/T"),
        ((runs["copra"], boxes, "--set", "eval.windw=3"), "unknown key 'windw'"),
        ((runs["copra"], boxes, "--set", "eval.overlap=1.5"), "overlap must be in"),
        ((runs["copra"], other, boxes), "same classes"),
        ((boxes,), "no training run directory"),
        ((runs["copra"],), "no test data"),
        ((runs["copra"], runs["vipr"], boxes, "--name", "a"), "--name given 1 times for 2 runs"),
    ]
    for args, msg in cases:
        rc, err = evaluate(*args, "--out", out, capsys=capsys)
        assert rc == 2 and "error: " in err and msg in err, (args, err[-2000:])
        assert not out.exists()
