"""Names of the network input channels and the box-file datasets that hold them.

Fixed channels: ``delta`` = ``/delta`` (linear δ at z_init) and ``T`` = ``/tidal/T`` (scalar shear).
Physics channels, written by the shear stage when ``shear.feature_radii`` is set
(:mod:`halotrans.fields.features`), one pair per smoothing radius R [Mpc/h]:

* ``delta_R<r>`` = ``/features/delta_R<r>``: δ at z_init smoothed on R (the excursion-set variable);
* ``collapse_R<r>`` = ``/features/collapse_R<r>``: inverse ellipsoidal collapse time F = 1/D(z_c) of
  the field smoothed on R (:mod:`halotrans.fields.collapse`; 0 = never collapses);
* ``collapse_max`` = ``/features/collapse_max``: max over the box's radii of F (PINOCCHIO's Fmax).

``<r>`` is the radius written with ``format(r, "g")``: 2.0 → ``delta_R2``, 1.5 → ``delta_R1.5``.
Every channel is named explicitly in ``data.inputs`` (a network's channel count is fixed by the
config, not by what a box file happens to hold), e.g. ``[delta, T, delta_R4, collapse_R4]``.

    INPUT_DATASETS["collapse_R4"]   # "features/collapse_R4"
    is_input_name("delta_R2")        # True
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

#: HDF5 group of the physics channels
GROUP = "features"
#: the channels every box can have, and their datasets
FIXED = {"delta": "delta", "T": "tidal/T"}
#: names of the physics channels
FEATURE_NAME = re.compile(r"(?:delta|collapse)_R\d+(?:\.\d+)?|collapse_max")


def radius_tag(radius: float) -> str:
    """The radius [Mpc/h] as written in channel names: ``format(r, "g")`` (2.0 → "2", 1.5 → "1.5")."""
    return format(float(radius), "g")


def feature_names(radii: Sequence[float]) -> list[str]:
    """Channels the shear stage writes for ``radii``: delta_R<r>, collapse_R<r> per radius, then collapse_max."""
    names = [f"{kind}_R{radius_tag(r)}" for r in radii for kind in ("delta", "collapse")]
    return names + ["collapse_max"] if radii else []


def is_input_name(name: str) -> bool:
    """True for ``delta``, ``T`` and the physics channel names (whatever their radius)."""
    return name in FIXED or FEATURE_NAME.fullmatch(name) is not None


def compute_hint(name: str, directory: str) -> str:
    """How to make the dataset of channel ``name`` for the boxes in ``directory`` (for error messages)."""
    if name == "T":
        return f"compute it with `python -m halotrans shear {directory}`"
    if FEATURE_NAME.fullmatch(name):
        radius = name.rpartition("_R")[2] if "_R" in name else "2,4,8"
        return (f"compute it with `python -m halotrans shear {directory} --set shear.feature_radii=[{radius}]` "
                "(collapse_max takes the max over the radii given)")
    return ""


class InputDatasets(Mapping):
    """Channel name → dataset path, for the fixed channels and every valid physics channel name.

    ``in`` and ``[]`` accept any name :func:`is_input_name` accepts; iteration gives the fixed
    channels only (physics channels depend on the box file: see :meth:`present_in`).
    """

    def __getitem__(self, name: str) -> str:
        if name in FIXED:
            return FIXED[name]
        if isinstance(name, str) and FEATURE_NAME.fullmatch(name):
            return f"{GROUP}/{name}"
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and is_input_name(name)

    def __iter__(self) -> Iterator[str]:
        return iter(FIXED)

    def __len__(self) -> int:
        return len(FIXED)

    def __repr__(self) -> str:
        return f"{list(FIXED)} + delta_R<r>, collapse_R<r>, collapse_max"

    def present_in(self, f) -> dict[str, str]:
        """Channels an open h5py file holds: the fixed ones present, and every dataset of ``/features``."""
        out = {name: ds for name, ds in FIXED.items() if ds in f}
        group = f.get(GROUP)
        if group is not None:
            out.update({name: f"{GROUP}/{name}" for name in sorted(group) if FEATURE_NAME.fullmatch(name)})
        return out


INPUT_DATASETS = InputDatasets()
