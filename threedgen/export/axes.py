"""The up axis of exported files.

The project's world is z-up (``threedgen.cameras``). Files follow the convention of the tools
that open them (``ExportConfig.up`` overrides it):

- "y": glTF requires +y up (its spec: "glTF uses a right-handed coordinate system ... +Y up");
  Blender's and three.js's OBJ and PLY importers assume it too. (x, y, z) -> (x, z, -y): a
  right-handed turn of -90 degrees about x, so the object's +x stays +x and the world's -y
  (the side an azimuth of -90 degrees sees) faces the viewer's +z.
- "-y": the 3DGS .ply convention. 3DGS scenes come from COLMAP, whose OpenCV camera frame has +y
  down, and the viewers read them so: SuperSplat turns every loaded .ply by 180 degrees about z
  ("PLY files generally have content stored with -Y going up", playcanvas/supersplat#451),
  antimatter15/splat and GaussianSplats3D's demos look with a -y camera up. (x, y, z) ->
  (-x, -z, -y) is the "y" turn followed by SuperSplat's 180 degrees about z undone, so SuperSplat
  shows a splat file upright and facing the way three.js shows the glb.
- "z": the project's own frame, unchanged.

Each is a proper rotation (a signed permutation of the axes), so positions and normals map
exactly in floating point; Gaussians' rotations compose with it (``rotate_quaternions``) and
their view-dependent colour (spherical harmonics) turns with it (``rotate_sh``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics
from kornia.geometry.conversions import rotation_matrix_to_quaternion
from kornia.geometry.quaternion import Quaternion
from torch import Tensor

Up = Literal["y", "-y", "z"]
UPS = ("y", "-y", "z")

_ROTATIONS = {  # file coordinates = R @ world coordinates
    "z": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "y": ((1, 0, 0), (0, 0, 1), (0, -1, 0)),
    "-y": ((-1, 0, 0), (0, 0, -1), (0, -1, 0)),
}


def rotation(up: Up) -> np.ndarray:
    """[3, 3] float32: file coordinates = rotation(up) @ world (z-up) coordinates."""
    return np.array(_ROTATIONS[up], dtype=np.float32)


def to_file(points: np.ndarray, up: Up) -> np.ndarray:
    """Points or directions [..., 3] (world, z up) -> the file's frame (exact: signed permutation)."""
    return np.asarray(points, np.float32) @ rotation(up).T


def from_file(points: np.ndarray, up: Up) -> np.ndarray:
    """The inverse of ``to_file``: [..., 3] in the file's frame -> world (z up)."""
    return np.asarray(points, np.float32) @ rotation(up)


def rotate_quaternions(quats: Tensor, R: np.ndarray, inverse: bool = False) -> Tensor:
    """Gaussians' rotations [N, 4] (wxyz, any norm) turned by R [3, 3]: q -> q_R q, so that a
    Gaussian's covariance R_q S^2 R_q^T becomes R R_q S^2 R_q^T R^T; the norm is kept.
    ``inverse``: turned back by R^T, through q_R's conjugate, so that turning and turning back
    gives q itself (not -q, the same rotation)."""
    q_r = rotation_matrix_to_quaternion(torch.as_tensor(R, dtype=quats.dtype))  # wxyz, unit
    if inverse:
        q_r = q_r * q_r.new_tensor([1.0, -1.0, -1.0, -1.0])
    return (Quaternion(q_r.expand_as(quats)) * Quaternion(quats)).data


def rotate_sh(coeffs: Tensor, R: np.ndarray) -> Tensor:
    """Spherical-harmonic colours [N, K, 3] (gsplat's real basis, K = (degree + 1)^2) of a scene
    turned by R [3, 3]: the new colour seen along R d is the old one along d, f'(d) = f(R^T d).
    The K x K matrix comes from a least-squares fit on 64 directions (exact up to rounding: the
    rotated basis spans the same bands); degree 0 is unchanged."""
    K = coeffs.shape[1]
    degree = round(K ** 0.5) - 1
    if degree == 0:
        return coeffs
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=torch.float64), dim=-1)
    R = torch.as_tensor(R, dtype=torch.float64)
    M = torch.linalg.lstsq(_sh_basis(degree, dirs), _sh_basis(degree, dirs @ R)).solution  # [K, K]
    return torch.einsum("jk,nkc->njc", M.to(coeffs.dtype), coeffs)


def _sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """[M, K]: the K real SH basis functions (gsplat's) at unit directions dirs [M, 3]."""
    K = (degree + 1) ** 2
    one_hot = torch.eye(K, dtype=dirs.dtype)[:, None, :, None].expand(K, len(dirs), K, 3)
    return _spherical_harmonics(degree, dirs.expand(K, -1, -1), one_hot)[..., 0].T
