"""An explicit triangle mesh: learnable vertex offsets from a base mesh, and a 3D colour field.

Geometry: verts = base_verts + (I + lambda L)^-1 offsets, faces fixed (a deformed sphere keeps
genus 0), L = D - A the uniform (combinatorial) Laplacian of the base mesh, lambda = ``smoothing``.
This is the parametrisation of Nicolet et al. 2021 ("Large Steps in Inverse Rendering of
Geometry"): a gradient on the vertices reaches ``offsets`` through the same symmetric solve, i.e.
smoothed, and ``UniformAdam`` keeps the step smooth. With per-vertex offsets and plain Adam, SDS
noise roughens the surface within a few hundred steps. The solve uses SciPy's sparse LU (on CPU),
factorised once per topology. The default base is an icosphere (``trimesh.creation.icosphere``);
``Mesh.from_mesh`` starts from any mesh, e.g. an isosurface extracted from an earlier stage.
base_verts and faces are buffers saved in the state dict, so ``load_weights`` restores a mesh of
any topology.

Colour: albedo(x) = sigmoid(T(x)), T a dense R^3 grid of logits spanning [-aabb, aabb]^3
trilinearly sampled (``F.grid_sample``, align_corners=True, border padding) at the surface point x.
Shading: rgb = albedo * (ambient + (1 - ambient) * max(0, n . l)), n the face normal, l the
world-fixed unit direction towards the light. The defaults are the embedded world's light
(``threedgen.world``: LIGHT, AMBIENT), whose renders the prior learnt from;
ambient = 1 renders the albedo unshaded.

Regularisers (weights are Scheduled): Laplacian smoothness mean_i ||v_i - mean_{j~i} v_j||^2
(uniform weights), normal consistency mean over adjacent face pairs of 1 - n_a . n_b, and edge
length uniformity var(|e|) / mean(|e|)^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.schedules import Scheduled, value_at
from threedgen.render.mesh import MeshEdges, face_normals, mesh_edges, render_mesh
from threedgen.render.types import RenderOutput


class Mesh(nn.Module):
    dynamic = False
    meshed_as = "triangles"
    has_splats = False
    colour_field = False

    @dataclass(frozen=True)
    class Config:
        name: Literal["mesh"] = "mesh"
        radius: float = 0.5  # of the base icosphere
        subdivisions: int = 4  # of the base icosphere: 20 * 4^s faces
        aabb: float = 1.0  # half-size of the colour grid's box
        texture_resolution: int = 32
        init_resolution: int = 48  # density grid for an isosurface when started from a volumetric stage
        light: tuple[float, float, float] = (0.35, 0.25, 0.90)  # towards the light, world z-up
        ambient: float = 0.35
        sigma: float = 0.3  # outline softness, pixels (see render_mesh)
        smoothing: float = 10.0  # lambda of the vertex parametrisation (I + lambda L)^-1
        lr_verts: float = 0.01  # UniformAdam on offsets
        lr_texture: float = 0.05
        lambda_laplacian: Scheduled = 0.0
        lambda_normal: Scheduled = 0.0  # normal consistency
        lambda_edge: Scheduled = 0.0  # edge length uniformity

        def parameters(self) -> int:
            """float32 numbers this config allocates (colour grid, vertices of the subdivided sphere, initial SDF grid)."""
            return 3 * self.texture_resolution ** 3 + 30 * 4 ** self.subdivisions + self.init_resolution ** 3

        def __post_init__(self):
            if self.radius <= 0 or self.aabb <= 0 or self.sigma <= 0:
                raise ValueError("radius, aabb and sigma must be positive")
            if self.subdivisions < 0 or self.texture_resolution < 2 or self.smoothing < 0:
                raise ValueError("subdivisions >= 0, texture_resolution >= 2 and smoothing >= 0 "
                                 "are required")
            if not 0 <= self.ambient <= 1:
                raise ValueError("ambient must be in [0, 1]")
            if not any(self.light):
                raise ValueError("light must be a non-zero direction")

    """base_verts [V, 3], faces [F, 3] long (buffers); offsets [V, 3] and texture [1, 3, R, R, R]
    colour logits indexed [z, y, x] (grid_sample's layout) are the parameters. seed: the colour
    initialisation (small noise around grey)."""

    def __init__(self, base_verts: Tensor, faces: Tensor, cfg: Config, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        R = cfg.texture_resolution
        gen = torch.Generator().manual_seed(seed)  # CPU draws, any default device
        self.register_buffer("base_verts", base_verts.detach().float().clone())
        self.register_buffer("faces", faces.detach().long().clone())
        self.offsets = nn.Parameter(torch.zeros_like(self.base_verts))
        self.texture = nn.Parameter(torch.randn(1, 3, R, R, R, generator=gen, device="cpu") * 0.1)
        self.register_buffer("light", F.normalize(torch.tensor(cfg.light), dim=0), persistent=False)
        self._set_topology()

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> Mesh:
        sphere = trimesh.creation.icosphere(subdivisions=cfg.subdivisions, radius=cfg.radius)
        return cls(torch.tensor(sphere.vertices), torch.tensor(sphere.faces), cfg, seed=seed)

    @classmethod
    def from_mesh(cls, verts: Tensor, faces: Tensor, cfg: Config, seed: int = 0) -> Mesh:
        """Start from verts [V, 3] and faces [F, 3] (counter-clockwise seen from outside)."""
        if verts.dim() != 2 or verts.shape[1] != 3 or faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"expected verts [V, 3] and faces [F, 3], got {tuple(verts.shape)} "
                             f"and {tuple(faces.shape)}")
        return cls(verts, faces, cfg, seed=seed)

    def _set_topology(self) -> None:
        """Edge tables derived from faces (non-persistent buffers: they follow .to(device))."""
        e = mesh_edges(self.faces)
        self.register_buffer("edge_verts", e.verts, persistent=False)
        self.register_buffer("edge_faces", e.faces, persistent=False)
        self.register_buffer("edge_boundary", e.boundary, persistent=False)
        degree = torch.bincount(e.verts.reshape(-1), minlength=len(self.base_verts))
        self.register_buffer("degree", degree.clamp(min=1), persistent=False)
        self._smoother = _smoother(e.verts, degree, self.cfg.smoothing)

    @property
    def edges(self) -> MeshEdges:
        return MeshEdges(self.edge_verts, self.edge_faces, self.edge_boundary)

    @property
    def verts(self) -> Tensor:
        """[V, 3] current vertex positions: base + (I + lambda L)^-1 offsets."""
        return self.base_verts + _Smooth.apply(self.offsets, self._smoother)

    # ------------------------------------------------------------------ the system's calls
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not hasattr(self, "_optimizers"):
            c = self.cfg
            self._optimizers = {
                "verts": UniformAdam([self.offsets], lr=c.lr_verts),
                "texture": torch.optim.Adam([self.texture], lr=c.lr_texture, betas=(0.9, 0.99))}
        return self._optimizers

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularisers with a non-zero weight at ``step``, by name."""
        c = self.cfg
        weights = {"laplacian": value_at(c.lambda_laplacian, step),
                   "normal": value_at(c.lambda_normal, step), "edge": value_at(c.lambda_edge, step)}
        losses = {"laplacian": self.laplacian_loss, "normal": self.normal_consistency_loss,
                  "edge": self.edge_length_loss}
        active = {k: w for k, w in weights.items() if w > 0}
        if not active:
            return {}
        v = self.verts
        return {k: w * losses[k](v) for k, w in active.items()}

    def pre_backward(self, step: int, optimizers: dict) -> None:
        pass

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        pass

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a state dict, first resizing every tensor to it (the topology may differ)."""
        for name, t in [*self.named_parameters(), *self.named_buffers()]:
            if name in state:
                t.data = t.data.new_empty(state[name].shape)
        self.load_state_dict(state)
        self._set_topology()

    # ------------------------------------------------------------------ geometry and colour
    def laplacian_loss(self, verts: Tensor) -> Tensor:
        """verts [V, 3] -> scalar mean_i ||v_i - mean of its neighbours||^2."""
        a, b = self.edge_verts.unbind(1)
        neighbours = torch.zeros_like(verts).index_add(0, a, verts[b]).index_add(0, b, verts[a])
        return (verts - neighbours / self.degree[:, None]).square().sum(-1).mean()

    def normal_consistency_loss(self, verts: Tensor) -> Tensor:
        """verts [V, 3] -> scalar mean over interior edges of 1 - cos(angle between face normals)."""
        n = face_normals(verts, self.faces)
        pairs = self.edge_faces[~self.edge_boundary]
        return (1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()

    def edge_length_loss(self, verts: Tensor) -> Tensor:
        """verts [V, 3] -> scalar var(edge length) / mean(edge length)^2."""
        length = (verts[self.edge_verts[:, 0]] - verts[self.edge_verts[:, 1]]).norm(dim=-1)
        return length.var(unbiased=False) / length.mean().square()

    def albedo(self, points: Tensor) -> Tensor:
        """points [N, 3] world -> [N, 3] colour in (0, 1)."""
        grid = (points / self.cfg.aabb).to(self.texture)[None, :, None, None]  # [1, N, 1, 1, 3]
        logits = F.grid_sample(self.texture, grid, align_corners=True, padding_mode="border")
        return torch.sigmoid(logits[0, :, :, 0, 0].t())

    def shade(self, points: Tensor, normals: Tensor) -> Tensor:
        """points, unit normals [N, 3] -> rgb [N, 3]: albedo times the Lambert factor."""
        a = self.cfg.ambient
        return self.albedo(points) * (a + (1 - a) * (normals @ self.light).clamp(min=0))[:, None]

    def surface_colour(self, points: Tensor, normals: Tensor) -> Tensor:
        """points, outward unit normals [M, 3] -> [M, 3]: the rendered (shaded) colour there."""
        return self.shade(points, normals)

    def render(self, cameras: Cameras, background: Tensor,
               generator: torch.Generator | None = None) -> RenderOutput:
        """See ``render_mesh``. (``generator`` is accepted for the common interface:
        rasterization is deterministic.)"""
        return render_mesh(self.verts, self.faces, self.shade, cameras, background,
                           edges=self.edges, sigma=self.cfg.sigma)

    def render_with_normals(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        """The render, whose normals [B, 3, H, W] are its triangles' (unit, world; 0 where empty)."""
        return self.render(cameras, background)


# ---------------------------------------------------------------------- smooth parametrisation
def _smoother(edges: Tensor, degree: Tensor, smoothing: float) -> scipy.sparse.linalg.SuperLU:
    """Sparse LU factors of I + lambda L, L = D - A the uniform (combinatorial) Laplacian.
    edges [E, 2], degree [V]."""
    V = len(degree)
    i, j = edges.cpu().numpy().T
    diag = 1 + smoothing * degree.cpu().numpy().astype(np.float64)
    rows = np.concatenate([i, j, np.arange(V)])
    cols = np.concatenate([j, i, np.arange(V)])
    vals = np.concatenate([np.full(2 * len(i), -smoothing), diag])
    return scipy.sparse.linalg.splu(scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(V, V)))


class _Smooth(torch.autograd.Function):
    """x = (I + lambda L)^-1 u for u [V, 3] (Nicolet et al. 2021, "Large Steps in Inverse
    Rendering of Geometry"): a gradient on x reaches u smoothed by the same symmetric solve."""

    @staticmethod
    def forward(ctx, u: Tensor, lu) -> Tensor:
        ctx.lu = lu
        return _solve(lu, u)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        return _solve(ctx.lu, grad), None


def _solve(lu, b: Tensor) -> Tensor:
    return torch.from_numpy(lu.solve(b.detach().cpu().double().numpy())).to(b)


class UniformAdam(torch.optim.Optimizer):
    """Adam whose step divides by the largest second-moment estimate of each tensor instead of each
    element's own (Nicolet et al. 2021), so a smooth gradient gives a smooth step."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"]
                state["m"].lerp_(p.grad, 1 - b1)
                state["v"].lerp_(p.grad.square(), 1 - b2)
                scale = (state["v"].max() / (1 - b2 ** t)).sqrt() + group["eps"]
                p.sub_(state["m"] / (1 - b1 ** t), alpha=group["lr"] / float(scale))
