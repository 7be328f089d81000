"""The guidance suite's maths, each test written to fail if its method's formula is wrong.

Gradients are compared on the renders (rgb), i.e. after the prior's differentiable encoder, with
the same generator seed, so each pair of methods draws the same t and eps.
"""

import copy
import math
from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler

from threedgen.cameras import make_cameras
from threedgen.registry import GUIDANCE
from threedgen.guidance.base import ddim_hop, to_prior_input, weight
from threedgen.priors.cfg import guided_noise, perpendicular, predict_branches
from threedgen.registry import prior_from_pretrained
from threedgen.prompts import PromptProcessor


@pytest.fixture(scope="module")
def prior():
    return prior_from_pretrained()


@pytest.fixture(scope="module")
def cond(prior):
    cams = make_cameras([10.0, 20.0, 30.0], [0.0, 120.0, 240.0], 2.8, 30.0, 32)
    return PromptProcessor(prior, "a red cube").conditioning(cams)


@pytest.fixture(scope="module")
def rgb():
    torch.manual_seed(0)
    return torch.rand(3, 3, 32, 32) * 0.6 + 0.2


def bcast(v):
    """[B] -> [B, 1, 1, 1]."""
    return v.view(-1, 1, 1, 1)


def make(prior, name, **kw):
    cls = GUIDANCE[name]
    return cls(cls.Config(**kw), prior)


def grad_of(guidance, rgb, cond, seed=1, step=0):
    """(d loss / d rgb [B, 3, H, W], GuidanceOutput) for one call with generator ``seed``."""
    rgb = rgb.clone().requires_grad_(True)
    out = guidance(rgb, cond, step, generator=torch.Generator().manual_seed(seed))
    (g,) = torch.autograd.grad(out.loss, rgb)
    return g, out


def rgb_grad_of_target(prior, rgb, G):
    """The rgb gradient that injecting G [B, C, h, w] into x = encode(rgb) must produce."""
    rgb = rgb.clone().requires_grad_(True)
    x = to_prior_input(prior, rgb)
    (g,) = torch.autograd.grad((x * G).sum() / len(x), rgb)
    return g


def draws(prior, n, seed=1, t_min=0.02, t_max=0.98):
    """The (t, eps) an SDS-family method draws first from generator ``seed``."""
    g = torch.Generator().manual_seed(seed)
    T = prior.num_train_timesteps
    t = torch.randint(int(t_min * T), int(t_max * T), (n,), generator=g)
    x_shape = to_prior_input(prior, torch.zeros(n, 3, 32, 32)).shape
    return t, torch.randn(x_shape, generator=g)


def test_sds_injects_exactly_w_times_eps_hat_minus_eps(prior, cond, rgb):
    got, out = grad_of(make(prior, "sds", guidance_scale=5.0), rgb, cond)
    t, eps = draws(prior, len(rgb))
    assert torch.equal(out.timesteps, t)
    x = to_prior_input(prior, rgb)
    a = prior.alphas_cumprod[t]
    with torch.no_grad():
        x_t = bcast(a).sqrt() * x + bcast(1 - a).sqrt() * eps
        # The same batched call the guidance makes, so the comparison is exact up to rounding.
        e_c, e_u = predict_branches(prior, x_t, t, [(cond.text, cond.camera), (cond.null_text, cond.null_camera)])
    G = bcast(1 - a) * (e_u + 5.0 * (e_c - e_u) - eps)
    torch.testing.assert_close(got, rgb_grad_of_target(prior, rgb, G), rtol=1e-5, atol=1e-7)
    assert out.prior_evals == 2 * len(rgb)


def test_sds_is_omega_csds_plus_generative_term(prior, cond, rgb):
    """C-SDS paper: w(t)(eps_hat^w - eps) = w * w(t)(eps_c - eps_u) + w(t)(eps_u - eps)."""
    omega = 6.0
    sds, _ = grad_of(make(prior, "sds", guidance_scale=omega), rgb, cond)
    csds, _ = grad_of(make(prior, "csds", guidance_scale=1.0), rgb, cond)
    t, eps = draws(prior, len(rgb))
    a = prior.alphas_cumprod[t]
    with torch.no_grad():
        x_t = bcast(a).sqrt() * to_prior_input(prior, rgb) + bcast(1 - a).sqrt() * eps
        e_u = prior.predict_noise(x_t, t, cond.null_text, cond.null_camera)
    generative = rgb_grad_of_target(prior, rgb, bcast(weight("sds", a)) * (e_u - eps))
    torch.testing.assert_close(sds, omega * csds + generative, rtol=1e-4, atol=1e-6)
    assert csds.abs().sum() > 0.1 * sds.abs().sum()  # a real term, not a zero


def test_csds_negative_prompt_blends_the_unconditional_branch(prior, rgb):
    cams = make_cameras([10.0, 20.0, 30.0], [0.0, 120.0, 240.0], 2.8, 30.0, 32)
    cond = PromptProcessor(prior, "a red cube", negative_prompt="a blue sphere").conditioning(cams)
    beta = 0.3
    got, out = grad_of(make(prior, "csds", guidance_scale=2.0, negative_beta=beta), rgb, cond)
    t, eps = draws(prior, len(rgb))
    a = prior.alphas_cumprod[t]
    with torch.no_grad():
        x_t = bcast(a).sqrt() * to_prior_input(prior, rgb) + bcast(1 - a).sqrt() * eps
        e_c, e_u, e_n = predict_branches(prior, x_t, t, [(cond.text, cond.camera), (cond.null_text, cond.null_camera),
                                                         (cond.negative, cond.null_camera)])
    G = 2.0 * bcast(1 - a) * (e_c - (1 - beta) * e_u - beta * e_n)
    torch.testing.assert_close(got, rgb_grad_of_target(prior, rgb, G), rtol=1e-4, atol=1e-6)
    assert out.prior_evals == 3 * len(rgb)


def test_csds_normalize_gives_unit_norm_per_view(prior, cond, rgb):
    _, out = grad_of(make(prior, "csds", normalize=True), rgb, cond)
    assert out.grad_norm == pytest.approx(1.0, abs=1e-4)


def test_asd_with_zero_shift_is_omega_minus_one_csds(prior, cond, rgb):
    omega = 5.0
    asd, out = grad_of(make(prior, "asd", guidance_scale=omega, shift_ratio=0.0), rgb, cond)
    csds, _ = grad_of(make(prior, "csds", guidance_scale=1.0), rgb, cond)
    torch.testing.assert_close(asd, (omega - 1) * csds, rtol=1e-4, atol=1e-6)
    shifted, _ = grad_of(make(prior, "asd", guidance_scale=omega, shift_ratio=0.5), rgb, cond)
    assert (shifted - asd).abs().max() > 1e-3  # the shift is used
    assert out.prior_evals == 3 * len(rgb)


def test_tsm_with_gamma_zero_is_ism(prior, cond, rgb):
    ism, out = grad_of(make(prior, "ism"), rgb, cond)
    tsm, _ = grad_of(make(prior, "tsm", gamma=0.0), rgb, cond)
    torch.testing.assert_close(tsm, ism, rtol=1e-4, atol=1e-6)
    other, _ = grad_of(make(prior, "tsm", gamma=0.8), rgb, cond)
    assert (other - ism).abs().max() > 1e-4 * ism.abs().max()
    t = out.timesteps
    hops = ((t - 80).clamp_min(0) + 199) // 200  # inversion hops from 0 to s in strides of 200
    assert out.prior_evals == int(hops.clamp_max(5).sum()) + len(t) + 2 * len(t)


def test_ism_target_is_the_unconditional_eps_at_s(prior, cond, rgb):
    """ISM by hand: invert x to x_s with eps_u, hop to x_t, G = w(t)(eps_hat(x_t) - eps_u(x_s, s))."""
    got, out = grad_of(make(prior, "ism", interval=0.1, inversion_stride=0.25, guidance_scale=4.0), rgb, cond)
    a = prior.alphas_cumprod
    x = to_prior_input(prior, rgb).detach()
    G = []
    for i, t in enumerate(out.timesteps.tolist()):
        s = max(t - 100, 0)
        xi, cur = x[i:i + 1], max(s - 250 * 5, 0)
        null = (cond.null_text[i:i + 1], cond.null_camera[i:i + 1])
        with torch.no_grad():
            while cur < s:
                nxt = min(cur + 250, s)
                e = prior.predict_noise(xi, torch.tensor([cur]), *null)
                xi, cur = ddim_hop(xi, e, a[[cur]], a[[nxt]]), nxt
            e_s = prior.predict_noise(xi, torch.tensor([s]), *null)
            x_t = ddim_hop(xi, e_s, a[[s]], a[[t]])
            sub = type(cond)(cond.text[i:i + 1], cond.null_text[i:i + 1], cond.camera[i:i + 1], cond.null_camera[i:i + 1])
            e_hat = guided_noise(prior, x_t, torch.tensor([t]), sub, 4.0).eps
        G.append(((1 - a[t]) / a[t]).sqrt() * (e_hat - e_s))
    want = rgb_grad_of_target(prior, rgb, torch.cat(G))
    assert (got - want).abs().max() < 1e-4 * want.abs().max()  # batched vs per-view rounding


def test_ddim_hop_matches_diffusers_step_and_inverts_it(prior):
    torch.manual_seed(0)
    x, eps = torch.randn(2, 12, 16, 16), torch.randn(2, 12, 16, 16)
    a = prior.alphas_cumprod
    sched = DDIMScheduler.from_config(prior.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(50)  # stride 20
    step = sched.step(eps, 500, x).prev_sample
    mine = ddim_hop(x, eps, a[[500, 500]], a[[480, 480]])
    torch.testing.assert_close(mine, step, rtol=1e-5, atol=1e-5)
    back = ddim_hop(mine, eps, a[[480, 480]], a[[500, 500]])  # the same eps: exact inverse
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


def test_ddim_inversion_step_is_inverted_by_a_ddim_step_with_the_model(prior, cond):
    """Invert x_s -> x_t with eps(x_s, s), then step x_t -> x_s with eps(x_t, t): back to x_s
    within the method's O(t - s) error, and far closer than a wrong pairing."""
    torch.manual_seed(0)
    a = prior.alphas_cumprod
    x0 = to_prior_input(prior, torch.rand(3, 3, 32, 32)).detach()
    s, t = torch.full((3,), 300), torch.full((3,), 305)
    x_s = bcast(a[s]).sqrt() * x0 + bcast(1 - a[s]).sqrt() * torch.randn_like(x0)
    null = (cond.null_text, cond.null_camera)
    with torch.no_grad():
        x_t = ddim_hop(x_s, prior.predict_noise(x_s, s, *null), a[s], a[t])
        back = ddim_hop(x_t, prior.predict_noise(x_t, t, *null), a[t], a[s])
    err = (back - x_s).norm() / x_s.norm()
    assert err < 2e-3, err
    assert (x_t - x_s).norm() / x_s.norm() > 5 * err  # the hop moved; the round trip undid it


def _perturbed_lora(prior, name, **kw):
    """A VSD-family guidance whose LoRA and pose embedding are non-zero (seeded)."""
    g = make(prior, name, **kw)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in g.lora_unet.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return g


def test_esd_with_lambda_one_is_vsd(prior, cond, rgb):
    vsd = _perturbed_lora(prior, "vsd")
    esd = make(prior, "esd", camera_lambda=1.0)
    esd.lora_unet.load_state_dict(vsd.lora_unet.state_dict())
    g_vsd, out_v = grad_of(vsd, rgb, cond)
    g_esd, out_e = grad_of(esd, rgb, cond)
    torch.testing.assert_close(g_esd, g_vsd, rtol=1e-4, atol=1e-6)
    esd_half = make(prior, "esd", camera_lambda=0.5)
    esd_half.lora_unet.load_state_dict(vsd.lora_unet.state_dict())
    g_half, _ = grad_of(esd_half, rgb, cond)
    assert (g_half - g_vsd).abs().max() > 1e-4 * g_vsd.abs().max()  # the null-camera term is used
    assert out_e.prior_evals == out_v.prior_evals + len(rgb)


def test_vsd_gradient_is_pretrained_cfg_minus_lora_eps(prior, cond, rgb):
    vsd = _perturbed_lora(prior, "vsd", guidance_scale=7.5)
    got, out = grad_of(vsd, rgb, cond)
    t, eps = draws(prior, len(rgb))
    a = prior.alphas_cumprod[t]
    with torch.no_grad():
        x_t = bcast(a).sqrt() * to_prior_input(prior, rgb) + bcast(1 - a).sqrt() * eps
        e_hat = guided_noise(prior, x_t, t, cond, 7.5).eps
        e_phi = vsd.lora_unet(x_t, t, cond.text, class_labels=torch.cat([cond.camera, cond.pose], 1)).sample
        e_pre = prior.predict_noise(x_t, t, cond.text, cond.camera)
    assert (e_phi - e_pre).abs().max() > 1e-3  # the perturbed LoRA differs from the prior
    G = bcast(1 - a) * (e_hat - e_phi)
    # The loss also holds the LoRA's own diffusion loss, which does not reach rgb.
    torch.testing.assert_close(got, rgb_grad_of_target(prior, rgb, G), rtol=1e-4, atol=1e-6)
    assert "lora_loss" in out.logs


def test_fresh_lora_starts_as_the_prior(prior, cond, rgb):
    vsd = make(prior, "vsd")
    x_t = torch.randn(3, 12, 16, 16)
    t = torch.tensor([100, 500, 900])
    with torch.no_grad():
        e_phi = vsd.lora_eps(x_t, t, cond.text, vsd.labels(cond))
        e_pre = prior.predict_noise(x_t, t, cond.text, cond.camera)
    torch.testing.assert_close(e_phi, e_pre, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_lora_trains_its_loss_falls_on_a_fixed_batch(prior, cond, rgb, prediction):
    vsd = make(prior, "vsd", lora_lr=3e-3, lora_prediction=prediction)
    x = to_prior_input(prior, rgb).detach()
    losses, opt = [], vsd.optimizers()["lora"]
    for _ in range(25):
        loss = vsd.lora_loss(x, cond, torch.Generator().manual_seed(0))  # same t', noise, dropout
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    frozen = [p for n, p in vsd.lora_unet.named_parameters() if "lora" not in n and "pose" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_lora_camera_dropout_uses_the_null_camera(prior, cond):
    vsd = make(prior, "vsd")
    keep = torch.tensor([True, False, True])
    labels = vsd.labels(cond, keep)
    assert torch.equal(labels[1], torch.cat([cond.null_camera[1], torch.zeros(16)]))
    assert torch.equal(labels[0], torch.cat([cond.camera[0], cond.pose[0]]))


def test_perp_neg_removes_only_the_perpendicular_part(prior, cond):
    torch.manual_seed(0)
    x_t, t = torch.randn(3, 12, 16, 16), torch.tensor([300, 500, 700])
    plain = guided_noise(prior, x_t, t, cond, 5.0)
    # A negative equal to the positive prompt has no perpendicular part: nothing changes.
    same = copy.copy(cond)
    object.__setattr__(same, "perp_neg", ((cond.text, torch.ones(3)),))
    torch.testing.assert_close(guided_noise(prior, x_t, t, same, 5.0).eps, plain.eps, rtol=1e-4, atol=1e-5)
    other_text = PromptProcessor(prior, "a blue torus").text.expand(3, -1, -1)
    w = torch.tensor([0.0, 1.0, 2.0])
    neg = copy.copy(cond)
    object.__setattr__(neg, "perp_neg", ((other_text, w),))
    got = guided_noise(prior, x_t, t, neg, 5.0)
    e_n = prior.predict_noise(x_t, t, other_text, cond.camera)
    e_pos = plain.eps_c - plain.eps_u
    want = plain.eps_u + 5.0 * (e_pos - bcast(w) * perpendicular(e_n - plain.eps_u, e_pos))
    # atol 1e-4: a batched and a separate prior call differ by ~1e-6, which CFG scales by 5 and
    # more (CI once saw 1.5e-5 on 1 element of 9,216)
    torch.testing.assert_close(got.eps, want, rtol=1e-4, atol=1e-4)
    assert got.evals == 9
    torch.testing.assert_close(got.eps[0], plain.eps[0], rtol=1e-4, atol=1e-4)  # weight 0


def test_cfg_against_the_same_condition_runs_the_prior_once(prior, cond):
    torch.manual_seed(0)
    x_t, t = torch.randn(3, 12, 16, 16), torch.tensor([300, 500, 700])
    same = replace(cond, negative=cond.text)
    got = guided_noise(prior, x_t, t, same, 7.5, use_camera=False)
    assert got.evals == 3
    torch.testing.assert_close(got.eps, prior.predict_noise(x_t, t, cond.text, cond.null_camera), rtol=1e-4, atol=1e-5)
    # with the camera the branches differ: both run
    assert guided_noise(prior, x_t, t, same, 7.5).evals == 6


def test_perpendicular_is_orthogonal():
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    p = perpendicular(a, b)
    assert (p * b).flatten(1).sum(1).abs().max() < 1e-4
    torch.testing.assert_close(perpendicular(b * 3, b), torch.zeros_like(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_every_method_shares_the_signature_and_reports_cost(prior, cond, rgb, name):
    g, out = grad_of(make(prior, name), rgb, cond)
    assert g.shape == rgb.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    assert out.timesteps.shape == (len(rgb),) and out.prior_evals >= 2 * len(rgb)
    assert out.grad_norm > 0


def test_pixel_grad_clip_clamps_only_the_gradient():
    from threedgen.guidance.base import clip_pixel_grad

    rgb = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = clip_pixel_grad(rgb, 0.5)
    assert torch.equal(out, rgb)
    g = torch.linspace(-2, 2, out.numel()).view_as(out)
    out.backward(g)
    torch.testing.assert_close(rgb.grad, g.clamp(-0.5, 0.5))
    assert clip_pixel_grad(rgb, 0.0) is rgb  # 0 = off


def test_vsd_on_a_half_precision_prior(tmp_path):
    """A bfloat16 prior (what real recipes load on a GPU; bfloat16 also runs on the CPU): the LoRA
    copy stays in the prior's dtype but its trained parts are float32, a step is finite and the
    LoRA's loss falls."""
    from tests.tiny_priors import tiny_sd

    prior = prior_from_pretrained(tiny_sd(tmp_path / "sd"), dtype="bfloat16")
    cams = make_cameras([10.0, 20.0], [0.0, 180.0], 2.8, 30.0, 16)
    cond = PromptProcessor(prior, "a red cube").conditioning(cams)
    vsd = make(prior, "vsd", lora_lr=3e-3)
    trained = [p for p in vsd.lora_unet.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert vsd.lora_unet.dtype == torch.bfloat16
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g, out = grad_of(vsd, rgb, cond)
    assert torch.isfinite(g).all() and torch.isfinite(out.loss)
    x, opt, losses = to_prior_input(prior, rgb).detach(), vsd.optimizers()["lora"], []
    for _ in range(15):
        loss = vsd.lora_loss(x, cond, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses)) and losses[-1] < 0.9 * losses[0], losses
