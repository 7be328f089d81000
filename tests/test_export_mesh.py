"""Export: textured meshes (fidelity to the renders, file round trips, bad geometry), turntables,
multi-view sets with transforms.json, and the CLI. Runs from real fits are checked in
tests/test_sweep.py (every representation, every sweep prompt)."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import binary_dilation

from tests.helpers import REPO
from tests.test_fit import fit
from threedgen.cameras import make_cameras, orbit
from threedgen.cli import main
from threedgen.export.axes import from_file
from threedgen.export.formats import ExportConfig, ExportError, Job
from threedgen.export.mesh import (SurfaceError, bake_views, extract_surface, fidelity, projected_colours,
                                   textured_mesh, write_glb, write_obj, write_ply)
from threedgen.export.views import transforms, view_cameras
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.mesh import Mesh
from threedgen.representations.nerf import NeRF

BG = torch.ones(3)
ORBIT = orbit(8, 20.0, 2.8, 30.0, 96)


def two_tone_cube_nerf(empty: bool = False) -> NeRF:
    """A NeRF holding a crisp cube of half-size 0.4: red below z = 0, blue above."""
    n = NeRF(resolution=32, blob_density=0.0)
    v = torch.linspace(-1, 1, 32)
    x, y, z = torch.meshgrid(v, v, v, indexing="ij")
    inside = torch.stack([x, y, z]).abs().amax(0) < 0.4
    with torch.no_grad():
        n.density.copy_(torch.where(inside & (not empty), 30.0, -30.0))
        top = z > 0
        n.color.copy_(torch.stack([torch.where(top, -3.0, 3.0), torch.full_like(z, -3.0),
                                   torch.where(top, 3.0, -3.0)], -1))
    return n.eval()


def painted_sphere_mesh() -> Mesh:
    m = Mesh.from_config(Mesh.Config(texture_resolution=8))
    with torch.no_grad():
        m.texture.copy_(torch.randn(m.texture.shape, generator=torch.Generator().manual_seed(0)) * 2)
    return m.eval()


def opaque_gaussian_shell() -> Gaussians:
    """Dense, nearly opaque Gaussians on a sphere of radius 0.5, green on one side, orange on the other."""
    g = Gaussians.from_sphere(6000, radius=0.5, seed=0)
    with torch.no_grad():
        g.params["opacities"].fill_(4.0)
        g.params["scales"].add_(0.5)
        side = g.means[:, 0] > 0
        g.params["colors"].copy_(torch.where(side[:, None], torch.tensor([-2.0, 2.0, -2.0]),
                                             torch.tensor([2.0, 0.0, -2.0])))
    return g.eval()


REPS = {"nerf": two_tone_cube_nerf, "mesh": painted_sphere_mesh, "gaussians": opaque_gaussian_shell}


# A mesh representation is baked by query only (export's bake=auto): its colours are exact there.
@pytest.mark.parametrize("name, bake", [("nerf", "query"), ("nerf", "project"), ("mesh", "query"),
                                        ("gaussians", "query"), ("gaussians", "project")])
def test_textured_mesh_matches_the_renders(name, bake):
    rep = REPS[name]()
    views = bake_views(2.8, 30.0, 96) if bake == "project" else None
    m = textured_mesh(rep, grid=64, texture_size=256, cameras=views, background=BG)
    f = fidelity(rep, m.verts, m.faces, m.uv, m.texture, ORBIT, BG)
    assert f["silhouette_iou"] >= 0.9 and f["psnr"] >= 20, f
    # The texture carries the colour: a flat grey texture on the same mesh is far worse.
    grey = np.full_like(m.texture, 128)
    assert fidelity(rep, m.verts, m.faces, m.uv, grey, ORBIT, BG)["psnr"] < f["psnr"] - 5


def test_back_projection_skips_hidden_points():
    """Two cubes on the x axis seen from +x: the far cube's front face faces the camera but is
    hidden by the near cube, so the view gives it no colour; the near cube's face gets the near
    cube's colour, un-premultiplied from the background."""
    n = NeRF(resolution=48, blob_density=0.0)
    v = torch.linspace(-1, 1, 48)
    x, y, z = torch.meshgrid(v, v, v, indexing="ij")
    across = (y.abs() < 0.3) & (z.abs() < 0.3)
    near, far = across & (x > 0.2) & (x < 0.7), across & (x > -0.7) & (x < -0.2)
    with torch.no_grad():
        n.density.copy_(torch.where(near | far, 30.0, -30.0))
        n.color.copy_(torch.where((x > 0)[..., None], torch.tensor([3.0, -3.0, -3.0]), torch.tensor([-3.0, -3.0, 3.0])))
    n.eval()
    verts, faces, _ = extract_surface(n, grid=64)
    view = make_cameras(0.0, 0.0, 2.8, 30.0, 96)
    assert view.c2w[0, 0, 3] > 2.7  # the camera sits on +x
    grid = torch.stack(torch.meshgrid(torch.linspace(-0.15, 0.15, 5), torch.linspace(-0.15, 0.15, 5), indexing="ij"), -1).reshape(-1, 2)
    face = lambda x0: torch.cat([torch.full((25, 1), x0), grid], 1)  # noqa: E731  points on a face facing +x
    normals = torch.tensor([[1.0, 0.0, 0.0]]).expand(50, 3)
    level_x = float(verts[:, 0].max())  # the near cube's front face, as the isosurface put it
    far_x = float(verts[verts[:, 0] < 0][:, 0].max())
    points = torch.cat([face(level_x), face(far_x)])
    rgb, weight = projected_colours(n, torch.from_numpy(verts), torch.from_numpy(faces), points, normals, view, BG)
    assert (weight[:25] > 0.5).all() and (weight[25:] == 0).all(), weight
    red = torch.sigmoid(torch.tensor([3.0, -3.0, -3.0]))  # the grid's colour
    assert torch.allclose(rgb[:25], red.expand(25, 3), atol=0.03), rgb[:25]


def reload(path):
    mesh = trimesh.load(path, force="mesh", process=False)
    material = mesh.visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    return mesh, np.asarray(image.convert("RGB"))


def test_mesh_files_reload_with_their_uvs_and_texture(tmp_path):
    rep = two_tone_cube_nerf()
    m = textured_mesh(rep, grid=48, texture_size=128)
    files = [*write_glb(m, tmp_path / "mesh.glb"), *write_obj(m, tmp_path / "obj"),
             *write_ply(m, tmp_path / "mesh.ply")]
    assert {p.name for p in files} == {"mesh.glb", "mesh.obj", "mesh.mtl", "material_0.png",
                                        "mesh.ply", "mesh_texture.png"}
    assert (tmp_path / "obj" / "material_0.png").is_file()  # the OBJ's texture sits in its folder
    for path in (tmp_path / "mesh.glb", tmp_path / "obj" / "mesh.obj", tmp_path / "mesh.ply"):
        mesh, texture = reload(path)
        assert len(mesh.vertices) == len(m.verts) and len(mesh.faces) == len(m.faces), path
        np.testing.assert_allclose(mesh.visual.uv, m.uv, atol=1e-6)
        assert texture.shape == (128, 128, 3)
        np.testing.assert_array_equal(texture, m.texture)
        # what a viewer loads still looks like the renders
        # the files are y-up (glTF's axis, issue 29); the renders are in the project's z-up frame
        f = fidelity(rep, from_file(mesh.vertices, "y"), mesh.faces, mesh.visual.uv, texture, ORBIT, BG)
        assert f["silhouette_iou"] >= 0.9 and f["psnr"] >= 20, (path, f)
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    raw = (tmp_path / "mesh.ply").read_bytes()
    assert b"comment TextureFile mesh_texture.png" in raw[:400]
    assert len(ply.vertices) == len(m.verts)
    assert not list(tmp_path.rglob(".*")), "temporary files left behind"


def test_decimation_keeps_to_the_face_budget():
    rep = two_tone_cube_nerf()
    full = extract_surface(rep, grid=64)[2]["faces"]
    verts, faces, info = extract_surface(rep, grid=64, max_faces=2000)
    assert full > 4000 and 1000 <= len(faces) <= 2000 and info["faces"] == len(faces)
    assert trimesh.Trimesh(verts, faces).is_watertight


def test_level_override_changes_the_surface():
    rep = two_tone_cube_nerf()  # density 0 outside, 30 inside, trilinear across one cell
    auto = extract_surface(rep, grid=48)[2]["level"]
    assert 1 < auto < 29
    low, high = (extract_surface(rep, grid=48, level=v) for v in (2.0, 28.0))
    assert low[2]["level"] == 2.0 and high[2]["level"] == 28.0
    assert np.abs(high[0]).max() < np.abs(low[0]).max() - 0.02  # a higher density level lies inside


def test_empty_geometry_fails_in_one_line_and_writes_no_file(tmp_path):
    with pytest.raises(SurfaceError, match="no surface"):
        extract_surface(two_tone_cube_nerf(empty=True))
    from threedgen import config as C

    cfg = C.load([REPO / "configs" / "nerf-sds.yaml"], ["prompt=a red cube"])
    job = Job(cfg, two_tone_cube_nerf(empty=True), tmp_path, ExportConfig(grid=32))
    from threedgen.registry import FORMATS

    for fmt in ("glb", "obj", "ply"):
        with pytest.raises(ExportError) as e:
            FORMATS[fmt](job)
        assert "no surface" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_normals_from_depth_match_the_rasterizer():
    rep = painted_sphere_mesh()
    cams = orbit(2, 30.0, 2.8, 30.0, 64)
    out = rep.render(cams, BG)
    derived = cams.normals_at(out.depth)
    inside = torch.nn.functional.max_pool2d((out.alpha < 0.999).float(), 5, 1, 2)[:, 0] == 0  # away from the outline
    cos = (derived * out.normal).sum(1)[inside]
    assert inside.sum() > 1000 and cos.median() > 0.99 and cos.min() > 0.8


def test_transforms_json_reprojects_a_surface_point_between_views(tmp_path):
    """Read back from the files only: a pixel of view A, lifted with its depth PNG and
    transform_matrix, lands in view B on a pixel whose own depth agrees."""
    rep = painted_sphere_mesh()
    cfg_camera = dict(elevations=(10.0,), azimuths=8)
    from threedgen.export.views import write_view_set

    cams = view_cameras(cfg_camera["elevations"], cfg_camera["azimuths"], 2.8, 30.0, 96)
    write_view_set(rep, cams, tmp_path, BG)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta == json.loads(json.dumps(transforms(cams, [f"{k:03d}" for k in range(8)])))
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1]])
    assert meta["camera_angle_x"] == pytest.approx(2 * np.arctan(meta["w"] / (2 * meta["fl_x"])))

    def load(k):
        frame = meta["frames"][k]
        depth = imageio.imread(tmp_path / frame["depth_file_path"]).astype(np.float64) * meta["depth_unit_scale_factor"]
        rgba = imageio.imread(tmp_path / frame["file_path"])
        return depth, rgba, np.array(frame["transform_matrix"])

    (dA, rgbaA, A), (dB, _, B) = load(0), load(1)
    assert rgbaA.shape == (96, 96, 4) and (rgbaA[..., 3] > 128).sum() == (dA > 0).sum()
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV pixel axes -> the OpenGL camera of transform_matrix
    interiorB = ~binary_dilation(dB == 0, iterations=2)  # away from B's outline
    errors = []
    for i, j in zip(*np.nonzero(dA > 0)):
        cam = flip @ (np.linalg.inv(K) @ np.array([j + 0.5, i + 0.5, 1.0]) * dA[i, j])
        world = A[:3, :3] @ cam + A[:3, 3]
        if np.dot(world - B[:3, 3], world) > 0:
            continue  # the sphere's far side from B: hidden there
        u, v, z = K @ (flip @ (B[:3, :3].T @ (world - B[:3, 3])))  # into view B's pixels
        bi, bj = int(v / z), int(u / z)
        if 0 <= bi < 96 and 0 <= bj < 96 and interiorB[bi, bj]:
            errors.append(abs(dB[bi, bj] - z))
    errors = np.array(errors)
    assert len(errors) > 500  # the two views share much of the surface
    assert np.median(errors) < 0.005 and np.quantile(errors, 0.95) < 0.02, np.quantile(errors, [0.5, 0.95, 1])


def test_export_cli_writes_every_format(tmp_path, capsys):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", config=str(REPO / "configs" / "gaussians-sds.yaml"))
    capsys.readouterr()
    code = main(["export", str(run), "--format", "glb", "obj", "ply", "splat", "mp4", "gif", "views",
                 "grid=40", "texture_size=64", "frames=5", "resolution=32", "azimuths=3",
                 "elevations=[0,45]", "shading=normal"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.split()
    out = run / "export"
    for name in ("mesh.glb", "mesh.json", "obj/mesh.obj", "mesh.ply", "splat.ply", "turntable-normal.mp4",
                 "turntable-normal.gif", "views/transforms.json", "views/images/005.png"):
        assert str(out / name) in printed and (out / name).is_file(), name
    assert len(json.loads((out / "views" / "transforms.json").read_text())["frames"]) == 6
    frames = imageio.mimread(out / "turntable-normal.gif")
    assert len(frames) == 5 and frames[0].shape[:2] == (32, 32)
    report = json.loads((out / "mesh.json").read_text())
    assert report["texture_size"] == 64 and report["bake"] == "48 views"
    assert set(report["fidelity"]) == {"silhouette_iou", "psnr", "interior_psnr"}


def test_export_cli_refuses_bad_options_in_one_line(tmp_path, capsys):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=1", config=str(REPO / "configs" / "gaussians-sds.yaml"))
    for args, message in [(["--format", "stl"], "unknown format 'stl'"),
                          (["--format", "mp4", "shading=glossy"], "shading"),
                          (["--format", "glb", "bake=paint"], "bake"),
                          (["--format", "glb", "texture_size=4"], "at least 8"),
                          (["--format", "glb", "textur_size=64"], "did you mean texture_size")]:
        capsys.readouterr()
        assert main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("mode", ["rgb", "normal", "depth"])
def test_turntable_shadings_differ(tmp_path, mode):
    from threedgen.export.views import shade

    rep = painted_sphere_mesh()
    out = rep.render(ORBIT[:2], BG)
    img = shade(out, ORBIT[:2], mode, BG)
    assert img.shape == (2, 3, 96, 96) and 0 <= float(img.min()) and float(img.max()) <= 1
    empty = out.alpha[:, 0] == 0
    assert torch.allclose(img.permute(0, 2, 3, 1)[empty], BG)  # background where empty
    if mode != "rgb":
        assert (img - out.rgb).abs().amax() > 0.3


def test_fit_writes_a_glb_by_default(tmp_path):
    """The README demo's run produces a .glb (and its turntable) without asking."""
    from tests.helpers import TINY, run_dirs

    assert main(["fit", "--config", str(REPO / "configs" / "gaussians-sds.yaml"), f"output_dir={tmp_path}",
                 *[t for t in TINY if not t.startswith("test.export")], "prompt=a red cube",
                 "trainer.max_steps=2"]) == 0
    (run,) = run_dirs(tmp_path)
    assert (run / "export" / "mesh.glb").is_file() and (run / "test" / "turntable.mp4").is_file()
    mesh, _ = reload(run / "export" / "mesh.glb")
    assert len(mesh.faces) > 100
