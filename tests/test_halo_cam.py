"""Per-proto-halo Grad-CAM (halotrans.eval.halo_cam): exact values on a pointwise network, and the
real copra (paper and light decoders, circular padding) and vipr at 32³."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from halotrans.eval.gradcam import default_layer, layer_outputs
from halotrans.eval.halo_cam import (
    decoder_layer,
    halo_cam,
    halo_cam_figure,
    periodic_centre,
    periodic_upsample,
    pick_halos,
    run_halo_cams,
)

N = 32
EDGES = (13.0, 13.5, 14.0)  # classes 0 (none), 1 .. 4
GROUPS = {"delta": [0], "T": [1]}


def build(name: str, decoder: str) -> nn.Module:
    from halotrans.config import load_config
    from halotrans.models.registry import build_model

    cfg = load_config(None, [f"model.name={name}", f"model.decoder={decoder}", "model.padding=circular",
                             "model.kernel_size=3", "model.feature_size=4", "model.hidden_size=16", "model.num_heads=2",
                             "model.mlp_dim=32", "model.depth=2", "model.patch_size=4", "model.skip_layers=[1,2]"])
    torch.manual_seed(0)
    return build_model(cfg.model, 2, len(EDGES) + 2, N)


@pytest.fixture(scope="module")
def copra_light() -> nn.Module:
    return build("copra", "light")


@pytest.fixture(scope="module")
def box() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, N, N, N)).astype(np.float32)


def wrapping_halo() -> np.ndarray:
    """A 4×3×3 proto-halo split across the x = 0 face (rows 30, 31, 0, 1)."""
    m = np.zeros((N, N, N), bool)
    m[[30, 31, 0, 1], 5:8, 10:13] = True
    return m


def pointwise_net() -> nn.Module:
    """A = x0 + 2 x1 (1³ conv), ReLU, logits (−A, +A): class 1's score is Σ_halo relu(x0 + 2 x1)."""
    net = nn.Sequential(nn.Conv3d(2, 1, 1), nn.ReLU(), nn.Conv3d(1, 2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1, 1))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
        net[2].bias.zero_()
    return net


# (a) the default layer is a decoder stage at N (or N/2), never the bottleneck
@pytest.mark.parametrize("name, decoder, want", [("copra", "paper", "up.3"), ("copra", "light", "full_res"),
                                                 ("vipr", "paper", "decoder.1"), ("vipr", "light", "decoder.1")])
def test_decoder_layer_is_a_full_resolution_decoder_stage(name, decoder, want, box):
    net = build(name, decoder)
    layer = decoder_layer(net, box)
    assert layer == want
    shapes = dict(layer_outputs(net, torch.as_tensor(box)[None]))
    assert len(shapes[layer]) == 5 and shapes[layer][2:] in [(N,) * 3, (N // 2,) * 3]
    assert layer != default_layer(net, torch.as_tensor(box)[None])  # not the bottleneck / last ViT block


# (b) + (c) shares and map on the real networks
@pytest.mark.parametrize("decoder", ["paper", "light"])
def test_copra_halo_cam_shares_and_map(decoder, box):
    net = build("copra", decoder)
    mask = wrapping_halo()
    hc = halo_cam(net, box, mask, 3, channels=GROUPS)
    assert hc.layer == decoder_layer(net, box)
    assert set(hc.share) == {"delta", "T"} and sum(hc.share.values()) == pytest.approx(1.0)
    assert all(0 <= v <= 1 for v in hc.share.values()) and min(hc.share.values()) > 0
    assert hc.cam.shape == (N, N, N) and hc.cam.dtype == np.float32
    assert np.isfinite(hc.cam).all() and hc.cam.min() >= 0 and hc.cam.max() == pytest.approx(1.0)
    assert np.isfinite(hc.score) and hc.cam_in_halo > 0
    # the score is the class-3 logit summed over the halo
    with torch.no_grad():
        logits = net.eval()(torch.as_tensor(box)[None])[0, 3]
    assert hc.score == pytest.approx(float(logits[torch.as_tensor(mask)].sum()), rel=1e-4, abs=1e-4)
    assert all(p.grad is None for p in net.parameters())

    zeroed = box.copy()
    zeroed[1] = 0.0  # x · ∂S/∂x vanishes on channel 1
    hz = halo_cam(net, zeroed, mask, 3, layer=hc.layer, channels=GROUPS)
    assert hz.share["T"] == 0.0 and hz.share["delta"] == pytest.approx(1.0)

    coarse = halo_cam(net, box, mask, 3, layer="up.2")  # an N/2 stage: upsampled periodically to N³
    assert coarse.cam.shape == (N, N, N) and np.isfinite(coarse.cam).all() and 0 <= coarse.cam.min()
    assert coarse.cam.max() == pytest.approx(1.0) and set(coarse.share) == {"c0", "c1"}


def test_pointwise_net_exact_cam_and_shares():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 1:4, 3:6] = True
    hc = halo_cam(pointwise_net(), x, mask, 1, layer="0", channels={"a": [0], "b": [1]})
    a = x[0] + 2 * x[1]
    on = mask & (a > 0)
    # ∂S/∂A = 1 on the halo where A > 0: a positive channel weight, so the map is relu(A) / max relu(A)
    np.testing.assert_allclose(hc.cam, np.maximum(a, 0) / a.max(), atol=1e-6)
    assert hc.score == pytest.approx(float(a[on].sum()), rel=1e-5)
    ga, gb = np.abs(x[0][on]).sum(), 2 * np.abs(x[1][on]).sum()
    assert hc.share["a"] == pytest.approx(ga / (ga + gb), rel=1e-5)
    assert hc.share["b"] == pytest.approx(gb / (ga + gb), rel=1e-5)
    cam = np.maximum(a, 0) / a.max()
    assert hc.cam_in_halo == pytest.approx(cam[mask].mean() / cam[~mask].mean(), rel=1e-5)


def test_periodic_upsample_wraps_around_the_faces():
    coarse = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    up = periodic_upsample(coarse, (8, 8, 8))
    shifted = periodic_upsample(torch.roll(coarse, 1, dims=2), (8, 8, 8))
    torch.testing.assert_close(shifted, torch.roll(up, 2, dims=2))  # translation equivariant, as on a torus
    const = periodic_upsample(torch.full((1, 1, 4, 4, 4), 3.0), (8, 8, 8))
    torch.testing.assert_close(const, torch.full((1, 1, 8, 8, 8), 3.0))


# (d) the centre of a halo split across a periodic face
def test_periodic_centre_across_the_face():
    c = periodic_centre(wrapping_halo())
    assert c[0] == pytest.approx(31.5) and c[1] == pytest.approx(6.0) and c[2] == pytest.approx(11.0)
    m = np.zeros((N, N, N), bool)
    m[3:6, 0, [31, 0, 1]] = True  # across the z face
    assert periodic_centre(m) == pytest.approx([4.0, 0.0, 0.0], abs=1e-9)
    with pytest.raises(ValueError, match="empty"):
        periodic_centre(np.zeros((4, 4, 4), bool))


def halo_grid() -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """16 cubic 2³ halos (ids 100 ..) on a 32³ grid, log10 masses 12.65 .. 14.15, halo 105 across the z face."""
    halo_id = -np.ones((N, N, N), np.int64)
    halo_mass = np.zeros((N, N, N), np.float32)
    masses = {}
    for h in range(16):
        i, j = divmod(h, 4)
        sl = (slice(8 * i + 2, 8 * i + 4), slice(8 * j + 2, 8 * j + 4), slice(20, 22))
        if h == 5:
            sl = (slice(8 * i + 2, 8 * i + 4), slice(8 * j + 2, 8 * j + 4), [31, 0])
        m = 12.65 + 0.1 * h
        halo_id[sl], halo_mass[sl], masses[h + 100] = h + 100, m, m
    return halo_id, halo_mass, masses


# (e) halo picking
def test_pick_halos_by_class_and_reproducible():
    halo_id, halo_mass, masses = halo_grid()
    picks = pick_halos(halo_id, halo_mass, EDGES, per_class=3, seed=7)
    assert picks == pick_halos(halo_id, halo_mass, EDGES, per_class=3, seed=7)
    by_class: dict[int, list[int]] = {}
    for cls, hid in picks:
        by_class.setdefault(cls, []).append(hid)
        m = halo_mass[halo_id == hid]
        assert m.size == 8 and np.all(m == np.float32(masses[hid]))
        want = 1 + int(np.searchsorted(EDGES, np.float32(masses[hid]), side="right"))
        assert cls == want
    # pools: class 1 (m < 13): 4 halos, 2 (13-13.5): 5, 3 (13.5-14): 5, 4 (>= 14): 2
    assert {c: len(v) for c, v in by_class.items()} == {1: 3, 2: 3, 3: 3, 4: 2}
    assert all(len(set(v)) == len(v) for v in by_class.values())
    assert any(pick_halos(halo_id, halo_mass, EDGES, seed=s) != picks for s in range(8))
    assert pick_halos(halo_id, halo_mass, EDGES, per_class=0) == []
    assert pick_halos(-np.ones((4, 4, 4), int), np.zeros((4, 4, 4)), EDGES) == []


def test_pick_halos_refuses_linear_or_inconsistent_masses():
    halo_id, halo_mass, _ = halo_grid()
    with pytest.raises(ValueError, match="log10"):
        pick_halos(halo_id, np.where(halo_mass > 0, 10.0 ** halo_mass.astype(np.float64), 0), EDGES)
    bad = halo_mass.copy()
    bad[tuple(np.argwhere(halo_id == 103)[0])] = 13.9
    with pytest.raises(ValueError, match="halo 103"):
        pick_halos(halo_id, bad, EDGES)
    with pytest.raises(ValueError, match="differs"):
        pick_halos(halo_id[:-1], halo_mass, EDGES)


# (f) the convenience run and the figure
def test_run_halo_cams_and_figure(copra_light, box, tmp_path):
    halo_id, halo_mass, masses = halo_grid()
    records, items = run_halo_cams(copra_light, box, halo_id, halo_mass, EDGES, GROUPS, per_class=2, seed=3)
    assert len(records) == len(items) == 8
    json.dumps(records)  # JSON-able
    assert [(r["class"], r["halo_id"]) for r in records] == pick_halos(halo_id, halo_mass, EDGES, 2, seed=3)
    for rec, it in zip(records, items):
        assert rec["layer"] == "full_res" and rec["n_voxels"] == 8 and rec["halo_id"] == it.halo_id
        assert rec["class"] == it.cls and rec["log10_mass"] == pytest.approx(masses[it.halo_id], abs=1e-4)
        assert sum(rec["share"].values()) == pytest.approx(1.0) and rec["cam_in_halo"] >= 0
        assert np.array_equal(it.mask, halo_id == it.halo_id)
    for rec, it in list(zip(records, items))[::7]:  # one forward for all halos = one forward per halo
        single = halo_cam(copra_light, box, it.mask, it.cls, channels=GROUPS)
        np.testing.assert_allclose(it.cam.cam, single.cam, atol=1e-5)
        assert rec["score"] == pytest.approx(single.score, rel=1e-4, abs=1e-4)
        assert rec["share"] == pytest.approx(single.share, rel=1e-4)
    names = ["none", "<13", "13-13.5", "13.5-14", ">=14"]
    out = halo_cam_figure(tmp_path / "figs" / "halo_cams.png", box[0], items, names)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["halo_cams.png"]  # no temporary left
    with pytest.raises(ValueError, match="no halos"):
        halo_cam_figure(tmp_path / "empty.png", box[0], [], names)


# (g) bad inputs
def test_bad_inputs_raise_value_errors(box, copra_light):
    net = pointwise_net()
    x = box[:, :8, :8, :8]
    mask = np.zeros((8, 8, 8), bool)
    mask[1:3, 1:3, 1:3] = True
    with pytest.raises(ValueError, match="halo_mask shape"):
        halo_cam(net, x, mask[:-1], 1, layer="0")
    with pytest.raises(ValueError, match=r"x must be \(C, N, N, N\)"):
        halo_cam(net, x[None], mask, 1, layer="0")
    with pytest.raises(ValueError, match="empty"):
        halo_cam(net, x, np.zeros_like(mask), 1, layer="0")
    with pytest.raises(ValueError, match="bool"):
        halo_cam(net, x, mask.astype(int), 1, layer="0")
    for cls in (2, -1, 1.0):
        with pytest.raises(ValueError, match="target_class"):
            halo_cam(net, x, mask, cls, layer="0")
    with pytest.raises(ValueError, match="channels"):
        halo_cam(net, x, mask, 1, layer="0", channels={"delta": [0]})
    with pytest.raises(ValueError, match="no module 'nope'"):
        halo_cam(net, x, mask, 1, layer="nope")
    nan = x.copy()
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"halo centred at voxel \(2, 2, 2\): non-finite"):
        halo_cam(net, nan, mask, 1, layer="0")
    with pytest.raises(ValueError, match="target_class"):  # class 5 of a 5-class model
        halo_cam(copra_light, box, wrapping_halo(), 5)
