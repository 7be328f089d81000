"""The pure-torch mesh rasterizer: a hand-computed square, silhouette gradients against finite
differences, gradcheck in float64, and silhouettes against the embedded world's ground truth."""

import math

import pytest
import torch
import trimesh

from threedgen.cameras import make_cameras, orbit
from threedgen.world.metrics import iou
from threedgen import world
from threedgen.render.mesh import mesh_edges, render_mesh


pytestmark = pytest.mark.usefixtures("one_thread")


# A camera on the +x axis at distance 3: image right is world +y, image up is world +z.
DIST, FOV, SIZE = 3.0, 30.0, 24
PLANE_X, HALF = 0.5, 0.4


def _square(dtype=torch.float32):
    """A square in the plane x = 0.5 facing the camera (+x), counter-clockwise seen from it."""
    verts = torch.tensor([[PLANE_X, -HALF, -HALF], [PLANE_X, HALF, -HALF], [PLANE_X, HALF, HALF],
                          [PLANE_X, -HALF, HALF]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return verts, faces


def _position_colour(points, normals):
    """A texture that is the surface point itself: rgb = (p + 1) / 2."""
    return (points + 1) / 2


def test_square_facing_the_camera():
    verts, faces = _square()
    cams = make_cameras(0.0, 0.0, DIST, FOV, SIZE)
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = render_mesh(verts, faces, _position_colour, cams, bg)
    assert out.rgb.shape == out.normal.shape == (1, 3, SIZE, SIZE)
    assert out.alpha.shape == out.depth.shape == (1, 1, SIZE, SIZE)

    # Analytic coverage: pixel centre (j + 0.5, i + 0.5) is inside when its ray hits the square.
    f = SIZE / 2 / math.tan(math.radians(FOV / 2))
    centre = torch.arange(SIZE) + 0.5
    world_y = (centre - SIZE / 2) / f * (DIST - PLANE_X)  # image right = +y
    world_z = -(centre - SIZE / 2) / f * (DIST - PLANE_X)  # image down = -z
    inside = (world_z.abs()[:, None] < HALF) & (world_y.abs()[None, :] < HALF)
    alpha = out.alpha[0, 0]
    assert torch.equal(alpha > 0.5, inside)
    interior = torch.nn.functional.max_pool2d((~inside)[None].float(), 5, 1, 2)[0] == 0
    assert interior.sum() > 20 and (alpha[interior] == 1).all()
    far = torch.nn.functional.max_pool2d(inside[None].float(), 7, 1, 3)[0] == 0
    assert far.sum() > 20 and (alpha[far] == 0).all()
    assert torch.allclose(out.rgb[0].permute(1, 2, 0)[far], bg.expand(int(far.sum()), 3))

    assert torch.allclose(out.depth[0, 0][inside], torch.tensor(DIST - PLANE_X))
    assert (out.depth[0, 0][~inside] == 0).all()
    normal = out.normal[0].permute(1, 2, 0)
    assert torch.allclose(normal[inside], torch.tensor([1.0, 0.0, 0.0]).expand(int(inside.sum()), 3))
    assert (normal[~inside] == 0).all()
    # The colour is the texture at the ray's hit point (perspective-correct interpolation).
    hit = torch.stack([torch.full((SIZE, SIZE), PLANE_X), world_y[None, :].expand(SIZE, SIZE),
                       world_z[:, None].expand(SIZE, SIZE)], -1)
    rgb = out.rgb[0].permute(1, 2, 0)
    assert torch.allclose(rgb[interior], (hit[interior] + 1) / 2, atol=1e-5)


def test_mesh_edges():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    faces = torch.tensor(sphere.faces)
    e = mesh_edges(faces)
    assert len(e.verts) == len(sphere.edges_unique) and not e.boundary.any()
    assert (e.faces[:, 0] != e.faces[:, 1]).all()
    for (a, b), (f, g) in zip(e.verts[:50].tolist(), e.faces[:50].tolist()):
        assert {a, b} <= set(faces[f].tolist()) and {a, b} <= set(faces[g].tolist())
    single = mesh_edges(torch.tensor([[0, 1, 2]]))
    assert single.boundary.all() and single.verts.tolist() == [[0, 1], [0, 2], [1, 2]]


def _triangle(dtype):
    """One triangle facing the camera at azimuth 0 (generic position: no pixel centre on an
    edge). Returns verts [3, 3], faces [1, 3], a 6x6 camera."""
    verts = torch.tensor([[0.0, -0.9, -0.7], [0.1, 0.8, -0.5], [-0.1, -0.2, 0.85]], dtype=dtype)
    return verts, torch.tensor([[0, 1, 2]]), make_cameras(0.0, 0.0, 1.8, 60.0, 6)


def test_silhouette_gradient_matches_finite_difference():
    verts, faces, cams = _triangle(torch.float64)
    white = torch.ones(3, dtype=torch.float64)

    def total_alpha(v):
        return render_mesh(v, faces, lambda p, n: 0 * p, cams, white).alpha.sum()

    v = verts.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(total_alpha(v), v)
    outward = verts[2] - verts[:2].mean(0)  # moving the apex away from the opposite edge
    outward = outward / outward.norm()
    h = 1e-4
    step = torch.zeros_like(verts)
    step[2] = h * outward
    fd = (total_alpha(verts + step) - total_alpha(verts - step)) / (2 * h)
    analytic = grad[2] @ outward
    assert fd > 0.5  # the triangle grows: total alpha increases
    assert torch.allclose(analytic, fd, rtol=1e-4)


def test_gradcheck_float64():
    verts, faces, cams = _triangle(torch.float64)
    colour = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    bg = torch.tensor([1.0, 0.9, 0.8], dtype=torch.float64)

    def render(v, c):
        shader = lambda p, n: c * (1 + 0.3 * p.sum(-1, keepdim=True)) * (0.5 + 0.5 * n[:, :1])  # noqa: E731
        out = render_mesh(v, faces, shader, cams, bg)
        return out.rgb, out.alpha, out.depth, out.normal

    rgb, alpha, depth, _ = render(verts, colour)
    assert rgb.dtype == torch.float64
    covered = depth > 0
    assert covered.sum() >= 4 and (~covered & (alpha > 0.01)).sum() >= 8  # interior and outline
    assert torch.autograd.gradcheck(render, (verts.requires_grad_(True), colour.requires_grad_(True)))


@pytest.mark.parametrize("shape,mesh", [
    ("sphere", lambda: trimesh.creation.icosphere(subdivisions=4, radius=0.6)),
    ("cube", lambda: trimesh.creation.box(extents=(0.9, 0.9, 0.9)).subdivide().subdivide()),
])
def test_silhouette_and_shading_match_the_world(shape, mesh):
    m = mesh()
    verts, faces = torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces)
    cams = orbit(4, 20.0, 2.8, 30.0, 64, start_azimuth=45.0)
    colour = torch.tensor(world.COLOURS["red"])
    out = render_mesh(verts, faces, lambda p, n: colour * world.lambert(n)[:, None], cams,
                      torch.ones(3))
    truth = world.render([shape] * 4, ["red"] * 4, cams)
    assert iou(out.alpha, truth.alpha) > 0.97
    assert (out.alpha - truth.alpha).abs().mean() < 0.02
    assert (out.rgb - truth.rgb).abs().mean() < 0.02
    both = (out.alpha[:, 0] == 1) & (truth.alpha[:, 0] == 1)
    assert (out.normal - truth.normal).norm(dim=1)[both].mean() < 0.05
    # World depth is the distance along the ray; ours is along the viewing axis.
    _, dirs = cams.rays()
    cos = -(dirs * cams.c2w[:, None, None, :3, 2]).sum(-1)
    ratio = out.depth[:, 0][both] / (truth.depth[:, 0][both] * cos[both])
    assert (ratio - 1).abs().mean() < 0.01
