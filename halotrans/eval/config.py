"""Settings of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Full-box inference and report.

    ``window``: side of the sliding window in voxels (None = the training crop);
    ``overlap``: fraction of the window shared by neighbours; windows wrap periodically.
    """

    window: int | None = None
    overlap: float = 0.5
    out_dir: str = ""
    gradcam: bool = True
