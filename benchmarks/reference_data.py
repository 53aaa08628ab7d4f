"""Data stages of the segmentation reference (issue 18): test boxes from PINOCCHIO's initial
conditions, their converged re-simulation (the label-noise ceiling) and the shuffled-input control.

Every stage skips finished boxes, so a killed run is resumed by running it again.

* :func:`stage_boxes`: training and validation boxes simulated, the test boxes, shear and physics
  channels of every box (the reference and the feature study share it);
* :func:`stage_test_boxes`: for each test seed, PINOCCHIO (``write_run_files`` + ``run_pinocchio``
  in ``data/reference/pinocchio/run_<seed>``), then ``import pinocchio --nbody`` into the data root:
  PINOCCHIO's linear δ (N,N,N) at z_init, labels from our PM + FoF on that δ, PINOCCHIO's own labels
  kept as ``/pinocchio/halo_mass`` (its prediction). Without a PINOCCHIO binary the test boxes are
  simulated from our own ICs with the same seeds, and the PINOCCHIO row is "not run".
* :func:`stage_ceiling`: the same linear δ re-simulated at a converged setting (:data:`CEILING_SET`:
  3× the force mesh, 2× the PM steps) into ``data/reference/ceiling``: the default labels scored
  against these are the best any network can do against our labels.
* :func:`stage_shuffled`: copies of every box whose input fields (δ, T, /features/*) are permuted
  over voxels with one permutation per box (a voxel's channels stay together; labels unchanged):
  the no-skill control's data.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import harness
import numpy as np

from halotrans.config import Config
from halotrans.data.config import split_seeds
from halotrans.io import atomic_path
from halotrans.sims.boxio import box_path, is_complete, read_attrs

#: the converged setting of the label-noise ceiling: 3× the force mesh (384³ for 64³ particles), 80 steps
CEILING_SET = ("sim.mesh_factor=6", "sim.n_steps=80")
SHUFFLED_ATTR = "shuffled_inputs_seed"


def data_dir(cfg: Config, name: str) -> Path:
    """``<parent of data.root>/<name>`` (pinocchio runs, ceiling boxes, shuffled copies)."""
    return Path(cfg.data.root).parent / name


def test_seeds(cfg: Config) -> list[int]:
    return split_seeds(cfg.data.test_seeds)


def pinocchio_run_dir(cfg: Config, seed: int) -> Path:
    return data_dir(cfg, "pinocchio") / f"run_{seed:04d}"


def _pinocchio_done(run_dir: Path) -> bool:
    return (run_dir / "pinocchio.halotrans.t_snapshot.out").is_file() and any(run_dir.glob("*.density0.out")) \
        and any(run_dir.glob("pinocchio.*.catalog.out"))


def stage_test_boxes(cfg: Config, config_file: Path, exe: str | None) -> str:
    """Make the missing test boxes; returns their source (``"pinocchio"`` or ``"halotrans"``)."""
    from halotrans.sims.readers.pinocchio_run import run_pinocchio, write_run_files

    seeds = test_seeds(cfg)
    done = [s for s in seeds if is_complete(box_path(cfg.data.root, s))]
    sources = {read_attrs(box_path(cfg.data.root, s)).get("baseline") == "pinocchio" for s in done}
    if len(sources) > 1:
        raise SystemExit(f"reference: the test boxes in {cfg.data.root} mix PINOCCHIO-IC and our own ICs; "
                         "delete them and run again")
    if exe is None and not done:
        print(f"test boxes: no PINOCCHIO binary (build it: {harness.PINOCCHIO_BUILD}); simulating seeds "
              f"{cfg.data.test_seeds} from our own ICs, the PINOCCHIO row is not run", flush=True)
    pinocchio = (exe is not None) if not done else sources == {True}
    if pinocchio and exe is None and len(done) < len(seeds):
        raise SystemExit(f"reference: the test boxes in {cfg.data.root} are PINOCCHIO-IC boxes but no PINOCCHIO binary "
                         f"is found to make the missing ones (build it: {harness.PINOCCHIO_BUILD}; then PINOCCHIO=...)")
    for seed in seeds:
        out = box_path(cfg.data.root, seed)
        if is_complete(out):
            continue
        if not pinocchio:
            harness.run_halotrans(["simulate", "--config", str(config_file), "--seeds", str(seed)])
            continue
        run_dir = pinocchio_run_dir(cfg, seed)
        if not _pinocchio_done(run_dir):
            write_run_files(cfg.sim, seed, run_dir)
            seconds = run_pinocchio(exe, run_dir, ranks=2, timeout=1800)
            print(f"pinocchio seed {seed}: {seconds}", flush=True)
        harness.run_halotrans(["import", "pinocchio", str(run_dir), "--nbody", "--no-progress", "--out", str(out),
                               "--config", str(config_file)])
    return "pinocchio" if pinocchio else "halotrans"


def stage_boxes(cfg: Config, config_file: Path) -> str:
    """Simulate the missing training and validation boxes, make the missing test boxes
    (:func:`stage_test_boxes`), then add the tidal shear and the physics channels where missing (all
    skip done work). Returns the test boxes' source (``"pinocchio"`` or ``"halotrans"``)."""
    fit = split_seeds(cfg.data.train_seeds) + split_seeds(cfg.data.val_seeds)
    harness.run_halotrans(["simulate", "--config", str(config_file), "--seeds", ",".join(map(str, fit))])
    source = stage_test_boxes(cfg, config_file, harness.find_pinocchio())
    harness.run_halotrans(["shear", "--config", str(config_file),
                           *[str(box_path(cfg.data.root, s)) for s in harness.all_seeds(cfg)]])
    return source


def ceiling_path(cfg: Config, seed: int) -> Path:
    return box_path(data_dir(cfg, "ceiling"), seed)


def stage_ceiling(cfg: Config, config_file: Path, source: str) -> list[Path]:
    """Re-simulate every test box's linear δ at :data:`CEILING_SET`; returns the converged boxes."""
    overrides = [a for s in CEILING_SET for a in ("--set", s)]
    out = []
    for seed in test_seeds(cfg):
        path = ceiling_path(cfg, seed)
        out.append(path)
        if is_complete(path):
            continue
        if source == "pinocchio":
            harness.run_halotrans(["import", "pinocchio", str(pinocchio_run_dir(cfg, seed)), "--nbody", "--no-progress",
                                   "--out", str(path), "--config", str(config_file), *overrides])
        else:
            harness.run_halotrans(["simulate", "--config", str(config_file), "--seeds", str(seed),
                                   "--set", f"sim.out_dir={path.parent}", *overrides])
    return out


def _input_datasets(f: h5py.File) -> list[str]:
    names = ["delta"] + (["tidal/T"] if "tidal/T" in f else [])
    if "features" in f:
        names += [f"features/{k}" for k in f["features"]]
    return names


def shuffle_box(src: Path, dst: Path, seed: int) -> None:
    """Copy ``src`` to ``dst`` with every input field permuted over voxels by one permutation (seeded)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            names = _input_datasets(f)
            n = f["delta"].size
            perm = np.random.default_rng(seed).permutation(n)
            for name in names:
                a = f[name][...]
                f[name][...] = a.reshape(-1)[perm].reshape(a.shape)
            f.attrs[SHUFFLED_ATTR] = seed


def stage_shuffled(cfg: Config, seeds: Sequence[int]) -> Path:
    """Shuffled-input copies of ``seeds`` in ``<data>/shuffled`` (skips finished ones); returns the root."""
    root = data_dir(cfg, "shuffled")
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds if not is_complete(box_path(root, s), expect={SHUFFLED_ATTR: s})]
    for s in todo:
        shuffle_box(box_path(cfg.data.root, s), box_path(root, s), s)
    if todo:
        print(f"shuffled control: {len(todo)} box(es) -> {root}", flush=True)
    return root
