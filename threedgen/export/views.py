"""Images of a representation: turntable videos and multi-view sets with ``transforms.json``.

Shading modes (``shade``): "rgb" the render itself; "normal" world-space normals as
(n + 1) / 2, from the representation (``render_with_normals``: a mesh's triangles, the density
gradient of a NeRF or a triplane at each pixel's surface point; Gaussians difference their
depth across one pixel of the fit's size, as no gradient of theirs does better), else from the
rendered depth (finite differences of the back-projected surface, one pixel apart); "depth"
the camera-space depth, near bright and far dark over the object, composited over the
background with the render's alpha.

A multi-view set is the nerfstudio / instant-ngp layout: ``images/NNN.png`` RGBA (straight,
not premultiplied, colour; the background colour where empty), ``depth/NNN.png`` 16-bit
camera-space depth in millimetres (0 where empty; ``depth_unit_scale_factor`` 0.001),
``normals/NNN.png`` RGBA world normals as (n + 1) / 2, and ``transforms.json`` with the shared
pinhole intrinsics (``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``, ``camera_angle_x``) and
each frame's camera-to-world ``transform_matrix`` in the OpenGL convention those tools use
(x right, y up, looking down -z), world z up.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor

from threedgen.cameras import Cameras, make_cameras
from threedgen.render.types import RenderOutput
from threedgen.files import atomic_target, atomic_write

Shading = Literal["rgb", "normal", "depth"]


def to_uint8(images) -> np.ndarray:
    """Values in [0, 1] (tensor or array, any layout) -> uint8 array of the same layout."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().float().numpy()
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """frames [N, H, W, 3] uint8 -> .mp4 (imageio's bundled ffmpeg) or .gif, written atomically.

    Frames are padded to even sizes with white, as H.264 with yuv420p needs."""
    path = Path(path)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    opts = dict(duration=1000 / fps, loop=0) if path.suffix == ".gif" else dict(fps=fps, macro_block_size=1)
    with atomic_target(path, suffix=path.suffix) as tmp:
        imageio.mimsave(tmp, list(frames), **opts)


def write_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W, 3 | 4] or uint16 [H, W] -> PNG, atomically."""
    buf = io.BytesIO()
    imageio.imwrite(buf, image, format="png")
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------- shading
def world_normals(out: RenderOutput, cameras: Cameras) -> Tensor:
    """[B, 3, H, W]: the render's normals (a representation's ``render_with_normals``), or
    normals from its depth (``Cameras.normals_at``)."""
    return out.normal if out.normal is not None else cameras.normals_at(out.depth)


def shade(out: RenderOutput, cameras: Cameras, mode: Shading, background: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1]: the render shown as ``mode`` (module doc) over background [3]."""
    if mode == "rgb":
        return out.rgb
    alpha, bg = out.alpha, background.view(1, 3, 1, 1).to(out.alpha)
    if mode == "normal":
        colour = (world_normals(out, cameras) + 1) / 2
    else:
        solid = alpha > 0.5
        d = out.depth
        near = torch.where(solid, d, torch.full_like(d, math.inf)).amin((1, 2, 3), keepdim=True)
        far = torch.where(solid, d, torch.full_like(d, -math.inf)).amax((1, 2, 3), keepdim=True)
        colour = (1 - 0.8 * (d - near) / (far - near).clamp_min(1e-6)).clamp(0, 1).expand(-1, 3, -1, -1)
    return alpha * colour + (1 - alpha) * bg


@torch.no_grad()
def render_batches(rep, cameras: Cameras, background: Tensor, batch: int = 8,
                   normals: bool = False) -> list[tuple[RenderOutput, Cameras]]:
    """The representation rendered into ``cameras`` a few views at a time (bounded memory), on
    the CPU whatever the representation's device; ``normals``: with the representation's own
    normals (``render_with_normals``)."""
    render = rep.render_with_normals if normals else rep.render
    return [(render(cameras[i:i + batch], background).cpu(), cameras[i:i + batch])
            for i in range(0, len(cameras), batch)]


def turntable(rep, cameras: Cameras, mode: Shading, background: Tensor) -> np.ndarray:
    """[N, H, W, 3] uint8 frames, one per camera."""
    return np.concatenate([to_uint8(shade(out, cams, mode, background).permute(0, 2, 3, 1))
                           for out, cams in render_batches(rep, cameras, background, normals=mode == "normal")])


# ---------------------------------------------------------------------- multi-view set
def view_cameras(elevations: tuple[float, ...], azimuths: int, distance: float, fov_y: float,
                 size: int) -> Cameras:
    """``azimuths`` views evenly spaced around each elevation (degrees)."""
    el = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(azimuths)
    az = (torch.arange(azimuths, dtype=torch.float32) * 360.0 / azimuths).repeat(len(elevations))
    return make_cameras(el, az, distance, fov_y, size)


def transforms(cameras: Cameras, names: list[str]) -> dict:
    """The nerfstudio / instant-ngp ``transforms.json`` contents for these cameras."""
    f = float(cameras.focal[0])
    H, W = cameras.height, cameras.width
    return {
        "camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
        "camera_angle_x": 2 * math.atan(W / (2 * f)), "depth_unit_scale_factor": 0.001,
        "frames": [{"file_path": f"images/{n}.png", "depth_file_path": f"depth/{n}.png",
                    "normal_file_path": f"normals/{n}.png",
                    "transform_matrix": cameras.c2w[k].tolist(),
                    "elevation": float(cameras.elevation[k]), "azimuth": float(cameras.azimuth[k])}
                   for k, n in enumerate(names)],
    }


def write_view_set(rep, cameras: Cameras, folder: Path, background: Tensor) -> list[Path]:
    """The multi-view set (module doc) in ``folder``. Returns the files, transforms.json first."""
    for sub in ("images", "depth", "normals"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names = [f"{k:03d}" for k in range(len(cameras))]
    written, k = [], 0
    black = torch.zeros(3)
    for out, cams in render_batches(rep, cameras, black, normals=True):
        alpha = out.alpha[:, 0]
        straight = out.rgb / alpha[:, None].clamp_min(1e-6)  # rendered over black: premultiplied
        colour = torch.where(alpha[:, None] > 1e-6, straight, background.view(1, 3, 1, 1))
        rgba = torch.cat([colour, alpha[:, None]], 1).permute(0, 2, 3, 1)
        depth_mm = torch.where(alpha > 0.5, out.depth[:, 0] * 1000, 0).round().clamp(0, 65535)
        normals = torch.cat([(world_normals(out, cams) + 1) / 2, alpha[:, None]], 1).permute(0, 2, 3, 1)
        for b in range(len(cams)):
            n = names[k]
            write_png(folder / "images" / f"{n}.png", to_uint8(rgba[b]))
            write_png(folder / "depth" / f"{n}.png", depth_mm[b].numpy().astype(np.uint16))
            write_png(folder / "normals" / f"{n}.png", to_uint8(normals[b]))
            written += [folder / sub / f"{n}.png" for sub in ("images", "depth", "normals")]
            k += 1
    atomic_write(folder / "transforms.json", json.dumps(transforms(cameras, names), indent=2))
    return [folder / "transforms.json", *written]
