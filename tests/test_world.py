import torch

from threedgen.cameras import make_cameras, orbit
from threedgen import world


def test_render_shapes_and_determinism():
    cams = orbit(3, 20.0, 2.8, 30.0, 32)
    a = world.render(["cone", "mug", "torus"], ["red", "blue", "green"], cams)
    b = world.render(["cone", "mug", "torus"], ["red", "blue", "green"], cams)
    assert a.rgb.shape == (3, 3, 32, 32) and a.alpha.shape == (3, 1, 32, 32)
    assert a.depth.shape == (3, 1, 32, 32) and a.normal.shape == (3, 3, 32, 32)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)
    assert a.rgb.min() >= 0 and a.rgb.max() <= 1


def test_background_is_white_and_object_centred():
    r = world.render(["sphere"], ["blue"], make_cameras(0.0, 0.0, 2.8, 30.0, 32))
    assert torch.allclose(r.rgb[0, :, 0, 0], torch.ones(3))  # corner: background
    assert r.alpha[0, 0, 16, 16] == 1 and r.alpha[0, 0, 0, 0] == 0
    centre = r.rgb[0, :, 16, 16]
    assert centre[2] > centre[0] and centre[2] > centre[1]  # blue
    # Depth at the centre: camera distance minus the sphere's radius (0.6).
    assert abs(r.depth[0, 0, 16, 16].item() - 2.2) < 0.03


def test_colourize_reproduces_render():
    cams = orbit(2, 30.0, 2.8, 30.0, 32)
    r = world.render(["cube", "cube"], ["red", "yellow"], cams)
    rgb = world.colourize(r.luminance, r.alpha, world.colour_tensor(["red", "yellow"]))
    assert torch.allclose(rgb, r.rgb, atol=1e-6)


def test_mug_handle_faces_plus_x():
    # Seen from above, the silhouette's centroid (mapped to the rim plane) lies towards +x.
    cams = make_cameras(89.9, 0.0, 2.8, 30.0, 64)
    alpha = world.render(["mug"], ["red"], cams).alpha[0, 0]
    o, d = cams.rays()
    s = (0.45 - o[0, ..., 2]) / d[0, ..., 2]
    xy = o[0, ..., :2] + s[..., None] * d[0, ..., :2]
    centroid = (alpha[..., None] * xy).sum((0, 1)) / alpha.sum()
    assert centroid[0] > 0.01 and abs(centroid[1]) < 0.003


def test_cube_has_90_degree_symmetry_and_mug_does_not():
    cams = make_cameras(20.0, [10.0, 100.0], 2.8, 30.0, 32)
    cube = world.render(["cube", "cube"], ["red", "red"], cams)
    mug = world.render(["mug", "mug"], ["red", "red"], cams)
    assert torch.allclose(cube.alpha[0], cube.alpha[1], atol=1e-6)
    assert (mug.alpha[0] - mug.alpha[1]).abs().sum() > 5
