"""``python -m halotrans import``: bring external simulations into the box format.

  pinocchio RUN_DIR --out box.h5 [--nbody]   PINOCCHIO run: δ from its ICs, labels from GRUP + catalogue;
                                             --nbody also runs our PM from that δ (labels = PM FoF,
                                             PINOCCHIO's kept as /pinocchio/halo_mass: the baseline)
  pinocchio-params --out RUN_DIR [--seed S]  write parameter_file + outputs for PINOCCHIO from a sim config
  gadget --snapshot S --ic IC --groups G --out box.h5
                                             Gadget-4 / AREPO / SWIFT HDF5 run (multi-file series allowed);
                                             SWIFT: --group-ids FOFGroupIDs instead of --groups

--min-particles and --z-init default to the config's sim.fof_min_members and sim.z_init, so imported
boxes match simulated ones. An existing complete --out file is kept (rerun = resume) unless --overwrite.
Bad files stop with one line naming the file and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os

from halotrans.cli import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="{pinocchio,pinocchio-params,gadget}")

    p = sub.add_parser("pinocchio", help="a PINOCCHIO run directory -> box file",
                       description="Import a PINOCCHIO v5 run (timeless snapshot, catalogue, density file).")
    p.add_argument("run_dir", help="directory with pinocchio.<RunFlag>.t_snapshot.out and the catalogues")
    p.add_argument("--out", required=True, help="box file to write (HDF5)")
    p.add_argument("--run-flag", help="PINOCCHIO RunFlag (default: the only one in RUN_DIR)")
    p.add_argument("--catalog", help="halo catalogue (default: the one at the snapshot's redshift)")
    p.add_argument("--params", help="PINOCCHIO parameter file (default: RUN_DIR/parameter_file if present)")
    p.add_argument("--delta-source", choices=("auto", "density", "zeldovich"), default="auto",
                   help="linear δ from the run-mode-2 density file or −∇·ψ of the ZEL block "
                        "(auto: density if present)")
    p.add_argument("--nbody", action="store_true",
                   help="also run our particle-mesh simulation + FoF from the imported δ (sim section of --config)")
    _common(p)

    q = sub.add_parser("pinocchio-params", help="write a PINOCCHIO parameter file for a sim config",
                       description="Write RUN_DIR/parameter_file and RUN_DIR/outputs from "
                                   "configs/pinocchio/parameter_file.template and the sim section of --config.")
    q.add_argument("--out", required=True, help="run directory to create")
    q.add_argument("--seed", type=int, default=0, help="seed (PINOCCHIO RandomSeed = seed + 1)")
    q.add_argument("--run-flag", default="halotrans", help="PINOCCHIO RunFlag")
    add_config_arguments(q)

    g = sub.add_parser("gadget", help="a Gadget-4 / AREPO / SWIFT HDF5 run -> box file",
                       description="Import an HDF5 N-body run: final snapshot, FoF groups and the IC snapshot.")
    g.add_argument("--snapshot", required=True, help="final snapshot: snap_XXX.hdf5, snap_XXX.0.hdf5 or its directory")
    g.add_argument("--ic", required=True, help="initial conditions / IC snapshot (HDF5, same naming rules)")
    halos = g.add_mutually_exclusive_group(required=True)
    halos.add_argument("--groups", help="fof_subhalo_tab_XXX[.0].hdf5 (snapshot stored in group order)")
    halos.add_argument("--group-ids", metavar="DATASET",
                       help="per-particle group ids under PartType1, e.g. FOFGroupIDs (SWIFT)")
    g.add_argument("--no-group-value", type=int, default=2147483647,
                   help="group id of particles in no group with --group-ids (SWIFT default 2147483647)")
    g.add_argument("--out", required=True, help="box file to write (HDF5)")
    g.add_argument("--id-offset", type=int, default=1,
                   help="ParticleID of the particle at Lagrangian (0,0,0); IDs = offset + (i·N + j)·N + k")
    g.add_argument("--length-unit", choices=("auto", "kpc/h", "Mpc/h", "kpc", "Mpc"), default="auto",
                   help="unit of Coordinates/BoxSize (auto: from unit attributes)")
    g.add_argument("--delta-method", choices=("displacement", "cic"), default="displacement",
                   help="δ = −∇·ψ of the IC displacements, or the CIC density of the IC positions")
    _common(g)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-particles", type=int, help="smallest halo kept (default: sim.fof_min_members)")
    p.add_argument("--z-init", type=_redshift, metavar="Z|source",
                   help="redshift δ is scaled to with linear growth (default: sim.z_init); 'source' keeps "
                        "the source's (z=0 for PINOCCHIO's density, the IC redshift for Gadget)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_config_arguments(p)


def _redshift(text: str) -> float | str:
    if text == "source":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a redshift or 'source', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from halotrans.sims.boxio import is_complete
    from halotrans.sims.readers import importer, pinocchio_run

    cfg = config_from_args(args)
    if args.source == "pinocchio-params":
        path = pinocchio_run.write_run_files(cfg.sim, args.seed, args.out, args.run_flag)
        mpiexec = "mpiexec --allow-run-as-root" if os.geteuid() == 0 else "mpiexec"  # Open MPI refuses root
        print(f"wrote {path}; run: cd {args.out} && {mpiexec} -n 2 pinocchio.x parameter_file "
              f"&& {mpiexec} -n 2 pinocchio.x parameter_file 2")
        return 0
    if is_complete(args.out) and not args.overwrite:
        print(f"{args.out} exists, skipping (--overwrite to redo)")
        return 0
    min_particles = cfg.sim.fof_min_members if args.min_particles is None else args.min_particles
    z_init = cfg.sim.z_init if args.z_init is None else None if args.z_init == "source" else args.z_init
    progress = not args.no_progress
    if args.source == "pinocchio":
        path = importer.import_pinocchio(
            args.run_dir, args.out, run_flag=args.run_flag, catalog=args.catalog, params=args.params,
            delta_source=args.delta_source, z_init=z_init, min_particles=min_particles,
            nbody=cfg.sim if args.nbody else None, progress=progress)
    else:
        path = importer.import_gadget(
            args.snapshot, args.ic, args.out, groups=args.groups, group_ids=args.group_ids,
            no_group=args.no_group_value, id_offset=args.id_offset, length_unit=args.length_unit,
            delta_method=args.delta_method, z_init=z_init, min_particles=min_particles, progress=progress)
    print(f"wrote {path}")
    return 0
