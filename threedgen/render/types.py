"""The one output type every renderer returns, and the typed info two of them attach to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SplatInfo:
    """What densification reads from a Gaussian render (``render_gaussians``, every backend:
    gsplat's CUDA rasterizer, the numba CPU one and the dense torch reference), for C cameras and
    N Gaussians.

    means2d [C, N, 2]: projected centres in pixels; its gradient is retained (``.grad`` after
        backward is the screen-space gradient that decides growth).
    radii [C, N, 2] int32: screen-space half-extents in pixels, 0 where the Gaussian is culled.
    width, height: the image size in pixels; n_cameras: C."""

    means2d: Tensor
    radii: Tensor
    width: int
    height: int
    n_cameras: int

    def strategy_info(self) -> dict:
        """gsplat's ``DefaultStrategy`` takes its renderer's meta dict: this is the one place it is
        rebuilt, with ``gaussian_ids`` None (our renders are never packed)."""
        return {"means2d": self.means2d, "radii": self.radii, "width": self.width,
                "height": self.height, "n_cameras": self.n_cameras, "gaussian_ids": None}


@dataclass(frozen=True)
class VolumeInfo:
    """The ray samples of a volume render (``render_volume``), what the volume losses read.

    The CPU path keeps R rows of S samples (R: the rays that hit the box), the CUDA estimator path
    N packed samples:
    weights [R, S] / [N]: compositing weights; t [R, S] / [N]: sample distances along the unit
        rays; points [R, S, 3] / [N, 3]: sample positions;
    dirs: unit ray directions, [R, 3] (one per row) / [N, 3] (per sample): both broadcast
        against ``normals`` in ``orientation_loss``;
    normals [R, S, 3] / [N, 3]: unit normals -grad(density)/|grad(density)| at the samples, only
        when the render asked for normals (else None)."""

    weights: Tensor
    t: Tensor
    points: Tensor
    dirs: Tensor
    normals: Tensor | None = None


@dataclass(frozen=True)
class RenderOutput:
    """rgb [B, 3, H, W] composited over the background; alpha [B, 1, H, W] accumulated opacity;
    depth [B, 1, H, W] expected camera-space depth of the visible surface (0 where empty);
    normal [B, 3, H, W] world-space normals where the renderer has them, else None.
    info: what optimisers and regularisers read of the render: ``SplatInfo`` from the Gaussian
    renderer (densification), ``VolumeInfo`` from the volume renderer (orientation loss); None from
    the mesh renderer and for a dynamic render that spans several times."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor | None = None
    info: SplatInfo | VolumeInfo | None = None

    def cpu(self) -> RenderOutput:
        """The images on the CPU, detached (for metrics and files); info is left behind."""
        move = lambda t: None if t is None else t.detach().to(torch.device("cpu"))  # noqa: E731
        return RenderOutput(move(self.rgb), move(self.alpha), move(self.depth), move(self.normal))
