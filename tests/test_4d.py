"""Text-to-4D: the moving world, dynamic Gaussians, the motion metrics, the 4D system and its
outputs. Motion recovery with the shipped video prior is in tests/test_4d_sweep.py."""

import json
import math
from dataclasses import replace

import pytest
import torch

from tests.helpers import REPO, TINY, run_dirs
from threedgen.cameras import make_cameras
from threedgen.cli import main
from threedgen.world.metrics import motion_amount, motion_correlation, motion_track
from threedgen import world
from threedgen.representations.dynamic_gaussians import DynamicGaussians
from threedgen.prompts import image_prompt_for

CONFIG = str(REPO / "configs" / "4d-gaussians-sds.yaml")


# --- the moving world ---------------------------------------------------------------------------
def test_motion_poses_follow_their_definitions():
    t = torch.tensor([0.0, 0.25, 0.5, 0.75])
    bounce = world.motion_pose("bouncing", "sphere", t)
    assert torch.allclose(bounce[:, 2], torch.tensor([-0.25, 0.25 * 2 ** 0.5 - 0.25, 0.25, 0.25 * 2 ** 0.5 - 0.25]), atol=1e-6)
    assert torch.allclose(world.motion_pose("spinning", "cube", t)[:, 3], 40 * t)
    assert torch.allclose(world.motion_pose("sliding", "cone", t)[:, 1], torch.tensor([0.0, 0.3, 0.0, -0.3]), atol=1e-6)
    assert torch.allclose(world.motion_pose("pulsing", "torus", t)[:, 4], torch.tensor([1.0, 1.2, 1.0, 0.8]), atol=1e-6)
    still = world.motion_pose(None, "mug", t)
    assert torch.equal(still, torch.tensor([[0, 0, 0, 0, 1.0]] * 4))
    with pytest.raises(ValueError, match="looks still"):
        world.motion_pose("spinning", "sphere", t)
    with pytest.raises(ValueError, match="unknown motion"):
        world.motion_pose("dancing", "cube", t)


def test_every_frame_of_a_spin_looks_nearer_the_forward_turn():
    """A spin turns less than half the shape's symmetry a clip, so each frame of a clip from phase 0
    is nearer the still shape turned a little forwards than a little backwards: the local pull
    that video SDS follows turns a 4D object the right way (a full symmetry turn a clip, as the
    world had before, made the late frames look like a backward turn)."""
    cams = make_cameras([20.0] * 3, [10.0] * 3, 2.8, 30.0, 32)
    for shape in world.SPIN_DEGREES:
        for t in (1 / 8, 4 / 8, 7 / 8):
            angle = float(world.motion_pose("spinning", shape, torch.tensor([t]))[0, 3])
            poses = torch.tensor([[0, 0, 0, angle, 1.0], [0, 0, 0, 0.0, 1.0], [0, 0, 0, 0.0, 1.0]])
            poses[1:, 3] = torch.tensor([5.0, -5.0])  # turned a little forwards, a little backwards
            r = world.render([shape] * 3, ["red"] * 3, cams, poses=poses).rgb
            forwards, backwards = ((r[0] - r[k]).norm() for k in (1, 2))
            assert forwards < backwards, (shape, t)


def test_posed_renders_move_the_object():
    cams = make_cameras([0.0] * 3, [0.0] * 3, 2.8, 30.0, 32)
    t = torch.tensor([0.0, 0.5, 0.5])
    poses = torch.stack([world.motion_pose("bouncing", "cube", t[:1])[0], world.motion_pose("bouncing", "cube", t[1:2])[0],
                         world.motion_pose("pulsing", "cube", torch.tensor([0.25]))[0]])
    r = world.render(["cube"] * 3, ["red"] * 3, cams, poses=poses)
    rows = torch.arange(32.0)[:, None]
    centre_row = [(r.alpha[k, 0] * rows).sum() / r.alpha[k, 0].sum() for k in range(3)]
    assert centre_row[1] < centre_row[0] - 4  # up at the top of the bounce (image rows grow downwards)
    assert r.alpha[2].sum() > r.alpha[0].sum() * 1.2  # pulsed to 1.2x
    rest = world.render(["cube"], ["red"], cams[:1])
    at_rest = world.render(["cube"], ["red"], cams[:1], poses=world.motion_pose(None, "cube", t[:1]))
    assert torch.allclose(rest.rgb, at_rest.rgb, atol=1e-3)


def test_image_prompt_drops_motion_and_maps_synonyms():
    vocab = ["a", "an", "the", *world.COLOURS, *world.SHAPES]
    assert image_prompt_for("a red ball bouncing", vocab) == "a red sphere"
    assert image_prompt_for("a blue cube spinning", vocab) == "a blue cube"
    assert image_prompt_for("a corgi running", None) == "a corgi running"  # open vocabulary: as is


# --- dynamic Gaussians --------------------------------------------------------------------------
def dynamic(n=400, **kw):
    return DynamicGaussians.from_config(DynamicGaussians.Config(n=n, init_opacity=0.9, **kw), seed=0)


def test_deformation_starts_as_the_identity_and_moves_when_trained():
    g = dynamic()
    cams = make_cameras([20.0] * 2, [0.0, 90.0], 2.8, 30.0, 32)
    canonical = g.render(cams, torch.ones(3)).rgb
    timed = g.render(replace(cams, time=torch.tensor([0.3, 0.8])), torch.ones(3)).rgb
    assert torch.allclose(canonical, timed, atol=1e-6)
    # one optimisation step on "move up at t = 1" reaches the deformation MLP
    opt = g.optimizers()["deform"]
    for _ in range(30):
        loss = (g.offsets(1.0)[:, 2] - 0.2).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(g.offsets(1.0)[:, 2].mean()) > 0.1
    snap = g.at_time(1.0)
    with torch.no_grad():
        a = g.render(replace(cams, time=torch.tensor([1.0, 1.0])), torch.ones(3)).rgb
        b = snap.render(cams, torch.ones(3)).rgb
    assert torch.allclose(a, b, atol=1e-5)  # the snapshot is the render at that time


def test_root_motion_moves_the_whole_object_as_one_body():
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    g = dynamic(n=50)
    angle, shift, log_s = math.pi / 2, torch.tensor([0.1, -0.2, 0.3]), math.log(1.5)
    t = 0.25
    with torch.no_grad():  # a pose that the series reaches at every t through its constant term
        g.root.bias.copy_(torch.tensor([0.0, 0.0, angle, *shift, log_s]))
    means, quats, log_scales, logits = g.deformed(t)
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    torch.testing.assert_close(means, 1.5 * g.means @ R.T + shift, atol=1e-5, rtol=1e-5)
    covar = _quat_scale_to_covar_preci(quats, log_scales.exp(), compute_preci=False)[0]
    canonical = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)[0]
    torch.testing.assert_close(covar, 1.5 ** 2 * R @ canonical @ R.T, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, g.params["opacities"])
    torch.testing.assert_close(g.deformed(t, root_motion=False)[0], g.means)  # the object's own frame
    # a fresh root, trained by the "deform" optimiser to lift the object by 0.3 at t = 0.5
    g = dynamic(n=50, lambda_deform=1.0)
    target = g.means[:, 2].mean().item() + 0.3
    opt = g.optimizers()["deform"]
    for _ in range(200):
        loss = (g.deformed(0.5)[0][:, 2].mean() - target).square()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(g.deformed(0.5)[0][:, 2].mean().item() - target) < 0.05
    assert g.root.weight.grad.abs().sum() > 0


def test_mixed_times_render_each_camera_at_its_own_time():
    g = dynamic()
    row = g.deform[-1].weight[2]  # a time-dependent vertical offset, seeded: an unseeded draw
    with torch.no_grad():         # gave the two times a difference of only 0.02-0.05 one time in 8
        row.copy_(0.1 * torch.randn(row.shape, generator=torch.Generator().manual_seed(0)))
    cams = make_cameras([20.0] * 3, [0.0, 0.0, 0.0], 2.8, 30.0, 32, time=[0.1, 0.9, 0.1])
    with torch.no_grad():
        out = g.render(cams, torch.ones(3))
        single = [g.render(cams[k:k + 1], torch.ones(3)).rgb for k in range(3)]
    for k in range(3):  # batched and single matmuls sum in different orders on some CPUs (3e-4 seen)
        torch.testing.assert_close(out.rgb[k], single[k][0], atol=2e-3, rtol=0)
    assert (out.rgb[0] - out.rgb[1]).abs().max() > 0.05  # the two times differ far beyond that


def test_held_canonical_sends_the_gradient_to_the_deformation_only():
    g = dynamic()
    cams = make_cameras([20.0] * 2, [0.0, 90.0], 2.8, 30.0, 16, time=[0.2, 0.7])
    g.render(cams, torch.ones(3), canonical_grad=False).rgb.mean().backward()
    assert all(p.grad is None for p in g.params.values())
    assert g.deform[-1].weight.grad.abs().sum() > 0
    g.render(cams, torch.ones(3)).rgb.mean().backward()
    assert all(p.grad is not None for p in g.params.values())


def test_dynamic_regularisers_and_weights_round_trip():
    g = dynamic(lambda_smooth=1.0, lambda_deform=1.0)
    with torch.no_grad():
        g.deform[-1].weight.normal_(0, 0.05)
    regs = g.regularisers(g.render(make_cameras(20.0, 0.0, 2.8, 30.0, 16), torch.ones(3)), step=3)
    assert regs["smooth"] > 0 and regs["deform"] > 0
    regs["smooth"].backward()
    assert g.deform[0].weight.grad.abs().sum() > 0
    h = dynamic(n=10)
    h.load_weights(g.state_dict())
    assert len(h) == len(g) and torch.equal(h.offsets(0.4), g.offsets(0.4))


# --- motion metrics -----------------------------------------------------------------------------
class Scripted(DynamicGaussians):
    """Gaussians that move exactly as world.motion_pose says, from a phase."""

    def __init__(self, base, motion, shape, phase, amplitude=1.0):
        p = base.params
        super().__init__(p["means"].data, p["scales"].data, p["quats"].data, p["opacities"].data, p["colors"].data)
        self.motion, self.shape, self.phase, self.amplitude = motion, shape, phase, amplitude

    def offsets(self, t):
        pose = world.motion_pose(self.motion, self.shape, torch.tensor([float(t) + self.phase]))[0]
        x = self.means.detach()
        a = torch.deg2rad(pose[3])
        rot = torch.stack([x[:, 0] * torch.cos(a) - x[:, 1] * torch.sin(a), x[:, 0] * torch.sin(a) + x[:, 1] * torch.cos(a), x[:, 2]], -1)
        moved = rot * pose[4] + pose[:3]
        d = torch.zeros(len(x), 11)
        d[:, :3] = (moved - x) * self.amplitude
        return d


@pytest.mark.parametrize("motion, shape", [("bouncing", "sphere"), ("sliding", "cone"), ("spinning", "cube"), ("pulsing", "torus")])
def test_motion_correlation_recovers_a_scripted_motion(motion, shape):
    base = dynamic(n=300)
    times = torch.arange(16) / 16
    r, phase, amplitude = motion_correlation(motion_track(Scripted(base, motion, shape, 0.3), times), motion, shape, times)
    assert r > 0.97 and amplitude == pytest.approx(1.0, abs=0.1), (r, amplitude)
    # within a sample; a slide's direction is free, and a spin's phase only offsets its angle
    assert phase == pytest.approx(0.3, abs=1 / 16) or motion in ("sliding", "spinning")
    faint = motion_correlation(motion_track(Scripted(base, motion, shape, 0.3, amplitude=0.05), times), motion, shape, times)
    assert faint[2] < 0.1  # a faint wobble of the right shape shows in the amplitude
    other = {"bouncing": "pulsing", "sliding": "bouncing", "spinning": "sliding", "pulsing": "bouncing"}[motion]
    wrong = motion_correlation(motion_track(Scripted(base, other, "cube", 0.3), times), motion, shape, times)
    assert wrong[0] < 0.8 or wrong[2] < 0.3, wrong


def test_still_object_has_no_motion():
    amount = motion_amount(motion_track(dynamic(), torch.arange(8) / 8))
    assert amount["displacement"] < 1e-6 and amount["rotation"] < 1e-4 and amount["scale_change"] < 1e-6
    g = dynamic()
    with torch.no_grad():  # a root pose the same at every time: moved, rotated, scaled, but still
        g.root.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.2, 0.1, 0.0, 0.3]))
    still = motion_amount(motion_track(g, torch.arange(8) / 8))
    assert still["displacement"] < 1e-5 and still["rotation"] < 1e-3 and still["scale_change"] < 1e-5, still
    with torch.no_grad():  # up and down over time: 0.2 sin(pi t)
        g.root.weight[5, 1] = 0.2
    moving = motion_amount(motion_track(g, torch.arange(8) / 8))
    assert moving["displacement"] > 0.05, moving


# --- the 4D system, end to end on an untrained video prior ------------------------------------------
@pytest.fixture(scope="module")
def untrained_video_prior(tmp_path_factory):
    from tests.tiny_priors import untrained_video_prior

    return untrained_video_prior(tmp_path_factory.mktemp("video-prior"))


def fit4d(tmp_path, prior_path, *overrides):
    before = set(run_dirs(tmp_path))
    assert main(["fit", "--config", CONFIG, f"output_dir={tmp_path}", *TINY, "system.video.prior.name=diffusers",
                 f"system.video.prior.path={prior_path}", "trainer.max_steps=4", "system.video.start=2",
                 "system.representation.n=300", *overrides]) == 0
    (run,) = set(run_dirs(tmp_path)) - before
    return run


def test_4d_fit_writes_videos_metrics_and_sequences(tmp_path, untrained_video_prior, capsys):
    run = fit4d(tmp_path, untrained_video_prior, "prompt=a red ball bouncing", "system.video.image_probability=0.5")
    for name in ("test/turntable.mp4", "test/fixed.mp4", "metrics.json", "ckpts/last.ckpt"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert m["motion"] == "bouncing" and len(m["per_time"]) == 2 and "motion_correlation" in m
    assert m["prior_evals_per_step"] > 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["motion"] == "bouncing"
    assert main(["export", str(run), "--format", "splat", "glb", "mp4", "times=3", "grid=32", "texture_size=32",
                 "frames=4", "resolution=32"]) == 0
    out = run / "export"
    from threedgen.export.splat import read_splat_ply
    from threedgen.runs import load_representation

    _, rep = load_representation(run)
    for k in range(3):
        back = read_splat_ply(out / f"splat_{k:03d}.ply")
        snap = rep.at_time(k / 3)
        assert all(torch.allclose(back.params[n], snap.params[n]) for n in snap.params), k
        assert (out / f"mesh_{k:03d}.glb").is_file()
    assert len(json.loads((out / "mesh.json").read_text())["frames"]) == 3
    assert (out / "turntable.mp4").is_file() and (out / "fixed.mp4").is_file()


@pytest.mark.parametrize("motion_only, image_root_motion", [(True, False), (False, True)])
def test_stage_two_image_steps_frame_and_video_cfg_branch(tmp_path, untrained_video_prior, monkeypatch,
                                                          motion_only, image_root_motion):
    """Image steps render at their time in the object's own frame (no root motion) unless asked;
    with motion_only_guidance the video CFG's unconditional branch is the prompt without its
    motion (the image prompt), else the empty prompt."""
    from threedgen.systems.text_to_4d import TextTo4D
    from threedgen.config import load
    from threedgen.prompts import PromptProcessor

    cfg = load([CONFIG], ["prompt=a red ball bouncing", "system.video.prior.name=diffusers",
                          f"system.video.prior.path={untrained_video_prior}", "system.video.start=0",
                          "system.video.image_probability=1.0", "system.representation.n=300",
                          f"system.video.motion_only_guidance={motion_only}",
                          f"system.video.image_root_motion={image_root_motion}"])
    system = TextTo4D(cfg, tmp_path)
    seen = []
    render = system.representation.render
    monkeypatch.setattr(system.representation, "render",
                        lambda cams, bg, **kw: seen.append((cams.time, kw)) or render(cams, bg, **kw))
    system.distill(5, torch.Generator().manual_seed(0))
    (times, kw), = seen
    assert times is not None and kw["root_motion"] is image_root_motion
    negative = system.video_prompts.negative
    if motion_only:
        assert system.image_prompt() == "a red sphere"
        expected = PromptProcessor(system.video_prior, "a red sphere", cfg=system.video_prompts.cfg).text
        torch.testing.assert_close(negative, expected)
    else:
        assert negative is None  # the empty prompt


@pytest.mark.parametrize("prompt, evals", [("a yellow cone", 1), ("a yellow cone bouncing", 2)])
def test_motion_only_cfg_of_a_still_prompt_runs_the_video_prior_once(tmp_path, untrained_video_prior, prompt, evals):
    """A still prompt's motion-only CFG compares the prompt with itself: one video prior call a clip."""
    from threedgen.systems.text_to_4d import TextTo4D
    from threedgen.config import load

    cfg = load([CONFIG], [f"prompt={prompt}", "system.video.prior.name=diffusers",
                          f"system.video.prior.path={untrained_video_prior}", "system.video.start=0",
                          "system.video.image_probability=0.0", "system.representation.n=300"])
    _, guided = TextTo4D(cfg, tmp_path).distill(5, torch.Generator().manual_seed(0))
    assert guided.prior_evals == evals


def test_4d_resume_continues_the_deformation(tmp_path, untrained_video_prior):
    run = fit4d(tmp_path, untrained_video_prior, "prompt=a red cube spinning", "trainer.ckpt_every=2")
    assert main(["fit", "--resume", str(run)]) == 0  # complete: a no-op that keeps the weights
    from threedgen.runs import load_representation

    _, rep = load_representation(run)
    assert isinstance(rep, DynamicGaussians)


def test_4d_config_errors_are_one_line(tmp_path, capsys, untrained_video_prior):
    static = str(REPO / "configs" / "gaussians-sds.yaml")
    cases = [  # (recipe, overrides, message)
        (static, ["system.video.guidance.name=sds"], "needs a dynamic representation"),
        (CONFIG, ["system.video.prior.name=embedded"], "not a text-to-video model"),
        (CONFIG, ["system.video.guidance.name=vsd"], "trains its own model"),
        (CONFIG, ["system.video.frames=1"], "frames >= 2"),
        (CONFIG, ["system.video.camera_azimuth=[20,10]"], "camera_azimuth"),
        (CONFIG, ["prompt=a red cube dancing"], "dancing"),
    ]
    for recipe, overrides, message in cases:
        video_prior = [] if "prior.name=embedded" in overrides[0] else [
            "system.video.prior.name=diffusers", f"system.video.prior.path={untrained_video_prior}"]
        capsys.readouterr()
        code = main(["fit", "--config", recipe, f"output_dir={tmp_path}", *TINY, "prompt=a red cube spinning",
                     *video_prior, *overrides])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (overrides, err)


def test_missing_embedded_video_prior_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import threedgen.priors.diffusion as D

    monkeypatch.setattr(D, "EMBEDDED_VIDEO_PATH", tmp_path / "not-here")
    assert main(["fit", "--config", CONFIG, f"output_dir={tmp_path}", "prompt=a red ball bouncing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threedgen train-prior --video" in err
    assert not run_dirs(tmp_path)


# --- the video prior's training and classifier, smoke-sized ----------------------------------------
def test_train_video_prior_and_clip_classifier_smoke(tmp_path):
    from threedgen.registry import prior_from_pretrained
    from threedgen.world.classifier import ClipClassifier, train_clip_classifier
    from threedgen.world.train import VideoTrainConfig, train_video

    train_video(tmp_path / "v", VideoTrainConfig(steps=2, batch_size=2, clips_per_combination=1, save_every=2))
    # ... and on from that folder (an earlier video prior is loaded as it is, not re-inflated)
    train_video(tmp_path / "v2", VideoTrainConfig(steps=1, batch_size=2, clips_per_combination=1, save_every=1,
                                                  warmup=0, init_from=str(tmp_path / "v"), snr_shift=2.0,
                                                  prediction_type="v_prediction", balance_motions=True))
    first, second = (prior_from_pretrained(tmp_path / f) for f in ("v", "v2"))
    diff = [(a - b).abs().max() for a, b in zip(first.unet.parameters(), second.unet.parameters())]
    assert 0 < max(diff) < 0.05  # one small step away
    assert second.scheduler.config.prediction_type == "v_prediction"  # the schedule it was trained on
    snr = lambda a: a[500] / (1 - a[500])  # noqa: E731
    assert snr(first.alphas_cumprod) / snr(second.alphas_cumprod) == pytest.approx(4.0, rel=1e-3)
    prior = first
    assert prior.video and prior.world["frames"] == 8 and "bouncing" in prior.vocabulary
    x = prior.encode_images(torch.rand(1, 3, 8, 32, 32))
    assert x.shape == (1, 12, 8, 16, 16)
    assert torch.allclose(prior.decode(x), prior.decode(prior.encode_images(prior.decode(x))), atol=1e-5)
    model = train_clip_classifier(tmp_path / "c", steps=2, n_clips=4)
    back = ClipClassifier.from_pretrained(tmp_path / "c")
    clips = torch.rand(2, 3, 8, 32, 32)
    assert back.predict(clips) == model.predict(clips)
    assert all(len(names) == 2 for names in back.predict(clips))


def test_inflated_video_unet_starts_as_the_image_prior_frame_by_frame():
    """model.inflate: on noised world renders, the video UNet's noise prediction at init is the
    image prior's (null camera) on every frame: the motion modules are the identity. A copy with
    random motion-module output layers is a control that the test can fail."""
    from diffusers import UNet2DConditionModel

    from threedgen.priors.diffusion import EMBEDDED_PATH
    from threedgen.priors.embedded import model as M
    from threedgen.priors.video import frame_text
    from threedgen import world
    from threedgen.world.train import TrainConfig, random_cameras

    image = UNet2DConditionModel.from_pretrained(EMBEDDED_PATH / "unet").eval()
    video = M.inflate(image).eval()
    g = torch.Generator().manual_seed(0)
    frames = M.PixelShuffleCodec(2).encode(world.render(["cube"] * 8, ["red"] * 8, random_cameras(8, TrainConfig(), g)).rgb)
    a = M.build_scheduler().alphas_cumprod[400]
    noise = torch.randn(frames.shape, generator=g)
    x_t, text = a.sqrt() * frames + (1 - a).sqrt() * noise, torch.randn(1, M.MAX_TOKENS, 64, generator=g)
    with torch.no_grad():
        per_frame = image(x_t, torch.full((8,), 400), text.expand(8, -1, -1),
                          class_labels=torch.zeros(8, M.CAMERA_DIM)).sample
        clip_text = frame_text(video, text, 8)
        clip = video(x_t.transpose(0, 1)[None], torch.tensor([400]), clip_text).sample[0].transpose(0, 1)
        for key, p in video.named_parameters():
            if "motion_modules." in key and ".proj_out." in key:
                p.normal_(0, 0.05, generator=g)
        control = video(x_t.transpose(0, 1)[None], torch.tensor([400]), clip_text).sample[0].transpose(0, 1)
    err = lambda eps: (eps - noise).square().mean().item()  # noqa: E731
    assert abs(err(clip) - err(per_frame)) < 0.001 * err(per_frame)
    assert (clip - per_frame).abs().mean() < 0.001 * per_frame.abs().mean()
    assert (control - per_frame).abs().mean() > 4 * (clip - per_frame).abs().mean()


def test_camera_input_starts_as_a_no_op_then_conditions_the_video_unet(tmp_path):
    """model.with_camera_input gives a camera-blind video UNet (the priors shipped before the
    camera) a zero camera projection: the same prediction for any camera until it is trained.
    initial_video_prior upgrades such a folder; a folder with the input is left as it is."""
    import json

    from diffusers import UNetMotionModel

    from threedgen.priors.embedded import model as M
    from threedgen.world import train as T

    torch.manual_seed(0)
    blind = UNetMotionModel.from_config({**M.build_video_unet().config, "time_cond_proj_dim": None}).eval()
    unet = M.with_camera_input(blind).eval()
    assert unet.config.time_cond_proj_dim == M.CAMERA_DIM and M.with_camera_input(unet) is unet
    x, t, text = torch.randn(2, 12, 4, 16, 16), torch.tensor([300, 800]), torch.randn(8, M.MAX_TOKENS, 64)
    camera = torch.randn(2, M.CAMERA_DIM)
    with torch.no_grad():
        before = blind(x, t, text).sample
        torch.testing.assert_close(unet(x, t, text, timestep_cond=camera).sample, before)
        unet.time_embedding.cond_proj.weight.normal_()
        assert (unet(x, t, text, timestep_cond=camera).sample - before).abs().max() > 1e-2
        torch.testing.assert_close(unet(x, t, text, timestep_cond=torch.zeros(2, M.CAMERA_DIM)).sample, before)
    with pytest.raises(ValueError, match="time_cond_proj_dim 3"):
        M.with_camera_input(UNetMotionModel.from_config({**blind.config, "time_cond_proj_dim": 3}))
    # a camera-blind video prior's folder trains on with the camera
    tok = M.build_tokenizer(T.video_vocabulary())
    T.save_video_pipeline(tmp_path / "blind", blind, M.build_text_encoder(len(tok)), tok, T.VideoTrainConfig())
    assert json.loads((tmp_path / "blind/unet/config.json").read_text())["time_cond_proj_dim"] is None
    _, start = T.initial_video_prior(tmp_path / "blind", tok, torch.Generator().manual_seed(0))
    assert start.config.time_cond_proj_dim == M.CAMERA_DIM
    assert start.time_embedding.cond_proj.weight.abs().max() == 0


def test_video_prior_reads_the_camera_and_the_4d_clip_passes_its_own(tmp_path, untrained_video_prior, monkeypatch):
    """A video prior with the camera input is camera-conditioned (the null camera = no camera),
    and a video step hands it the clip's camera: in both CFG branches with motion-only guidance,
    against the null camera without."""
    from threedgen.systems.text_to_4d import TextTo4D
    from threedgen.cameras import make_cameras
    from threedgen.config import load
    from threedgen.registry import prior_from_pretrained
    from threedgen.priors.embedded import model as M
    from threedgen.world.check import training_azimuth

    prior = prior_from_pretrained(untrained_video_prior)
    assert prior.has_camera and prior.camera_dim == M.CAMERA_DIM
    with torch.no_grad():  # an untrained camera input changes little; make it matter
        prior.unet.time_embedding.cond_proj.weight.normal_(0, 3, generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(1, 12, 8, 16, 16), torch.tensor([500])
    text = prior.encode_prompts(["a red mug spinning"])
    cams = make_cameras([20.0, 20.0], [0.0, 90.0], 2.8, 30.0, 32)
    with torch.no_grad():
        a, b = (prior.predict_noise(x, t, text, prior.camera_condition(cams[i:i + 1], 1)) for i in (0, 1))
        null = prior.predict_noise(x, t, text, prior.camera_condition(None, 1))
        torch.testing.assert_close(null, prior.predict_noise(x, t, text, None))
    assert (a - b).abs().max() > 1e-3 and (a - null).abs().max() > 1e-3
    for motion_only in (True, False):
        cfg = load([CONFIG], ["prompt=a red mug spinning", "system.video.prior.name=diffusers",
                              f"system.video.prior.path={untrained_video_prior}", "system.video.start=0",
                              "system.video.image_probability=0.0", "system.representation.n=300",
                              f"system.video.motion_only_guidance={motion_only}"])
        system = TextTo4D(cfg, tmp_path / str(motion_only))
        seen = {}

        def spy(name, fn):
            def call(*args, **kw):
                seen[name] = args[-1] if name == "camera" else args[0]
                return fn(*args, **kw)
            return call

        monkeypatch.setattr(system.representation, "render", spy("cams", system.representation.render))
        monkeypatch.setattr(system.video_prior, "predict_noise", spy("camera", system.video_prior.predict_noise))
        system.distill(5, torch.Generator().manual_seed(0))
        clip_camera = M.camera_embedding(seen["cams"][:1])  # one camera over the clip
        assert seen["cams"].azimuth.unique().numel() == 1 and clip_camera[0, -1] == 1
        lo, hi = training_azimuth(system.video_prior)  # as the prior's clips were filmed
        assert lo <= float(seen["cams"].azimuth[0]) <= hi
        expected = torch.cat([clip_camera, clip_camera if motion_only else torch.zeros_like(clip_camera)])
        torch.testing.assert_close(seen["camera"], expected)


def test_shipped_video_prior_loads_offline_and_learnt_more_than_its_frames():
    """The shipped video prior loads by name (HF_HUB_OFFLINE=1), reads the video words, predicts
    the noise of noised moving-world clips better than the frame-by-frame image prior it started
    from (model.inflate) at the same noise levels (each at its own schedule's timestep), and uses
    the motion words: they lower its x0 error at high noise (motion_prompt_gain)."""
    from threedgen.config import PriorConfig
    from threedgen.priors.diffusion import EMBEDDED_PATH
    from threedgen.registry import load_prior
    from threedgen.priors.embedded import model as M
    from threedgen.priors.video import frame_text
    from threedgen.world.check import motion_prompt_gain, trained_random_phase
    from threedgen.world.train import (VideoTrainConfig, clip_times, initial_video_prior, random_cameras,
                                                 render_clips, text_features, video_vocabulary)

    prior = load_prior(PriorConfig(name="embedded_video"))
    assert prior.video and {"bouncing", "spinning", "ball"} <= set(prior.vocabulary)
    tokenizer = M.build_tokenizer(video_vocabulary())
    g = torch.Generator().manual_seed(3)
    start_text, start = initial_video_prior(EMBEDDED_PATH, tokenizer, g)
    combos = [("sphere", "bouncing"), ("cube", "spinning"), ("cylinder", "sliding"), ("cone", None)]
    times = clip_times(4, 8, g, random_phase=trained_random_phase(prior))
    cams = random_cameras(4, VideoTrainConfig(), g)
    r = render_clips(combos, cams, times)
    clips = prior.encode_images(r.rgb.unflatten(0, (4, 8)).transpose(1, 2))  # red objects
    prompts = ["a red ball bouncing", "a red cube spinning", "a red cylinder sliding", "a red cone"]
    text = prior.encode_prompts(prompts)
    with torch.no_grad():
        text0 = text_features(tokenizer, start_text, prompts)
    plain = M.build_scheduler().alphas_cumprod  # the schedule the start was trained on
    errors = {"shipped": 0.0, "start": 0.0}
    for t in (300, 600, 900):
        a = plain[t]
        t_shipped = int((prior.alphas_cumprod - a).abs().argmin())  # the same noise level
        noise = torch.randn(clips.shape, generator=g)
        x_t = a.sqrt() * clips + (1 - a).sqrt() * noise
        with torch.no_grad():
            eps = prior.predict_noise(x_t, torch.full((4,), t_shipped), text, prior.camera_condition(cams, 4))
            errors["shipped"] += (eps - noise).square().mean().item()
            eps0 = start(x_t, torch.full((4,), t), frame_text(start, text0, 8)).sample
            errors["start"] += (eps0 - noise).square().mean().item()
    assert errors["shipped"] < 0.9 * errors["start"], errors
    gain = motion_prompt_gain(prior, n=24, timesteps=(850,))
    assert gain[850] > 0.2, gain  # the UNet3D prior it replaced: 0.001
    # "spinning" too, on clips filmed as its training clips were (from one side): the prior shipped
    # before, trained from every azimuth, gained -0.01 from the word
    assert prior.world["camera"]["azimuth"] == [30.0, 60.0]
    spin = motion_prompt_gain(prior, n=16, timesteps=(850,), motion="spinning")
    assert spin[850] > 0.1, spin


def test_snr_shift_divides_the_schedules_snr_and_loads_as_a_diffusers_scheduler(tmp_path):
    from diffusers import DDIMScheduler, DDPMScheduler

    from threedgen.priors.embedded import model as M

    plain = M.build_scheduler()
    assert plain.config.trained_betas is None  # k = 1: diffusers' own squaredcos schedule
    M.build_scheduler("v_prediction", 4.0).save_pretrained(tmp_path)
    shifted = DDPMScheduler.from_pretrained(tmp_path)
    snr = lambda a: a.double() / (1 - a.double())  # noqa: E731
    ratio = snr(plain.alphas_cumprod) / snr(shifted.alphas_cumprod)
    assert torch.allclose(ratio[:999], torch.full((999,), 16.0, dtype=torch.float64), rtol=1e-3)
    assert shifted.config.prediction_type == "v_prediction"
    assert torch.equal(DDIMScheduler.from_config(shifted.config).alphas_cumprod, shifted.alphas_cumprod)


def test_timestep_shift_favours_high_noise_and_one_keeps_uniform():
    from threedgen.world.train import diffusion_loss

    seen = []

    class Unet(torch.nn.Module):  # records the timesteps it is asked at
        def forward(self, x, t, text):
            seen.append(t)
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    alphas = torch.linspace(0.999, 0.001, 1000)
    draws = {}
    for shift in (1.0, 2.0, 4.0):
        seen.clear()
        diffusion_loss(Unet(), alphas, torch.zeros(20000, 1), None, torch.Generator().manual_seed(0), timestep_shift=shift)
        draws[shift] = seen[0].float()
        assert seen[0].min() >= 0 and seen[0].max() <= 999
    # density ~ t^(k - 1): mean T k / (k + 1)
    for shift, t in draws.items():
        assert abs(t.mean().item() - 1000 * shift / (shift + 1)) < 10, (shift, t.mean())


def test_temporal_layers_are_those_inflation_adds_and_get_their_own_learning_rate():
    from diffusers import UNet2DConditionModel

    from threedgen.priors.embedded import model as M
    from threedgen.world.train import (TrainConfig, VideoTrainConfig, is_temporal,
                                                 lr_scale, optimise)

    unet = M.inflate(UNet2DConditionModel.from_config(M.build_unet().config))
    names = [n for n, _ in unet.named_parameters()]
    temporal = [n for n in names if is_temporal(n)]
    assert temporal == [n for n in names if "motion_modules." in n]
    cfg = VideoTrainConfig(temporal_lr_scale=2.0, camera_lr_scale=30.0)
    scales = {n: lr_scale(n, cfg) for n in names}
    assert M.CAMERA_PROJECTION in names and scales[M.CAMERA_PROJECTION] == 30.0
    assert {n for n, k in scales.items() if k == 2.0} == set(temporal)
    assert sum(k == 1.0 for k in scales.values()) == len(names) - len(temporal) - 1
    assert any(n.startswith("mid_block.") for n in temporal) and any(n.startswith("up_blocks.") for n in temporal)
    assert is_temporal("transformer_in.proj_in.weight") and is_temporal("down_blocks.0.temp_convs.0.conv1.0.weight")
    assert not any(is_temporal(n) for n in ("down_blocks.0.attentions.0.proj_in.weight", "conv_in.weight"))

    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    cfg = TrainConfig(steps=1, warmup=0, lr=0.1, ema_decay=0.0, save_every=10)
    # AdamW's first step moves every parameter by ~lr (its scale) whatever the gradient's size
    optimise(cfg, [a, b], lambda step: (a + b).sum(), lambda: None, 0.0, lr_scales=[1.0, 3.0])
    moved = (1 - a.item(), 1 - b.item())
    assert moved[1] == pytest.approx(3 * moved[0], rel=1e-3) and moved[0] > 0.05


def test_high_noise_weight_is_inverse_snr_clamped():
    from threedgen.world.train import diffusion_loss

    class Zero(torch.nn.Module):  # predicts no noise: the loss is the weighted mean of noise^2
        def forward(self, x, t, text):
            self.t = t
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    alphas = torch.linspace(0.999, 0.001, 1000)
    unet = Zero()
    plain = diffusion_loss(unet, alphas, torch.zeros(64, 3), None, torch.Generator().manual_seed(0))
    weighted = diffusion_loss(unet, alphas, torch.zeros(64, 3), None, torch.Generator().manual_seed(0), max_weight=8.0)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    w = ((1 - alphas[unet.t]) / alphas[unet.t]).clamp(1, 8)
    assert plain.item() == pytest.approx(noise.square().mean().item(), rel=1e-5)
    assert weighted.item() == pytest.approx((w * noise.square().mean(1)).mean().item(), rel=1e-5)
    assert w.min() == 1 and w.max() == 8  # both clamps are reached over 64 uniform timesteps


def test_clip_times_from_phase_zero_or_random():
    from threedgen.world.train import clip_times

    g = torch.Generator().manual_seed(0)
    assert torch.equal(clip_times(3, 8, g, random_phase=False), (torch.arange(8) / 8).expand(3, 8))
    t = clip_times(200, 8, g)
    steps = t.diff(dim=1)  # not wrapped at 1: a spin turns on instead of jumping back
    assert torch.allclose(steps, torch.full_like(steps, 1 / 8), atol=1e-6)
    assert t[:, 0].std() > 0.2  # phases spread over the period


def test_check_prior_video_scores_samples_and_reports_the_gain_per_motion(tmp_path, monkeypatch, capsys,
                                                                         untrained_video_prior):
    """``threedgen check-prior --video`` end to end on an untrained prior with the shipped clip
    classifier (fewer clips for the classifier's own accuracy and the gains, and DDIM from pure
    noise, which needs no mean clip: to keep it short)."""
    import functools
    import shutil

    from threedgen.priors.diffusion import EMBEDDED_VIDEO_PATH
    from threedgen.world import check, classifier

    shutil.copytree(untrained_video_prior, tmp_path / "prior")
    shutil.copytree(EMBEDDED_VIDEO_PATH / "classifier", tmp_path / "prior" / "classifier")
    monkeypatch.setattr(check, "clip_classifier_accuracy",
                        functools.partial(classifier.clip_classifier_accuracy, n=8))
    gain = check.motion_prompt_gain
    monkeypatch.setattr(check, "motion_prompt_gain", lambda prior, **kw: gain(prior, **{**kw, "n": 4}))
    assert main(["check-prior", "--video", "--path", str(tmp_path / "prior"), "--views", "1", "--steps", "2",
                 "--t-start", "-1", "--seed", "3", "--grid", str(tmp_path / "grid.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampler"]["seed"] == 3 and out["samples"] == 26
    assert 0 <= out["all"] <= min(out["shape"], out["colour"], out["motion"])
    assert set(out["motion_by_label"]) == {"still", *world.MOTIONS}
    assert set(out["motion_prompt_gain_by_motion"]) == set(world.MOTIONS)
    assert all(set(g) == {"600", "850", "950"} for g in out["motion_prompt_gain_by_motion"].values())
    assert set(out["camera_gain"]) == {"600", "850", "950"}
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_clip_batch_of_one_motion_draws_only_its_shapes():
    from threedgen.world.classifier import STILL, clip_batch

    r, shapes, motions, cams = clip_batch(6, torch.Generator().manual_seed(0), frames=2, motion="spinning")
    assert r.rgb.shape[0] == 12 and len(cams) == 6
    assert motions.tolist() == [1 + world.MOTIONS.index("spinning")] * 6
    assert {world.SHAPES[k] for k in shapes.tolist()} <= set(world.SPIN_DEGREES)
    _, _, still, _ = clip_batch(3, torch.Generator().manual_seed(0), frames=2, motion=STILL)
    assert still.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="no clips of motion 'dancing'"):
        clip_batch(2, torch.Generator().manual_seed(0), motion="dancing")


def test_temporal_loss_counts_only_errors_that_change_between_frames():
    from threedgen.world.train import diffusion_loss

    class Fixed(torch.nn.Module):  # predicts the drawn noise plus a chosen error
        def __init__(self, error):
            super().__init__()
            self.error = error

        def forward(self, x, t, text):
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            return type("Out", (), {"sample": noise + self.error})()

    alphas = torch.linspace(0.999, 0.001, 1000)
    x0 = torch.zeros(2, 3, 4, 5, 5)  # [B, C, T, h, w]
    same = torch.full_like(x0, 0.5)  # the same error in every frame
    moving = torch.zeros_like(x0)
    moving[:, :, ::2] = 1.0  # an error in every other frame: each frame-to-frame difference is +-1
    for error, extra in ((same, 0.0), (moving, 1.0)):
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (Fixed draws the same noise as the loss)
        plain = diffusion_loss(Fixed(error), alphas, x0, None, g())
        temporal = diffusion_loss(Fixed(error), alphas, x0, None, g(), temporal_weight=2.0)
        assert plain.item() == pytest.approx(error.square().mean().item(), rel=1e-5)
        assert temporal.item() == pytest.approx(plain.item() + 2.0 * extra, rel=1e-5)


def test_motion_prompt_gain_is_zero_for_a_prior_blind_to_the_motion_words(untrained_video_prior):
    from threedgen.registry import prior_from_pretrained
    from threedgen.world.check import motion_prompt_gain

    prior = prior_from_pretrained(untrained_video_prior)
    gain = motion_prompt_gain(prior, n=8, timesteps=(500, 900))
    assert set(gain) == {500, 900} and all(-1 < g < 1 for g in gain.values())
    # the same prediction whatever the prompt: the motion word gains nothing
    still = prior.encode_prompts(["a red cube"])
    prior.predict_noise = lambda x, t, text, cam, f=prior.predict_noise: f(x, t, still.expand(len(x), -1, -1), cam)
    assert motion_prompt_gain(prior, n=8, timesteps=(500, 900)) == {500: 0.0, 900: 0.0}


def test_camera_gain_is_zero_for_a_prior_blind_to_the_camera(untrained_video_prior):
    from threedgen.registry import prior_from_pretrained
    from threedgen.world.check import camera_gain

    prior = prior_from_pretrained(untrained_video_prior)
    with torch.no_grad():  # a camera input strong enough to matter (untrained, its gain rounds to ~1e-4)
        prior.unet.time_embedding.cond_proj.weight.normal_(0, 3, generator=torch.Generator().manual_seed(0))
    # any sign, and small (~1e-3 to 1e-2 over seeds of the untrained weights): the camera input is random
    gain = camera_gain(prior, n=6, timesteps=(500, 900))
    assert set(gain) == {500, 900} and all(g != 0 and g < 1 for g in gain.values())
    null = prior.camera_condition(None, 6)
    prior.predict_noise = lambda x, t, text, cam, f=prior.predict_noise: f(x, t, text, null)
    assert camera_gain(prior, n=6, timesteps=(500, 900)) == {500: 0.0, 900: 0.0}


def test_balanced_motions_draw_each_motion_equally_often():
    """With balance_motions every motion (and still) fills a fifth of the batches, spinning
    included, though only 2 of the 26 combinations spin (their share of the clips)."""
    from threedgen.world.train import motion_weights, video_combinations

    combos = video_combinations()
    combo = torch.arange(len(combos)).repeat_interleave(3)  # 3 clips of each combination
    motion = [combos[k][1] for k in combo.tolist()]
    weights = motion_weights(combos, combo)
    for m in (None, "bouncing", "spinning", "sliding", "pulsing"):
        share = float(sum(w for w, mi in zip(weights, motion) if mi == m) / weights.sum())
        assert share == pytest.approx(0.2)
    assert motion.count("spinning") / len(motion) == pytest.approx(2 / 26)
    assert motion.count(None) / len(motion) == pytest.approx(6 / 26)


def test_video_steps_film_the_clip_from_the_priors_azimuths_or_the_configured_ones(
        tmp_path, untrained_video_prior, monkeypatch):
    """By default the clip camera's azimuths are the range the video prior's clips were filmed
    from (its world.json); system.video.camera_azimuth overrides it."""
    import shutil

    from threedgen.systems.text_to_4d import TextTo4D
    from threedgen.config import load

    prior = tmp_path / "prior"
    shutil.copytree(untrained_video_prior, prior)
    world = json.loads((prior / "world.json").read_text())
    world["camera"]["azimuth"] = [100.0, 110.0]
    (prior / "world.json").write_text(json.dumps(world))
    for overrides, (lo, hi) in (([], (100, 110)), (["system.video.camera_azimuth=[-20,-10]"], (-20, -10))):
        cfg = load([CONFIG], ["prompt=a red mug spinning", "system.video.prior.name=diffusers",
                              f"system.video.prior.path={prior}", "system.video.start=0",
                              "system.video.image_probability=0.0", "system.representation.n=300", *overrides])
        system = TextTo4D(cfg, tmp_path / str(lo))
        azimuths = []
        render = system.representation.render
        monkeypatch.setattr(system.representation, "render",
                            lambda cams, *a, **kw: azimuths.append(float(cams.azimuth[0])) or render(cams, *a, **kw))
        g = torch.Generator().manual_seed(0)
        for step in range(4):
            system.distill(step, g)
        assert len(set(azimuths)) == 4 and all(lo <= a <= hi for a in azimuths), (overrides, azimuths)


def test_video_training_films_clips_from_its_azimuth_range_and_records_it(tmp_path, capsys):
    from threedgen.world import check
    from threedgen.world.train import VideoTrainConfig, random_cameras

    cams = random_cameras(200, VideoTrainConfig(), torch.Generator().manual_seed(0))
    assert cams.azimuth.min() >= 30 and cams.azimuth.max() <= 60 and cams.azimuth.std() > 5
    cams = random_cameras(200, VideoTrainConfig(azimuth=(0.0, 360.0)), torch.Generator().manual_seed(0))
    assert cams.azimuth.max() - cams.azimuth.min() > 300
    # the range is recorded in the prior's world.json, where check-prior draws its clips from
    prior = type("P", (), {"world": {"camera": {"azimuth": [-15.0, 15.0]}}})()
    assert check.training_azimuth(prior) == (-15.0, 15.0)
    prior.world = {"camera": {}}  # a prior trained before the range was recorded: every azimuth
    assert check.training_azimuth(prior) == (0.0, 360.0)
    prior.world = None  # a prior without a world.json (a real video model): every azimuth
    assert check.training_azimuth(prior) == (0.0, 360.0)
    out = tmp_path / "run"
    assert main(["train-prior", "--video", "--out", str(out), "--azimuth", "20", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "azimuth low <= high" in err, err
    assert not out.exists()


@pytest.mark.parametrize("option, value, rule", [("--timestep-shift", "0", "timestep_shift > 0"),
                                                  ("--max-loss-weight", "0.5", "max_loss_weight >= 1"),
                                                  ("--temporal-loss-weight", "-1", "temporal_loss_weight >= 0"),
                                                  ("--temporal-lr-scale", "0", "temporal_lr_scale > 0"),
                                                  ("--camera-lr-scale", "-1", "camera_lr_scale > 0"),
                                                  ("--ema-decay", "1.5", "0 <= ema_decay < 1"),
                                                  ("--clips", "-2", "clips_per_combination >= 1"),
                                                  ("--snr-shift", "0.5", "snr_shift >= 1"),
                                                  ("--lr", "0", "lr > 0"), ("--warmup", "-1", "warmup >= 0"),
                                                  ("--steps", "0", "steps >= 1")])
def test_bad_video_training_options_are_one_line_errors_before_anything_is_written(tmp_path, capsys, option,
                                                                                  value, rule):
    out = tmp_path / "run"
    assert main(["train-prior", "--video", "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and rule in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [(["--azimuth", "0", "10", "--fixed-phase"], "--fixed-phase, --azimuth only apply with --video"),
                                           (["--lr", "0"], "training needs lr > 0")])
def test_bad_image_training_options_are_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train-prior", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
