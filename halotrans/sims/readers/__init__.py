"""Readers for simulations made elsewhere, turned into our box files (``python -m halotrans import``).

* :mod:`.format2` — Gadget binary format-2 block files (PINOCCHIO's mixed 4/8-byte record markers).
* :mod:`.pinocchio` — PINOCCHIO v5 timeless snapshot (``GRUP``, ``ZEL``), density file, catalogues.
* :mod:`.pinocchio_run` — parameter file for a sim config, running PINOCCHIO.
* :mod:`.gadget_hdf5` — Gadget-4 / AREPO / SWIFT HDF5 snapshots and FoF tables.
* :mod:`.lagrangian` — particle IDs → Lagrangian grids, δ = −∇·ψ, CIC, chunked.
* :mod:`.importer` — the whole import of one run into one box file (``--nbody``: our PM from its δ
  via :func:`halotrans.sims.box.simulate_from_delta`); :mod:`.cli` its command line.
"""
