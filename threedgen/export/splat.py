"""3D Gaussians <-> the ``.ply`` layout that 3DGS viewers read (Kerbl et al.'s reference code).

One binary little-endian vertex element, float32 properties in this order:

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3(K-1)-1)  opacity  scale_0..2  rot_0..3

- f_dc: the degree-0 spherical-harmonic coefficient per channel, rgb = 0.5 + SH_C0 * f_dc;
  f_rest: the higher degrees, channel-major (all of R's coefficients, then G's, then B's);
- opacity: a logit; scale: logs; rot: a quaternion (w, x, y, z), not necessarily normalised;
- normals are zero (the reference code writes them so).

Our degree-0 Gaussians keep their colour as a logit of rgb, which the file cannot hold exactly
through f_dc; it adds ``td_color_0..2`` (the raw logits), which viewers ignore, so a file written
here reloads bit for bit. A file from elsewhere reloads through f_dc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from threedgen.representations.gaussians import SH_C0, Gaussians
from threedgen.files import atomic_write


class SplatError(ValueError):
    """A .ply that is not a 3DGS splat file; the message says what is missing."""


def _properties(n_rest: int, extra: bool) -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3"] + (["td_color_0", "td_color_1", "td_color_2"] if extra else [])
    return names


def write_splat_ply(gaussians: Gaussians, path: str | Path) -> None:
    """Write ``gaussians`` to ``path`` (atomically: a temporary file, then a rename)."""
    p = {k: v.detach().float().cpu() for k, v in gaussians.params.items()}
    n = len(gaussians)
    if n == 0:
        raise SplatError(f"{path}: no Gaussians to write")
    if gaussians.sh_degree == 0:
        dc = (torch.sigmoid(p["colors"]) - 0.5) / SH_C0  # [N, 3]
        rest = torch.zeros(n, 0)
        extra = [p["colors"]]
    else:
        dc = p["colors"][:, 0]  # [N, 3]
        rest = p["colors"][:, 1:].transpose(1, 2).reshape(n, -1)  # [N, 3 (K - 1)], channel-major
        extra = []
    columns = [p["means"], torch.zeros(n, 3), dc, rest, p["opacities"][:, None], p["scales"], p["quats"], *extra]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = _properties(rest.shape[1], bool(extra))
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        *[f"property float {name}" for name in names], "end_header"]) + "\n"
    atomic_write(Path(path), header.encode() + data.tobytes())


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
    stack = lambda prefix, k: torch.stack([col[f"{prefix}{i}"] for i in range(k)], dim=1)  # noqa: E731
    n_rest = sum(name.startswith("f_rest_") for name in names)
    sh_degree = round(((n_rest // 3) + 1) ** 0.5) - 1
    dc = stack("f_dc_", 3)
    if sh_degree == 0:
        colors = stack("td_color_", 3) if "td_color_0" in col else torch.logit(0.5 + SH_C0 * dc, eps=1e-6)
    else:
        rest = stack("f_rest_", n_rest).reshape(n, 3, -1).transpose(1, 2)  # [N, K - 1, 3]
        colors = torch.cat([dc[:, None], rest], dim=1)
    means = torch.stack([col["x"], col["y"], col["z"]], dim=1)
    return Gaussians(means, stack("scale_", 3), stack("rot_", 4), col["opacity"], colors, sh_degree)
