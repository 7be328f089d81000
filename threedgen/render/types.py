"""The one output type every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class RenderOutput:
    """rgb [B, 3, H, W] composited over the background; alpha [B, 1, H, W] accumulated opacity;
    depth [B, 1, H, W] expected camera-space depth of the visible surface (0 where empty);
    normal [B, 3, H, W] world-space normals where the renderer has them, else None.
    info: renderer-specific values that optimisers need (for Gaussians, gsplat's strategy info:
    "means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"); empty for others."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor | None = None
    info: dict = field(default_factory=dict)

    def cpu(self) -> RenderOutput:
        """The images on the CPU, detached (for metrics and files); info is left behind."""
        move = lambda t: None if t is None else t.detach().to(torch.device("cpu"))  # noqa: E731
        return RenderOutput(move(self.rgb), move(self.alpha), move(self.depth), move(self.normal))
