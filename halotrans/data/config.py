"""Settings of the data stage: which boxes, crops, inputs and mass classes a run sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    """Box data set for proto-halo segmentation.

    ``root`` holds ``box_<seed>.h5`` files; splits are whole boxes given as seed ranges.
    ``class_edges`` are the interior log10(M / (M☉/h)) bin edges: class 0 is "no halo", class k
    (1..len(edges)+1) is a halo in bin k, so 3 edges give 5 classes and 5 edges give 7.
    ``crop`` is the side (voxels) of the random periodic crops; ``augment`` applies the 48
    symmetries of the cube.
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

    @property
    def n_classes(self) -> int:
        return len(self.class_edges) + 2

    def __post_init__(self) -> None:
        bad = [c for c in self.inputs if c not in ("delta", "T")]
        if bad or not self.inputs:
            raise ValueError(f"inputs must be a non-empty subset of ['delta', 'T'], got {list(self.inputs)}")
        if list(self.class_edges) != sorted(self.class_edges):
            raise ValueError(f"class_edges must increase, got {list(self.class_edges)}")
