"""Stage chaining (``init_from=RUN_DIR``): start a representation from an earlier run's.

The Magic3D / ProlificDreamer workflow: a coarse volumetric stage, then a mesh refined from its
isosurface. ``threedgen.registry.conversion`` picks one of the functions here, ``(source,
target_cfg, seed) -> target``: ``same_kind`` for any kind, else the ``CONVERSIONS`` entry of the
(source name, target name) pair; a pair that is not in it is an error.

- same kind -> same kind: the target (same sizes) starts from the source's weights, e.g. a second
  stage with another guidance or a longer schedule;
- NeRF, triplane, Gaussians -> mesh: the isosurface of the source's density at the level whose
  silhouettes match its renders (``threedgen.representations.isosurface``); for fields, the mesh's colour
  grid starts from the source's colours;
- NeRF, triplane -> Gaussians: Gaussians at points drawn on that same isosurface, with the field's
  colours there.
"""

from __future__ import annotations

import math

import torch

from threedgen.schedules import ConfigError
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.isosurface import extract_isosurface
from threedgen.representations.mesh import Mesh


def same_kind(source, cfg, seed: int):
    """The target starts from the source's weights. Kinds whose sizes change in training (the
    Gaussians' count, a mesh's vertices) resize in ``load_weights``; fixed sizes that differ (a
    grid's resolution) are refused in one line."""
    target = type(source).from_config(cfg, seed=seed)
    try:
        target.load_weights(source.state_dict())
    except RuntimeError as e:  # load_state_dict's "size mismatch for ..."
        sizes = "; ".join(line.strip() for line in str(e).splitlines()[1:3]) or str(e)
        raise ConfigError(f"init_from: cannot start from a {cfg.name} of other sizes ({sizes})") from None
    return target


@torch.no_grad()
def mesh_from_density(source, cfg: Mesh.Config, seed: int) -> Mesh:
    verts, faces, _ = extract_isosurface(source, resolution=cfg.init_resolution)
    mesh = Mesh.from_mesh(torch.from_numpy(verts), torch.from_numpy(faces), cfg, seed=seed)
    if source.colour_field:
        R = cfg.texture_resolution
        v = torch.linspace(-cfg.aabb, cfg.aabb, R)
        z, y, x = torch.meshgrid(v, v, v, indexing="ij")  # the texture is indexed [z, y, x]
        rgb = source.colours(torch.stack([x, y, z], -1).reshape(-1, 3))
        mesh.texture.copy_(torch.logit(rgb, eps=1e-3).t().reshape(1, 3, R, R, R))
    return mesh


@torch.no_grad()
def gaussians_from_density(source, cfg: Gaussians.Config, seed: int) -> Gaussians:
    import trimesh

    verts, faces, _ = extract_isosurface(source)
    surface = trimesh.Trimesh(verts, faces, process=False)
    points, _ = trimesh.sample.sample_surface_even(surface, cfg.n, seed=seed)
    xyz = torch.as_tensor(points, dtype=torch.float32)
    scale = math.sqrt(surface.area / max(len(xyz), 1)) * 0.5  # about half the spacing
    g = Gaussians.from_points(xyz, source.colours(xyz), scale=scale, opacity=cfg.init_opacity)
    g.cfg = cfg
    return g
