"""Settings of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EvalConfig:
    """Full-box inference, metrics and report.

    ``window``: side of the sliding window in voxels (None = the training crop ``data.crop``); a
    window at least as large as the box runs the whole box once, wrapped periodically if larger.
    ``overlap``: fraction of the window shared by neighbouring windows; windows wrap periodically.
    ``margin``: voxels at each window face that get no weight (use the receptive-field radius of a
    zero-padded network to drop its edge effects); ``blend``: weights of the overlapping windows.
    ``batch_size``: windows per forward pass; ``bf16``: autocast on CUDA (ignored on CPU).
    ``split``: which seed range of the run's ``data`` section a data directory is read with.
    ``boundary_tolerance``: surface-Dice tolerance in voxels.
    ``gradcam``: write Grad-CAM maps; ``gradcam_layer``: module name ('' = automatic choice).
    ``out_dir``: report directory ('' = ``<first run>/eval``).
    """

    window: int | None = None
    overlap: float = 0.5
    margin: int = 0
    blend: Literal["gaussian", "linear", "constant"] = "gaussian"
    batch_size: int = 1
    bf16: bool = False
    split: Literal["train", "val", "test"] = "test"
    boundary_tolerance: float = 1.0
    out_dir: str = ""
    gradcam: bool = True
    gradcam_layer: str = ""

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of voxels, got {self.window}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0 voxels, got {self.margin}")
        if self.window is not None and self.window - 2 * self.margin < 1:
            raise ValueError(f"margin {self.margin} leaves no voxels of window {self.window}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 voxels, got {self.boundary_tolerance}")
