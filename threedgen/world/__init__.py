"""The embedded procedural world: coloured primitives at the origin, Lambert-shaded on white.

Every object is an analytic signed distance function (SDF) in a z-up world, about 1.2 units across,
rendered by sphere tracing with 2x2 supersampling. The same renders are the prior's training data
and the evaluation's ground truth (RGB, fractional mask, depth, normal) from any camera.

Shapes: sphere, cube, cylinder, cone, torus (lying flat), mug. The mug is an open cup whose handle
points to +x, so a camera at azimuth 0 looks straight at the handle: it is the one object whose
appearance depends on azimuth over the full circle (the cube repeats every 90 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from threedgen.cameras import Cameras

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "mug")
COLOURS = {
    "red": (0.85, 0.12, 0.12),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.92, 0.85, 0.12),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "purple": (0.55, 0.18, 0.72),
}
# Shape x colour combinations never shown to the prior in training (4 of 36, 11%): they measure
# compositional generalisation. The README demo's "a red cube" and every sweep prompt stay seen.
HELD_OUT = (("cone", "blue"), ("torus", "yellow"), ("mug", "green"), ("sphere", "purple"))
BACKGROUND = 1.0  # white
LIGHT = (0.35, 0.25, 0.90)  # world-fixed direction towards the light, z-up
AMBIENT, DIFFUSE = 0.35, 0.65


# --- signed distance functions: p [..., 3] -> [...] -------------------------------------------

def _sd_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:
    d = torch.stack([p[..., :2].norm(dim=-1) - radius, p[..., 2].abs() - half_height], -1)
    return d.amax(-1).clamp(max=0) + d.clamp(min=0).norm(dim=-1)


def _sd_torus_flat(p: Tensor, major: float, minor: float) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - major, p[..., 2]], -1)
    return q.norm(dim=-1) - minor


def sd_sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.6


def sd_cube(p: Tensor) -> Tensor:
    q = p.abs() - 0.45
    return q.amax(-1).clamp(max=0) + q.clamp(min=0).norm(dim=-1)


def sd_cylinder(p: Tensor) -> Tensor:
    return _sd_cylinder(p, 0.42, 0.6)


def sd_cone(p: Tensor) -> Tensor:
    """Cone with base radius 0.62 at z = -0.5 and apex at z = 0.6 (exact SDF, Quilez)."""
    base, bottom, height = 0.62, -0.5, 1.1
    q = torch.stack([p[..., :2].norm(dim=-1), p[..., 2] - bottom], -1)  # (r, h above base)
    # Distance to the slanted side segment from (base, 0) to (0, height).
    a = torch.tensor([base, 0.0], device=p.device)
    ab = torch.tensor([-base, height], device=p.device)
    t = (((q - a) * ab).sum(-1) / (ab * ab).sum()).clamp(0, 1)
    d_side = (q - a - t[..., None] * ab).norm(dim=-1)
    d_base = torch.stack([(q[..., 0] - base).clamp(min=0), q[..., 1]], -1).norm(dim=-1)
    inside = (q[..., 1] > 0) & (q[..., 0] * height + q[..., 1] * base < base * height)
    d = torch.minimum(d_side, d_base)
    return torch.where(inside, -d, d)


def sd_torus(p: Tensor) -> Tensor:
    return _sd_torus_flat(p, 0.45, 0.2)


def sd_mug(p: Tensor) -> Tensor:
    """An open cup (radius 0.45, height 0.9, wall 0.07) with a ring handle on the +x side."""
    body = _sd_cylinder(p, 0.45, 0.45)
    cavity = _sd_cylinder(p - torch.tensor([0.0, 0.0, 0.12], device=p.device), 0.38, 0.45)
    cup = torch.maximum(body, -cavity)
    # Handle: a ring in the xz-plane centred on the wall, cut to the part outside the body.
    h = (p - torch.tensor([0.45, 0.0, 0.0], device=p.device))[..., [0, 2, 1]]
    handle = torch.maximum(_sd_torus_flat(h, 0.24, 0.065), 0.45 - p[..., 0])
    return torch.minimum(cup, handle)


SDFS = {"sphere": sd_sphere, "cube": sd_cube, "cylinder": sd_cylinder, "cone": sd_cone,
        "torus": sd_torus, "mug": sd_mug}
BOUND = 1.0  # every object at rest lies inside the sphere of this radius
MOVING_BOUND = 1.35  # ... and every moving one (see motion_pose) inside this one


@dataclass(frozen=True)
class WorldRender:
    """rgb [B, 3, H, W] in [0, 1] on white; alpha [B, 1, H, W] coverage in [0, 1];
    depth [B, 1, H, W] camera distance (0 on background); normal [B, 3, H, W] world normals;
    luminance [B, 1, H, W] the Lambert factor times coverage, so rgb = colour * luminance +
    BACKGROUND * (1 - alpha) exactly, for any colour (see ``colourize``)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor
    luminance: Tensor


def _trace(sdf, origins: Tensor, dirs: Tensor, steps: int, bound: float = BOUND) -> tuple[Tensor, Tensor]:
    """Sphere-trace rays [N, 3] -> (hit mask [N], distance along ray [N])."""
    # Start at the bounding sphere to save steps.
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - bound**2
    disc = b * b - c
    t = (-b - disc.clamp(min=0).sqrt()).clamp(min=0)
    alive = disc > 0
    for _ in range(steps):
        d = sdf(origins + t[:, None] * dirs)
        t = torch.where(alive, t + 0.95 * d, t)
        alive = alive & (d > 1e-4) & (t < origins.norm(dim=-1) + bound)
    hit = (disc > 0) & (sdf(origins + t[:, None] * dirs).abs() < 2e-3)
    return hit, t


def _normals(sdf, p: Tensor, eps: float = 1e-3) -> Tensor:
    offsets = torch.eye(3, device=p.device) * eps
    grad = torch.stack([sdf(p + o) - sdf(p - o) for o in offsets], -1)
    return F.normalize(grad, dim=-1)


def lambert(normal: Tensor) -> Tensor:
    """Shading factor for unit normals [..., 3] -> [...]: ambient + diffuse * max(0, n . l)."""
    light = F.normalize(torch.tensor(LIGHT, device=normal.device), dim=0)
    return AMBIENT + DIFFUSE * (normal @ light).clamp(min=0)


def colour_tensor(colours: list[str]) -> Tensor:
    """Colour names -> [B, 3] RGB; unknown names raise."""
    for c in colours:
        if c not in COLOURS:
            raise ValueError(f"unknown colour {c!r}; known: {', '.join(COLOURS)}")
    return torch.tensor([COLOURS[c] for c in colours])


def colourize(luminance: Tensor, alpha: Tensor, colour: Tensor) -> Tensor:
    """luminance, alpha [B, 1, H, W], colour [B, 3] -> rgb [B, 3, H, W] on the white background."""
    return colour[:, :, None, None] * luminance + BACKGROUND * (1 - alpha)


# --- motions (the moving world of the video prior) ----------------------------------------------
# A motion maps time t (one period from 0 to 1; clips may start at any phase and run past 1) to a
# pose: an offset [3], a rotation about the vertical axis (degrees) and a uniform scale, applied to
# the object.
MOTIONS = ("bouncing", "spinning", "sliding", "pulsing")
# A spin turns 40 degrees a period (5 a frame of an 8-frame clip), well under half the shape's
# symmetry (cube 90, mug 360 degrees): every frame of a clip is then a small turn of the still
# object, nearer the forward turn than the backward one, and video SDS, which follows local pulls
# from the still pose, turns a 4D object forwards all along the clip (a full symmetry turn pulled
# the late frames back; the mug's 160 degrees a period turned only its first frames). The other
# shapes look the same when spinning.
SPIN_DEGREES = {"cube": 40.0, "mug": 40.0}
SYNONYMS = {"ball": "sphere"}  # words of the video prompts that name a shape
BOUNCE, SLIDE, PULSE = 0.5, 0.3, 0.2  # bounce height, slide amplitude (along y), pulse amplitude


def motion_pose(motion: str | None, shape: str, t: Tensor) -> Tensor:
    """t [N] -> poses [N, 5] = (dx, dy, dz, angle about z in degrees, scale); motion None: still.

    bouncing: dz = BOUNCE |sin(pi t)| - BOUNCE / 2 (one bounce a period, floor contact at t = 0);
    spinning: angle = SPIN_DEGREES[shape] t (a steady turn, not periodic); sliding: dy = SLIDE sin(2 pi t);
    pulsing: scale = 1 + PULSE sin(2 pi t)."""
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    if motion == "spinning" and shape not in SPIN_DEGREES:
        raise ValueError(f"a spinning {shape} looks still; spinning shapes: {', '.join(SPIN_DEGREES)}")
    pose = torch.zeros(len(t), 5)
    pose[:, 4] = 1.0
    if motion == "bouncing":
        pose[:, 2] = BOUNCE * torch.sin(torch.pi * t).abs() - BOUNCE / 2
    elif motion == "spinning":
        pose[:, 3] = SPIN_DEGREES[shape] * t
    elif motion == "sliding":
        pose[:, 1] = SLIDE * torch.sin(2 * torch.pi * t)
    elif motion == "pulsing":
        pose[:, 4] = 1 + PULSE * torch.sin(2 * torch.pi * t)
    return pose


def posed(sdf, pose: Tensor):
    """The SDF of the object moved by pose [N, 5] (one per query point): p -> s sdf(R^-1 (p - o) / s)."""
    def moved(p: Tensor) -> Tensor:
        q = p - pose[:, :3]
        a = torch.deg2rad(pose[:, 3])
        c, s = torch.cos(a), torch.sin(a)
        q = torch.stack([c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1], q[:, 2]], -1)
        return pose[:, 4] * sdf(q / pose[:, 4:5])
    return moved


@torch.no_grad()
def render(shapes: list[str], colours: list[str], cameras: Cameras, supersample: int = 2,
           steps: int = 64, poses: Tensor | None = None) -> WorldRender:
    """Render object b = (shapes[b], colours[b]) from cameras[b], moved by poses[b] (see
    ``motion_pose``; None: at rest). Deterministic."""
    for s in shapes:
        if s not in SDFS:
            raise ValueError(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    colour = colour_tensor(colours)
    big = cameras.resized(cameras.height * supersample, cameras.width * supersample)
    origins, dirs = big.rays()  # [B, h, w, 3]
    hit = torch.zeros(origins.shape[:-1])
    depth = torch.zeros(origins.shape[:-1])
    normal = torch.zeros(origins.shape)
    pixels = origins.shape[1] * origins.shape[2]
    for shape in set(shapes):
        idx = torch.tensor([b for b, s in enumerate(shapes) if s == shape])
        o, d = origins[idx].reshape(-1, 3), dirs[idx].reshape(-1, 3)
        per_ray = None if poses is None else poses[idx].repeat_interleave(pixels, 0)  # [N, 5]

        def sdf(rays=slice(None), base=SDFS[shape]):
            return base if per_ray is None else posed(base, per_ray[rays])

        h, t = _trace(sdf(), o, d, steps, BOUND if poses is None else MOVING_BOUND)
        n = torch.zeros_like(o)
        n[h] = _normals(sdf(h), (o + t[:, None] * d)[h])
        hit[idx] = h.float().reshape(hit[idx].shape)
        depth[idx] = (t * h).reshape(depth[idx].shape)
        normal[idx] = n.reshape(normal[idx].shape)

    def down(x: Tensor) -> Tensor:  # [B, h, w, C] -> [B, C, H, W], box filter
        return F.avg_pool2d(x.permute(0, 3, 1, 2), supersample)

    alpha = down(hit[..., None])
    luminance = down((hit * lambert(normal))[..., None])
    cover = alpha.clamp(min=1e-6)  # depth is averaged over covered subpixels only
    return WorldRender(colourize(luminance, alpha, colour).clamp(0, 1), alpha,
                       down(depth[..., None]) / cover * (alpha > 0), F.normalize(down(normal), dim=1),
                       luminance)


def prompt_for(shape: str, colour: str) -> str:
    return f"a {colour} {shape}"


def training_combinations() -> list[tuple[str, str]]:
    return [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in HELD_OUT]
