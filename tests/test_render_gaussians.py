"""Gaussian splatting on CPU: the tiled torch rasterizer against the dense reference, basic
geometry, gsplat's DefaultStrategy on CPU, and one CUDA parity test against gsplat's kernels."""

import math

import pytest
import torch

from threedgen.cameras import make_cameras, orbit
from threedgen.render.gaussians import rasterize_dense, rasterize_cpu, render_gaussians
from threedgen.representations.gaussians import Gaussians

DIST, FOV = 2.7, 40.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(n=300, seed=0, sh_degree=None, n_cams=3, size=25, per_camera_colors=False):
    """Random Gaussians (mixed sizes, anisotropy and opacities) seen by several cameras, with an
    image size that is not a multiple of the tile size, plus: one behind camera 0, and a stack of
    four very opaque ones at the origin, the first exactly on every optical axis (a pixel centre,
    odd size), so that the 0.999 alpha clamp and the 1e-4 transmittance cut-off both happen."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3.0)
    opacities = torch.sigmoid(torch.rand(n, generator=g) * 10 - 2)
    cams = orbit(n_cams, 20.0, DIST, FOV, size)
    means[0] = cams.c2w[0, :3, 3] * 1.2  # behind camera 0
    means[1:5] = torch.arange(4.0)[:, None] * torch.tensor([0.011, 0.007, 0.013])
    scales[1:5], opacities[1:5] = 0.2, 0.9999
    C = n_cams if per_camera_colors else None
    if sh_degree is None:
        shape = (n, 3) if C is None else (C, n, 3)
        colors = torch.rand(*shape, generator=g)
    else:
        shape = (n, (sh_degree + 1) ** 2, 3) if C is None else (C, n, (sh_degree + 1) ** 2, 3)
        colors = torch.randn(*shape, generator=g) * 0.3
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    bg = torch.rand(n_cams, 3, generator=g)
    return params, cams, bg


def _run(fn, params, cams, bg, **kw):
    means, quats, scales, opacities, colors = params
    return fn(means, quats, scales, opacities, colors, cams.viewmats(), cams.intrinsics(),
              cams.width, cams.height, backgrounds=bg, **kw)


def _loss_grads(render, alphas, meta, params, seed=1):
    g = torch.Generator().manual_seed(seed)
    w_r = torch.randn(render.shape, generator=g).to(render.device)
    w_a = torch.randn(alphas.shape, generator=g).to(render.device)
    loss = (render * w_r).sum() + (alphas * w_a).sum()
    inputs = params + [meta["means2d"]]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]


@pytest.mark.parametrize("tile_size,sh_degree,render_mode,per_camera_colors", [
    (8, None, "RGB+ED", False),
    (16, None, "RGB+D", False),
    (4, 1, "RGB+ED", False),
    (8, None, "RGB", True),
    (8, None, "ED", False),
])
def test_tiled_matches_dense(tile_size, sh_degree, render_mode, per_camera_colors):
    params, cams, bg = _scene(sh_degree=sh_degree, per_camera_colors=per_camera_colors)
    if render_mode in ("D", "ED"):
        bg = None
    kw = dict(sh_degree=sh_degree, render_mode=render_mode, tile_size=tile_size)
    rt, at, mt = _run(rasterize_cpu, params, cams, bg, **kw)
    rd, ad, md = _run(rasterize_dense, params, cams, bg, **kw)
    C, H, W = len(cams), cams.height, cams.width
    depth = 1 if render_mode != "RGB" else 0
    channels = (0 if render_mode in ("D", "ED") else 3) + depth
    assert rt.shape == rd.shape == (C, H, W, channels)
    assert at.shape == (C, H, W, 1)
    assert 0.2 < at.mean() < 0.95  # a scene with both covered and empty pixels
    assert at.max() > 0.998  # and opaque ones
    assert torch.equal(mt["radii"], md["radii"]) and mt["radii"].shape == (C, 300, 2)
    torch.testing.assert_close(rt, rd, atol=3e-5, rtol=1e-4)
    torch.testing.assert_close(at, ad, atol=3e-5, rtol=1e-4)
    # Gradients agree to ~1e-5 of their scale; the slack covers the odd pixel where float
    # rounding flips a hard threshold (alpha >= 1/255, transmittance > 1e-4) between the two.
    names = ["means", "quats", "scales", "opacities", "colors", "means2d"]
    grads_t, grads_d = _loss_grads(rt, at, mt, params), _loss_grads(rd, ad, md, params)
    for name, gt, gd in zip(names, grads_t, grads_d):
        scale = gd.abs().max()
        assert scale > 0 or (name == "colors" and render_mode == "ED"), name
        assert (gt - gd).abs().max() <= 5e-4 * scale, name


def test_single_gaussian_projects_to_centre_with_expected_falloff():
    size, s, o = 32, 0.05, 0.8
    cams = make_cameras(10.0, 30.0, DIST, FOV, size)
    means = torch.zeros(1, 3)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), s)
    opac = torch.tensor([o])
    colors = torch.tensor([[1.0, 0.5, 0.25]])
    render, alphas, meta = rasterize_cpu(means, quats, scales, opac, colors, cams.viewmats(),
                                           cams.intrinsics(), size, size, tile_size=8)
    torch.testing.assert_close(meta["means2d"][0, 0], torch.tensor([size / 2, size / 2]))
    torch.testing.assert_close(meta["depths"][0, 0], torch.tensor(DIST))
    # Isotropic at the optical axis: the 2D covariance is (f s / z)^2 I, plus eps2d = 0.3.
    var = (float(cams.focal[0]) * s / DIST) ** 2 + 0.3
    c = torch.arange(size) + 0.5 - size / 2
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    expected = o * torch.exp(-0.5 * r2 / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    torch.testing.assert_close(alphas[0, ..., 0], expected, atol=1e-5, rtol=1e-4)
    # Colour is the Gaussian's (no background given), depth is its depth wherever it shows.
    shown = alphas[0, ..., 0] > 0
    torch.testing.assert_close(render[0][shown][:, :3] / alphas[0][shown],
                               colors.expand(int(shown.sum()), 3))
    torch.testing.assert_close(render[0][shown][:, 3], torch.full((int(shown.sum()),), DIST))
    assert not shown[0, 0] and shown[size // 2, size // 2]


def test_gaussian_behind_camera_contributes_nothing():
    cams = make_cameras(0.0, 0.0, DIST, FOV, 16)
    eye = cams.c2w[0, :3, 3]
    means = torch.stack([torch.zeros(3), eye * 1.5])  # the second one is behind the camera
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(2, 1)
    scales = torch.full((2, 3), 0.3)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    bg = torch.tensor([[0.0, 0.0, 1.0]])
    args = (quats, scales, torch.tensor([0.9, 0.9]), colors, cams.viewmats(), cams.intrinsics(),
            16, 16)
    both = rasterize_cpu(means, *args, backgrounds=bg)
    front = rasterize_cpu(means[:1], quats[:1], scales[:1], torch.tensor([0.9]), colors[:1],
                            *args[4:], backgrounds=bg)
    assert both[2]["radii"][0, 1].tolist() == [0, 0] and (both[2]["radii"][0, 0] > 0).all()
    torch.testing.assert_close(both[0], front[0])
    torch.testing.assert_close(both[1], front[1])
    # Only the one behind: nothing rendered, pure background, and backward still runs.
    means_b = means[1:].clone().requires_grad_(True)
    render, alphas, _ = rasterize_cpu(means_b, quats[1:], scales[1:], torch.tensor([0.9]),
                                        colors[1:], *args[4:], backgrounds=bg)
    assert alphas.abs().max() == 0
    torch.testing.assert_close(render[..., :3], bg.view(1, 1, 1, 3).expand(1, 16, 16, 3))
    render.sum().backward()
    assert means_b.grad is not None and means_b.grad.abs().max() == 0


def test_background_shows_where_alpha_is_zero():
    g = Gaussians.from_sphere(200, radius=0.4, color=(0.9, 0.2, 0.1), seed=3)
    cams = orbit(2, 15.0, DIST, FOV, 32)
    bg = torch.tensor([0.1, 0.7, 0.3])
    out = g.render(cams, bg, backend="cpu")
    assert out.rgb.shape == (2, 3, 32, 32) and out.alpha.shape == out.depth.shape == (2, 1, 32, 32)
    assert out.normal is None
    empty = out.alpha[:, 0] == 0
    assert empty.any() and (~empty).any()
    torch.testing.assert_close(out.rgb.permute(0, 2, 3, 1)[empty], bg.expand(int(empty.sum()), 3))
    assert (out.depth[:, 0][empty] == 0).all()
    covered = out.alpha[:, 0] > 0.5
    depth = out.depth[:, 0][covered]
    assert ((depth > DIST - 0.6) & (depth < DIST + 0.6)).all()
    # Same through the dense backend.
    dense = g.render(cams, bg, backend="dense")
    torch.testing.assert_close(out.rgb, dense.rgb, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        g.render(cams, bg, backend="nope")


def test_means2d_grad_and_default_strategy_densifies_on_cpu():
    from gsplat.strategy import DefaultStrategy

    g = Gaussians.from_random_ball(300, radius=0.5, seed=0)
    with torch.no_grad():
        g.params["scales"][:150] -= 3.0  # small ones get duplicated, large ones split
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in g.params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-9,
                               grow_scale3d=0.01, prune_opa=0.0)
    strategy.check_sanity(g.params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    cams = orbit(2, 15.0, DIST, FOV, 24)
    target = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    n_before = len(g)
    out = g.render(cams, torch.ones(3), backend="cpu")
    info = out.info.strategy_info()
    for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"):
        assert key in info
    assert info["radii"].shape == (2, n_before, 2) and info["gaussian_ids"] is None
    strategy.step_pre_backward(g.params, optimizers, state, 1, info)
    ((out.rgb - target) ** 2).mean().backward()
    grad2d = info["means2d"].grad
    assert grad2d is not None and grad2d.shape == (2, n_before, 2) and grad2d.abs().max() > 0
    for opt in optimizers.values():
        opt.step()
    strategy.step_post_backward(g.params, optimizers, state, 1, info)
    assert len(g) > n_before
    assert all(p.shape[0] == len(g) for p in g.params.values())
    # The edited parameters still render and train.
    out = g.render(cams, torch.ones(3), backend="cpu")
    out.rgb.mean().backward()
    assert g.params["means"].grad.shape == (len(g), 3)


def test_constructors_are_deterministic_and_shaped():
    a, b = Gaussians.from_random_ball(50, 0.5, seed=7), Gaussians.from_random_ball(50, 0.5, seed=7)
    c = Gaussians.from_random_ball(50, 0.5, seed=8)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert not torch.equal(a.params["means"], c.params["means"])
    s = Gaussians.from_sphere(40, radius=0.3, color=(1.0, 0.0, 0.0), seed=1)
    torch.testing.assert_close(s.means.norm(dim=-1), torch.full((40,), 0.3))
    assert torch.allclose(s.colors[:, 0], torch.full((40,), 1.0), atol=1e-3)
    p = Gaussians.from_points(torch.rand(10, 3), torch.rand(10, 3), sh_degree=1)
    assert p.params["colors"].shape == (10, 4, 3) and p.sh_degree == 1
    out = p.render(orbit(1, 0.0, DIST, FOV, 16), torch.zeros(3))
    assert out.rgb.shape == (1, 3, 16, 16)
    assert {k for k in a.params} == {"means", "scales", "quats", "opacities", "colors"}
    assert math.isclose(float(a.opacities.detach().mean()), 0.1, rel_tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_cuda_matches_cpu():
    """gsplat's CUDA kernels against the CPU rasterizer (run on CPU copies of the same scene)."""
    from gsplat import rasterization

    params, cams, bg = _scene(n=500, size=32)
    cpu = [p.detach().clone().requires_grad_(True) for p in params]
    params = [p.detach().cuda().requires_grad_(True) for p in params]
    cams_gpu, bg_gpu = cams.to("cuda"), bg.cuda()
    means, quats, scales, opacities, colors = params

    def both(render_mode):
        g = rasterization(means, quats, scales, opacities, colors, cams_gpu.viewmats(),
                          cams_gpu.intrinsics(), 32, 32, backgrounds=bg_gpu, packed=False,
                          render_mode=render_mode)
        t = _run(rasterize_cpu, cpu, cams, bg, render_mode=render_mode, tile_size=8)
        return g, t

    (rg, ag, mg), (rt, at, mt) = both("RGB+ED")
    rg, ag, radii_g = rg.cpu(), ag.cpu(), mg["radii"].cpu()
    # Radii may differ where float rounding meets a ceil(); allow a handful.
    assert (radii_g != mt["radii"]).any(dim=-1).float().mean() < 0.005
    torch.testing.assert_close(rt[..., :3], rg[..., :3], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(at, ag, atol=1e-4, rtol=1e-3)
    # Expected depth divides by alpha: compare it where both are clearly covered.
    covered = (at[..., 0] > 0.05) & (ag[..., 0] > 0.05)
    torch.testing.assert_close(rt[..., 3][covered], rg[..., 3][covered], atol=1e-3, rtol=1e-3)
    # Gradients through colour, alpha and accumulated depth (no 1/alpha amplification).
    (rg, ag, mg), (rt, at, mt) = both("RGB+D")
    grads_g = [g.cpu() for g in _loss_grads(rg, ag, mg, params)]
    for gt, gg in zip(_loss_grads(rt, at, mt, cpu), grads_g):
        assert (gt - gg).abs().max() <= 2e-3 * gg.abs().max().clamp_min(1e-6)
    # render_gaussians picks gsplat on CUDA.
    out = render_gaussians(means, quats, scales, opacities, colors, cams_gpu, bg_gpu[0])
    assert out.rgb.is_cuda and out.info.radii.shape == (3, 500, 2)
    assert out.rgb.shape == (3, 3, 32, 32) and out.depth.shape == (3, 1, 32, 32)


def test_tiled_rasterizer_gradcheck_float64():
    """The hand-written backward of the tiled compositor against finite differences, on three
    Gaussians overlapping in a 6x6 image (tiles of 4: the image is not a multiple of the tile)."""
    g = torch.Generator().manual_seed(0)
    cams = orbit(1, 20.0, DIST, FOV, 6)
    viewmats, Ks = cams.viewmats().double(), cams.intrinsics().double()
    n = 3
    params = [((torch.rand(n, 3, generator=g) - 0.5) * 0.3), torch.randn(n, 4, generator=g),
              torch.rand(n, 3, generator=g) * 0.2 + 0.5, torch.rand(n, generator=g) * 0.5 + 0.3,
              torch.rand(n, 3, generator=g)]
    params = [p.double().requires_grad_(True) for p in params]
    bg = torch.rand(1, 3, generator=g).double()

    def render(means, quats, scales, opacities, colors):
        rgb, alpha, _ = rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, 6, 6,
                                        backgrounds=bg, tile_size=4)
        return rgb, alpha

    rgb, alpha = render(*params)
    assert alpha.min() > 1 / 255  # every pixel is covered: the test exercises compositing everywhere
    assert torch.autograd.gradcheck(render, params, eps=1e-6, atol=1e-5)


def test_point_cloud_initialisation(tmp_path):
    import numpy as np
    import trimesh

    xyz = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
    colors = np.tile([[255, 0, 0, 255]], (50, 1)).astype(np.uint8)
    trimesh.PointCloud(xyz, colors=colors).export(tmp_path / "cloud.ply")
    np.save(tmp_path / "cloud.npy", xyz)
    cfg = Gaussians.Config(init="points", init_points=str(tmp_path / "cloud.ply"), init_opacity=0.3)
    g = Gaussians.from_config(cfg)
    torch.testing.assert_close(g.means, torch.tensor(xyz, dtype=torch.float32))
    torch.testing.assert_close(g.colors[:, 0], torch.full((50,), 1.0), atol=2e-3, rtol=0)
    torch.testing.assert_close(g.opacities, torch.full((50,), 0.3))
    g = Gaussians.from_config(Gaussians.Config(init="points", init_points=str(tmp_path / "cloud.npy")))
    assert len(g) == 50 and torch.allclose(g.colors, torch.full((50, 3), 0.5), atol=1e-3)
    with pytest.raises(ValueError, match="no such file"):
        Gaussians.Config(init="points", init_points=str(tmp_path / "missing.ply"))
    with pytest.raises(ValueError, match="goes with init: points"):
        Gaussians.Config(init_points=str(tmp_path / "cloud.npy"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="cannot read"):
        Gaussians.from_config(Gaussians.Config(init="points", init_points=str(tmp_path / "bad.npy")))


def test_densify_schedule_opacity_reset_and_resumable_statistics():
    """Densification runs from densify_from to densify_until, opacity resets clamp every opacity
    at their steps, and the strategy's statistics round-trip through the state dict."""
    cfg = Gaussians.Config(n=200, densify=True, densify_from=1, densify_every=2, densify_until=6,
                           grow_grad2d=1e-9, opacity_reset_every=4, opacity_reset_value=0.05)
    g = Gaussians.from_config(cfg)
    cams, bg = orbit(2, 20.0, DIST, FOV, 24), torch.ones(3)
    sizes = []
    for step in range(8):
        opts = g.optimizers()
        out = g.render(cams, bg)
        out.info.means2d.retain_grad()
        (out.rgb.mean() + out.alpha.mean()).backward()
        for o in opts.values():
            o.step()
            o.zero_grad()
        g.post_step(step, out, opts)
        sizes.append(len(g))
        if step == 4:
            assert g.opacities.max() <= 0.05 + 1e-6
            state = g.state_dict()
            assert state["_extra_state"]["grad2d"].shape == (len(g),)
            h = Gaussians.from_config(cfg)
            h.load_weights(state)
            torch.testing.assert_close(h.get_extra_state()["grad2d"], g.get_extra_state()["grad2d"])
    assert sizes[0] == 200 and sizes[2] > 200  # grew at step 2 (every Gaussian passes the threshold)
    assert sizes[-1] == sizes[5]  # nothing changes after densify_until


def test_projection_kernel_matches_the_torch_projection_with_gradients():
    """The numba EWA projection (``_Project``) against the torch reference's (``_project``,
    gsplat's torch helpers), values and float64 gradients, on a scene with Gaussians behind a
    camera, beyond the far edge of the view (gsplat's 1.3x field-of-view clamp of the
    Jacobian) and of every size; plus gradcheck of the kernel's backward."""
    from threedgen.render.gaussians import _project, _Project

    params, cams, _ = _scene(n=300)
    means, quats, scales, opacities, _ = [p.detach().double() for p in params]
    # Big Gaussians centred outside the view: their boxes still reach the image, so they stay
    # visible with the Jacobian clamped.
    means[5:25] = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    means[5:25] *= 3.0 / means[5:25].norm(dim=-1, keepdim=True)
    scales[5:25] = 0.6
    viewmats, Ks = cams.viewmats().double(), cams.intrinsics().double()
    args = (viewmats, Ks, cams.width, cams.height, 0.01, 1e10, 0.3)
    p_ref = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
    p_new = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
    radii_r, m2_r, d_r, con_r, _ = _project(*p_ref, opacities, *args)
    radii_n, m2_n, d_n, con_n = _Project.apply(*p_new, opacities, *args)
    assert torch.equal(radii_r, radii_n)
    visible = (radii_n > 0).all(dim=-1)
    assert 0.3 < visible.float().mean() < 1.0
    # Some visible pairs have the Jacobian clamped: x/z beyond 1.3x the half field of view.
    means_c = torch.einsum("cij,nj->cni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]
    u = means_c[..., 0] / means_c[..., 2]
    lim = (cams.width / 2 + 0.15 * cams.width) / Ks[:, 0, 0]
    assert (visible & (u.abs() > lim[:, None])).sum() >= 3
    for new, ref in ((m2_n, m2_r), (d_n, d_r), (con_n, con_r)):
        torch.testing.assert_close(new, ref, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) * (visible[..., None]
               if t.dim() == 3 else visible) for t in (m2_r, d_r, con_r)]
    loss = lambda outs: sum((w * o).sum() for w, o in zip(weights, outs))
    g_ref = torch.autograd.grad(loss((m2_r, d_r, con_r)), p_ref)
    g_new = torch.autograd.grad(loss((m2_n, d_n, con_n)), p_new)
    for a, b in zip(g_new, g_ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))
    # Gradcheck on visible pairs only: culled ones carry stand-in values and, by design, no
    # gradient (no render uses them).
    small = [t[:8].clone().requires_grad_(True) for t in (means, quats, scales)]

    def visible_outputs(*p):
        radii, *outs = _Project.apply(*p, opacities[:8], *args)
        vis = (radii > 0).all(dim=-1)
        return tuple(o[vis] for o in outs)

    assert visible_outputs(*small)[0].shape[0] >= 12
    assert torch.autograd.gradcheck(visible_outputs, small)


# --- the fit's pixel footprint at larger sizes (issue 29) ----------------------------------------

def test_tiled_matches_dense_with_a_wide_dilation():
    """The footprint dilation (eps2d far above gsplat's 0.3) reaches both paths alike."""
    params, cams, bg = _scene(n=200)
    rt, at, mt = _run(rasterize_cpu, params, cams, bg, eps2d=19.2, tile_size=8)
    rd, ad, md = _run(rasterize_dense, params, cams, bg, eps2d=19.2)
    assert torch.equal(mt["radii"], md["radii"])
    torch.testing.assert_close(rt, rd, atol=3e-5, rtol=1e-4)
    torch.testing.assert_close(at, ad, atol=3e-5, rtol=1e-4)
    plain = _run(rasterize_cpu, params, cams, bg, tile_size=8)[1]
    assert (at - plain).abs().max() > 0.1  # it widens the footprints


def test_larger_renders_sample_the_image_of_the_fit():
    """Gaussians fitted at 32^2 rendered at 9 x 32 = 288^2: every 9th pixel (a 32^2 pixel's
    centre) takes the 32^2 render's value, so the larger image holds no hole the fit did not
    show; at gsplat's plain 0.3 px^2 the same Gaussians fall apart into dots (porous)."""
    g = Gaussians.from_random_ball(1500, radius=0.5, seed=3)
    with torch.no_grad():
        g.params["scales"].sub_(1.2)  # far smaller than a 32^2 pixel (0.09 at the object)
        g.params["opacities"].fill_(3.0)
    cams = orbit(2, 20.0, DIST, FOV, 32)
    g.fit_resolution = 32
    fit = g.render(cams, torch.ones(3)).alpha
    big = g.render(cams.resized(288), torch.ones(3)).alpha
    torch.testing.assert_close(big[..., 4::9, 4::9], fit, atol=2e-5, rtol=1e-4)
    inside = fit > 0.5
    g.fit_resolution = None
    plain = g.render(cams.resized(288), torch.ones(3)).alpha[..., 4::9, 4::9]
    assert (big[..., 4::9, 4::9][inside] < 0.5).float().mean() == 0
    assert (plain[inside] < 0.5).float().mean() > 0.2  # what the fix removes


def test_the_field_follows_the_renders_above_the_fit_size():
    """Renders above the fit's size keep its footprint; with the fit's pixel width known
    (``fit_pixel``), the field carries the same footprint in 3D, so the isosurface (the mesh
    export) matches those renders' silhouettes better than the undilated mixture's does."""
    from threedgen.representations.isosurface import extract_isosurface

    g = Gaussians.from_random_ball(1500, radius=0.5, seed=3).eval()
    with torch.no_grad():
        g.params["scales"].sub_(1.2)  # far smaller than a 32^2 pixel
        g.params["opacities"].fill_(3.0)
    g.fit_resolution = 32
    undilated = extract_isosurface(g, resolution=48)[2]["silhouette_iou"]  # against 64^2 renders
    g.fit_pixel = 2 * DIST * math.tan(math.radians(FOV) / 2) / 32
    filtered = extract_isosurface(g, resolution=48)[2]["silhouette_iou"]
    assert filtered > undilated + 0.01 and filtered > 0.975, (undilated, filtered)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_cuda_matches_cpu_with_the_fit_footprint():
    """render_gaussians passes the footprint dilation to gsplat's kernels as to the CPU path."""
    params, cams, bg = _scene(n=500, size=32)
    args = [p.detach() for p in params[:4]] + [params[4].detach()]
    big = cams.resized(96)
    cpu = render_gaussians(*args, big, bg[0], backend="cpu", eps2d=2.7)
    gpu = render_gaussians(*[a.cuda() for a in args], big.to("cuda"), bg[0].cuda(), eps2d=2.7)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, atol=1e-4, rtol=1e-3)
