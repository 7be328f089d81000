"""Export: the 3DGS splat .ply (exact round trip, the layout viewers read) and the CLI."""

import numpy as np
import pytest
import torch
import trimesh

from tests.helpers import REPO
from tests.test_fit import fit
from threedgen.cli import main
from threedgen.export.splat import SplatError, read_splat_ply, write_splat_ply
from threedgen.representations.gaussians import SH_C0, Gaussians


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_splat_ply_reloads_bit_for_bit(tmp_path, sh_degree):
    g = Gaussians.from_random_ball(300, seed=1, sh_degree=sh_degree)
    with torch.no_grad():
        for p in g.params.values():
            p.add_(0.1 * torch.randn_like(p))
    write_splat_ply(g, tmp_path / "s.ply")
    back = read_splat_ply(tmp_path / "s.ply")
    assert back.sh_degree == sh_degree
    for k, v in g.params.items():
        assert torch.equal(back.params[k], v), k


def test_splat_ply_has_the_3dgs_layout(tmp_path):
    g = Gaussians.from_random_ball(10, seed=2, sh_degree=1)
    write_splat_ply(g, tmp_path / "s.ply", up="z")  # the project's frame (the default turn: test_assets.py)
    raw = (tmp_path / "s.ply").read_bytes()
    header = raw[:raw.index(b"end_header")].decode().splitlines()
    props = [line.split()[2] for line in header if line.startswith("property")]
    assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                             "rot_0", "rot_1", "rot_2", "rot_3"])
    table = np.frombuffer(raw[raw.index(b"end_header\n") + 11:], dtype="<f4").reshape(10, len(props))
    np.testing.assert_allclose(table[:, 0:3], g.params["means"].detach().numpy())
    np.testing.assert_allclose(table[:, props.index("opacity")], g.params["opacities"].detach().numpy())  # logits
    np.testing.assert_allclose(table[:, props.index("scale_0")], g.params["scales"][:, 0].detach().numpy())  # logs
    # f_rest is channel-major: R's three degree-1 coefficients first
    np.testing.assert_allclose(table[:, 9:12], g.params["colors"][:, 1:, 0].detach().numpy())
    assert len(trimesh.load(tmp_path / "s.ply").vertices) == 10  # an ordinary PLY reader opens it


def test_foreign_degree0_file_reloads_through_f_dc(tmp_path):
    g = Gaussians.from_random_ball(20, seed=3)
    write_splat_ply(g, tmp_path / "s.ply", up="z")  # the project's frame (the default turn: test_assets.py)
    raw = (tmp_path / "s.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    n_props = header.count(b"property")
    table = np.frombuffer(body, dtype="<f4").reshape(20, n_props)[:, :n_props - 3]  # drop td_color_*
    header = header.replace(b"property float td_color_0\nproperty float td_color_1\nproperty float td_color_2\n", b"")
    (tmp_path / "f.ply").write_bytes(header + b"end_header\n" + table.astype("<f4").tobytes())
    back = read_splat_ply(tmp_path / "f.ply")
    torch.testing.assert_close(back.colors, g.colors, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(0.5 + SH_C0 * torch.from_numpy(table[:, 6:9].copy()), g.colors, rtol=1e-5, atol=1e-6)


def test_not_a_splat_file(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.ply")
    with pytest.raises(SplatError):
        read_splat_ply(tmp_path / "box.ply")


def test_export_cli_writes_the_splat_and_refuses_other_runs(tmp_path, capsys):
    run = fit(tmp_path, "prompt=a red cube", "trainer.max_steps=2", config=str(REPO / "configs" / "gaussians-sds.yaml"))
    capsys.readouterr()
    assert main(["export", str(run), "--format", "splat"]) == 0
    path = run / "export" / "splat.ply"
    assert capsys.readouterr().out.strip() == str(path)
    from threedgen.runs import load_representation

    _, rep = load_representation(run)
    back = read_splat_ply(path)
    assert all(torch.equal(back.params[k], v) for k, v in rep.params.items())
    nerf = fit(tmp_path / "n", "prompt=a red cube", "trainer.max_steps=1")
    capsys.readouterr()
    assert main(["export", str(nerf), "--format", "splat"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nerf run has no Gaussians" in err
    assert not (nerf / "export" / "splat.ply").exists()


def test_videos_written_at_once_to_one_path_stay_whole(tmp_path):
    """Two exports of one run may write the same video at once: each writer has its own
    temporary file (a shared fixed name made one writer's rename fail or leave a torn file)."""
    from concurrent.futures import ThreadPoolExecutor

    import imageio.v3 as iio

    from threedgen.export.views import write_video

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    for name in ("turntable.mp4", "turntable.gif"):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda frames: write_video(tmp_path / name, frames), videos))
        assert iio.imread(tmp_path / name).shape == (24, 32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turntable.gif", "turntable.mp4"]
