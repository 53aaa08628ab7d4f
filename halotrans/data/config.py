"""Settings of the data stage: which boxes, crops, inputs and mass classes a run sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from halotrans.fields.channels import is_input_name
from halotrans.io import parse_seeds


def split_seeds(text: str) -> list[int]:
    """Seeds of one split (``"0-15"``, ``"0,3,7-9"``); an empty string is an empty split."""
    return parse_seeds(text) if str(text).strip() else []


@dataclass
class DataConfig:
    """Box data set for proto-halo segmentation.

    ``root`` holds ``box_<seed>.h5`` files; splits are whole boxes given as seed ranges (they may
    not share a box; ``val_seeds``/``test_seeds`` may be empty). ``class_edges`` are the interior
    log10(M / (M☉/h)) bin edges: class 0 is "no halo", class k (1..len(edges)+1) is a halo in bin k,
    so 3 edges give 5 classes and 5 edges give 7. ``crop`` is the side (voxels) of the random
    periodic crops; ``augment`` applies the 48 symmetries of the cube. ``class_weights`` weighs
    the cross-entropy by the inverse (or inverse square root) of the training-set class
    frequencies. Validation uses at most ``val_max_crops`` crops tiling the validation boxes.
    ``inputs`` are the channels, in order: ``delta``, ``T`` and the physics channels ``delta_R<r>``,
    ``collapse_R<r>``, ``collapse_max`` that the shear stage adds with ``shear.feature_radii``
    (:mod:`halotrans.fields.channels`); each is named explicitly.
    """

    root: str = "data/boxes"
    train_seeds: str = "0-15"
    val_seeds: str = "16-17"
    test_seeds: str = "18-19"
    inputs: tuple[str, ...] = ("delta", "T")
    class_edges: tuple[float, ...] = (13.0, 13.5, 14.0)
    crop: int = 64
    augment: bool = True
    batch_size: int = 2
    class_weights: Literal["none", "inverse", "inverse_sqrt"] = "inverse_sqrt"
    val_max_crops: int = 64

    @property
    def n_classes(self) -> int:
        return len(self.class_edges) + 2

    def __post_init__(self) -> None:
        bad = [c for c in self.inputs if not is_input_name(c)]
        if bad or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs must be distinct channels among delta, T, delta_R<r>, collapse_R<r> and "
                             f"collapse_max (r: a radius in Mpc/h of shear.feature_radii), got {list(self.inputs)}")
        if list(self.class_edges) != sorted(set(self.class_edges)):
            raise ValueError(f"class_edges must strictly increase, got {list(self.class_edges)}")
        if self.crop < 1 or self.batch_size < 1 or self.val_max_crops < 1:
            raise ValueError(f"crop, batch_size and val_max_crops must be >= 1, got "
                             f"{self.crop}, {self.batch_size}, {self.val_max_crops}")
        splits = {name: set(split_seeds(getattr(self, f"{name}_seeds"))) for name in ("train", "val", "test")}
        if not splits["train"]:
            raise ValueError("train_seeds is empty")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(splits[a] & splits[b])
            if shared:
                raise ValueError(f"{a}_seeds and {b}_seeds share box(es) {shared}: splits must be whole, disjoint boxes")
