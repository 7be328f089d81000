"""3D Gaussians <-> the ``.ply`` layout that 3DGS viewers read (Kerbl et al.'s reference code).

One binary little-endian vertex element, float32 properties in this order:

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3(K-1)-1)  opacity  scale_0..2  rot_0..3

- f_dc: the degree-0 spherical-harmonic coefficient per channel, rgb = 0.5 + SH_C0 * f_dc;
  f_rest: the higher degrees, channel-major (all of R's coefficients, then G's, then B's);
- opacity: a logit; scale: logs; rot: a quaternion (w, x, y, z), not necessarily normalised;
- normals are zero (the reference code writes them so).

Axes (``up``, ``export.axes``): by default the file is "-y" up, as 3DGS viewers read .ply
files (SuperSplat, antimatter15/splat, GaussianSplats3D; ``export.axes`` says why): positions
turn with the axes, rotations compose with the turn and the higher SH degrees turn with it. A
header line ``comment threedgen_up <up>`` records it, and reading undoes it.

Columns that viewers ignore (``td_*``) keep what the file's own columns cannot hold exactly, so
a file written here reloads bit for bit: our degree-0 Gaussians keep their colour as a logit of
rgb, which f_dc rounds (``td_color_0..2``: the raw logits); a turned file's rotations and higher
SH degrees are rounded by the turn (``td_rot_0..3``, ``td_rest_*``: the project-frame values).
A file from elsewhere reloads through f_dc, rot and f_rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from threedgen.export.axes import UPS, Up, rotate_quaternions, rotate_sh, rotation
from threedgen.representations.gaussians import SH_C0, Gaussians
from threedgen.files import atomic_write


class SplatError(ValueError):
    """A .ply that is not a 3DGS splat file; the message says what is missing."""


def _names(prefix: str, k: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(k)]


def _columns(p: dict[str, torch.Tensor], sh_degree: int, up: Up) -> list[tuple[list[str], torch.Tensor]]:
    """(property names, values [N, k]) in file order, from the parameters ``p`` (project frame)
    turned to ``up``: the 3DGS layout, then the ``td_*`` extras (module doc)."""
    n, R, turned = len(p["means"]), rotation(up), up != "z"
    channel_major = lambda c: c.transpose(1, 2).reshape(n, -1)  # noqa: E731  [N, K, 3] -> R's K first
    if sh_degree == 0:
        dc, rest = (torch.sigmoid(p["colors"]) - 0.5) / SH_C0, torch.zeros(n, 0)
    else:
        dc = p["colors"][:, 0]  # [N, 3]: degree 0 does not turn
        rest = channel_major((rotate_sh(p["colors"], R) if turned else p["colors"])[:, 1:])  # [N, 3 (K - 1)]
    columns = [(["x", "y", "z"], p["means"] @ torch.from_numpy(R).T),  # exact: a signed permutation
               (["nx", "ny", "nz"], torch.zeros(n, 3)), (_names("f_dc_", 3), dc),
               (_names("f_rest_", rest.shape[1]), rest), (["opacity"], p["opacities"][:, None]),
               (_names("scale_", 3), p["scales"]),
               (_names("rot_", 4), rotate_quaternions(p["quats"], R) if turned else p["quats"])]
    if sh_degree == 0:
        columns.append((_names("td_color_", 3), p["colors"]))
    if turned:
        columns.append((_names("td_rot_", 4), p["quats"]))
    if turned and sh_degree:
        columns.append((_names("td_rest_", rest.shape[1]), channel_major(p["colors"][:, 1:])))
    return columns


def write_splat_ply(gaussians: Gaussians, path: str | Path, up: Up = "-y") -> None:
    """Write ``gaussians`` to ``path`` with ``up`` as the file's up axis (module doc),
    atomically (a temporary file, then a rename)."""
    if len(gaussians) == 0:
        raise SplatError(f"{path}: no Gaussians to write")
    p = {k: v.detach().float().cpu() for k, v in gaussians.params.items()}
    columns = _columns(p, gaussians.sh_degree, up)
    data = torch.cat([v for _, v in columns], dim=1).numpy().astype("<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"comment threedgen_up {up}",
                        f"element vertex {len(data)}",
                        *[f"property float {name}" for names, _ in columns for name in names], "end_header"])
    atomic_write(Path(path), header.encode() + b"\n" + data.tobytes())


def read_splat_ply(path: str | Path) -> Gaussians:
    """A 3DGS .ply -> Gaussians (degree from the number of f_rest properties)."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise SplatError(f"{path}: not a PLY file")
    header = raw[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise SplatError(f"{path}: only binary little-endian splat files are read")
    n = next((int(line.split()[2]) for line in header if line.startswith("element vertex")), None)
    names = [line.split()[2] for line in header if line.startswith("property float")]
    if n is None or len(names) != sum(line.startswith("property") for line in header):
        raise SplatError(f"{path}: expected one vertex element of float properties")
    missing = [k for k in ("x", "opacity", "scale_0", "rot_0", "f_dc_0") if k not in names]
    if missing:
        raise SplatError(f"{path}: not a 3DGS splat file (no {', '.join(missing)})")
    table = np.frombuffer(raw, dtype="<f4", count=n * len(names), offset=end + len(b"end_header\n"))
    col = {name: torch.from_numpy(table.reshape(n, len(names))[:, i].copy()) for i, name in enumerate(names)}
    n_rest = sum(name.startswith("f_rest_") for name in names)
    up = next((line.split()[2] for line in header if line.startswith("comment threedgen_up ")), "z")
    if up not in UPS:
        raise SplatError(f"{path}: unknown up axis {up!r} (known: {', '.join(UPS)})")
    return _gaussians(col, n_rest, up)


def _gaussians(col: dict[str, torch.Tensor], n_rest: int, up: Up) -> Gaussians:
    """The file's columns [N] by name -> Gaussians in the project's frame: the file's turn to
    ``up`` undone, or the exact ``td_*`` copies taken where the file has them."""
    stack = lambda prefix, k: torch.stack([col[f"{prefix}{i}"] for i in range(k)], dim=1)  # noqa: E731
    exact = lambda name, k: stack(f"td_{name}_", k) if f"td_{name}_0" in col else None  # noqa: E731
    back, turned = rotation(up).T, up != "z"  # back: the file's frame -> the project's
    sh_degree = round(((n_rest // 3) + 1) ** 0.5) - 1
    dc = stack("f_dc_", 3)
    if sh_degree == 0:
        colors = exact("color", 3)
        colors = torch.logit(0.5 + SH_C0 * dc, eps=1e-6) if colors is None else colors
    else:
        rest = exact("rest", n_rest)
        file_frame = rest is None and turned
        rest = stack("f_rest_", n_rest) if rest is None else rest  # channel-major
        colors = torch.cat([dc[:, None], rest.reshape(len(dc), 3, -1).transpose(1, 2)], dim=1)  # [N, K, 3]
        if file_frame:  # degree 0 does not turn
            colors = torch.cat([dc[:, None], rotate_sh(colors, back)[:, 1:]], dim=1)
    quats = exact("rot", 4)
    if quats is None:
        quats = rotate_quaternions(stack("rot_", 4), rotation(up), inverse=True)
    means = torch.stack([col["x"], col["y"], col["z"]], dim=1) @ torch.from_numpy(back).T  # exact
    return Gaussians(means, stack("scale_", 3), quats, col["opacity"], colors, sh_degree)
