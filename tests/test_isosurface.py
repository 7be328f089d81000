"""Isosurface extraction with the level chosen from the representation's own silhouettes."""

import numpy as np
import pytest
import torch
import trimesh

from threedgen.representations.isosurface import extract_isosurface, sample_grid
from threedgen.world import sd_cube, sd_torus
from threedgen.render.volume import render_volume
from threedgen.representations.gaussians import Gaussians


pytestmark = pytest.mark.usefixtures("one_thread")


class Solid:
    """A test representation: density = scale * sigmoid(-sdf / 0.005) of a world shape, rendered
    by the real volume renderer. ``scale`` sets the magnitude of the density."""

    aabb = 1.0

    def __init__(self, sdf, scale: float):
        self.sdf, self.scale = sdf, scale

    def field(self, p):
        return self.scale * torch.sigmoid(-self.sdf(p) / 0.005), torch.full_like(p, 0.5)

    def density_grid(self, resolution):
        v = torch.linspace(-1, 1, resolution)
        p = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
        return self.field(p)[0].reshape(resolution, resolution, resolution)

    def render(self, cameras, background):
        return render_volume(self.field, cameras, aabb=1.0, n_samples=96, background=background,
                             stratified=False)


def test_sample_grid_is_indexed_xyz():
    v = torch.linspace(-1, 1, 5)
    x, y, z = torch.meshgrid(v, v, v, indexing="ij")
    grid = x + 10 * y + 100 * z
    p = torch.tensor([[0.5, -0.25, 0.75], [-1.0, 1.0, 0.0]])
    torch.testing.assert_close(sample_grid(grid, p, 1.0), p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2])


@pytest.mark.parametrize("scale", [50.0, 5000.0])
def test_cube_surface_is_found_at_any_density_scale(scale):
    """The same surface comes out whether the density peaks at 50 or 5000: the level is chosen from
    the silhouettes, not fixed. Vertices lie on the true cube (within a grid cell), the mesh is
    closed and its faces point outwards."""
    verts, faces, info = extract_isosurface(Solid(sd_cube, scale), resolution=40)
    assert info["silhouette_iou"] > 0.95
    cell = 2 / 39
    assert sd_cube(torch.from_numpy(verts)).abs().max() < cell
    mesh = trimesh.Trimesh(verts, faces)
    assert mesh.is_watertight and mesh.volume > 0  # positive volume: outward winding


def test_torus_keeps_its_hole_and_floaters_are_dropped():
    """Genus follows the data (a torus stays a torus), and a tiny far-away blob is removed."""
    def sdf(p):
        floater = (p - torch.tensor([0.0, 0.0, 0.85])).norm(dim=-1) - 0.06
        return torch.minimum(sd_torus(p), floater)

    verts, faces, _ = extract_isosurface(Solid(sdf, 50.0), resolution=48)
    mesh = trimesh.Trimesh(verts, faces)
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.euler_number == 0  # genus 1
    assert verts[:, 2].max() < 0.4


def test_gaussian_density_grid_matches_its_formula():
    g = Gaussians.from_points(torch.tensor([[0.25, 0.0, 0.0]]), torch.ones(1, 3), scale=0.2, opacity=0.8)
    grid = g.density_grid(9)  # vertices at multiples of 0.25
    torch.testing.assert_close(grid[5, 4, 4], torch.tensor(0.8))  # the centre
    expected = 0.8 * np.exp(-0.5 * (0.25 / 0.2) ** 2)
    torch.testing.assert_close(grid[4, 4, 4], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(grid[5, 5, 4], torch.tensor(expected, dtype=torch.float32))
