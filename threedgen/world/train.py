"""Training of the embedded prior (``threedgen train-prior``): seeded, logged, resumable by rerun.

Data: the world's shapes rendered once from random cameras as (luminance, alpha) maps, coloured on
the fly (colour is a linear factor, see ``world.colourize``), skipping the held-out combinations.
Loss: the standard epsilon-prediction diffusion loss on pixel-unshuffled images, with the prompt
dropped to "" and the camera dropped to the null vector, each 10% of the time, independently, so
that classifier-free guidance works on both conditions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from threedgen.cameras import make_cameras
from threedgen.priors.diffusion import EMBEDDED_PATH
from threedgen.priors.video import frame_text, video_unet_class
from threedgen.priors.embedded import model as M
from threedgen import world

log = logging.getLogger("threedgen.train_prior")


@dataclass(frozen=True)
class TrainConfig:
    """What every prior trainer reads: ``optimise``'s schedule, ``random_cameras``' ranges and
    ``diffusion_loss``'s weight cap."""

    steps: int = 5000
    batch_size: int = 64
    lr: float = 6e-4
    warmup: int = 100
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    elevation: tuple[float, float] = (-10.0, 70.0)
    azimuth: tuple[float, float] = (0.0, 360.0)  # degrees; 0 looks at the mug's handle (world.py)
    distance: tuple[float, float] = (2.6, 3.0)
    fov_y: float = 30.0
    resolution: int = 32
    seed: int = 0
    save_every: int = 1000
    max_loss_weight: float = 1.0  # see diffusion_loss's max_weight (1: off)

    def rules(self) -> dict[str, bool]:
        """Each rule of a valid config and whether it holds (subclasses add theirs)."""
        return {"steps >= 1": self.steps >= 1, "lr > 0": self.lr > 0, "warmup >= 0": self.warmup >= 0,
                "0 <= ema_decay < 1": 0 <= self.ema_decay < 1, "max_loss_weight >= 1": self.max_loss_weight >= 1,
                "azimuth low <= high": self.azimuth[0] <= self.azimuth[1]}

    def __post_init__(self):
        failed = [rule for rule, ok in self.rules().items() if not ok]
        if failed:
            raise ValueError(f"training needs {', '.join(failed)}")


@dataclass(frozen=True)
class PriorTrainConfig(TrainConfig):
    camera_dropout: float = 0.1
    renders_per_shape: int = 2000
    init_from: str | None = None  # continue training this image prior's folder (None: from scratch)

    def __post_init__(self):
        super().__post_init__()
        if self.init_from is None:
            return
        meta_path = Path(self.init_from) / "world.json"
        if not meta_path.is_file():
            raise ValueError(f"--init-from {self.init_from}: not a prior folder (no world.json)")
        meta = json.loads(meta_path.read_text())
        if meta["vocabulary"] != vocabulary() or "motions" in meta:
            raise ValueError(f"{self.init_from} is not an image prior of this world (vocabulary {meta['vocabulary']})")


def vocabulary() -> list[str]:
    return [*M.ARTICLES, *world.COLOURS, *world.SHAPES]


def random_cameras(n: int, cfg: TrainConfig, g: torch.Generator):
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    return make_cameras(u(*cfg.elevation), u(*cfg.azimuth), u(*cfg.distance), cfg.fov_y, cfg.resolution)


def camera_meta(cfg: TrainConfig) -> dict:
    """The training cameras' ranges, as a prior's world.json records them."""
    return {"elevation": list(cfg.elevation), "azimuth": list(cfg.azimuth), "distance": list(cfg.distance),
            "fov_y": cfg.fov_y}


def render_dataset(cfg: PriorTrainConfig, g: torch.Generator) -> dict:
    """Shape-only renders: luminance/alpha [N, 1, R, R], shape index [N], cameras (N views)."""
    lum, alpha, shape_idx, cams = [], [], [], []
    for s, shape in enumerate(world.SHAPES):
        for start in range(0, cfg.renders_per_shape, 250):
            n = min(250, cfg.renders_per_shape - start)
            c = random_cameras(n, cfg, g)
            r = world.render([shape] * n, ["red"] * n, c)
            lum.append(r.luminance)
            alpha.append(r.alpha)
            shape_idx.append(torch.full((n,), s))
            cams.append(M.camera_embedding(c))
    return {"luminance": torch.cat(lum), "alpha": torch.cat(alpha), "shape": torch.cat(shape_idx),
            "camera": torch.cat(cams)}


def save_pipeline(out: Path, unet, text_encoder, tokenizer, cfg: PriorTrainConfig) -> None:
    """Write a Stable-Diffusion-layout folder (plus world.json) that ``load_embedded`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    M.build_scheduler().save_pretrained(out / "scheduler")
    M.PixelShuffleCodec(factor=2).save_pretrained(out / "vae")
    meta = {"vocabulary": vocabulary(), "shapes": list(world.SHAPES), "colours": list(world.COLOURS),
            "held_out": [list(p) for p in world.HELD_OUT], "resolution": cfg.resolution,
            "camera": camera_meta(cfg),
            "training": asdict(cfg)}
    (out / "world.json").write_text(json.dumps(meta, indent=2))


def text_features(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """[B, MAX_TOKENS, D] hidden states, padding masked."""
    tokens = tokenizer(prompts, padding="max_length", max_length=M.MAX_TOKENS, return_tensors="pt")
    return text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state


def diffusion_loss(unet, alphas: torch.Tensor, x0: torch.Tensor, text: torch.Tensor,
                   g: torch.Generator, timestep_shift: float = 1.0, max_weight: float = 1.0,
                   prediction_type: str = "epsilon", temporal_weight: float = 0.0,
                   **unet_kwargs) -> torch.Tensor:
    """The diffusion loss of an epsilon- or v-predicting UNet (v = sqrt(abar) eps - sqrt(1 - abar) x0);
    x0 [B, C, ...] (images or clips).

    timestep_shift k: timesteps are uniform (k = 1) or drawn as t = T u^(1/k) (density ~ t^(k-1)),
    which spends more of the training on the high-noise steps.
    max_weight g: each sample's loss is weighted by clamp(1 / SNR(t), 1, g) (g = 1: unweighted).
    An epsilon error e at t is an x0 error e / sqrt(SNR), so the plain loss all but ignores x0 at
    high noise, exactly where a clip's layout and motion are decided and where x_t no longer
    shows them: only the prompt can (see docs/video-prior.md). v-prediction has the same cure
    built in: near t = T its target is -x0 itself, at small t it is epsilon.
    temporal_weight l (clips [B, C, T, h, w] only): adds l * mean |e[:, :, k+1] - e[:, :, k]|^2 of
    the prediction error e. An error that is the same in every frame (appearance) adds nothing;
    an error that changes from frame to frame (a motion the UNet did not draw) is counted again,
    so the loss stops being dominated by appearance, which the image prior already knows."""
    noise = torch.randn(x0.shape, generator=g)
    if timestep_shift == 1.0:
        t = torch.randint(0, len(alphas), (len(x0),), generator=g)
    else:
        u = torch.rand(len(x0), generator=g) ** (1.0 / timestep_shift)
        t = (u * len(alphas)).long().clamp(max=len(alphas) - 1)
    a = alphas[t].view(-1, *[1] * (x0.dim() - 1))
    pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, text, **unet_kwargs).sample
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else noise
    err = pred - target
    per_sample = err.square().flatten(1).mean(1)
    if temporal_weight:
        per_sample = per_sample + temporal_weight * err.diff(dim=2).square().flatten(1).mean(1)
    if max_weight == 1.0:
        return per_sample.mean()
    weight = ((1 - alphas[t]) / alphas[t]).clamp(1.0, max_weight)  # 1 / SNR, clamped
    return (weight * per_sample).mean()


def optimise(cfg: TrainConfig, params: list, loss_fn, save, t0: float, lr_scales: list[float] | None = None) -> None:
    """AdamW with warmup + cosine decay, gradient clipping and an EMA of ``params``;
    ``loss_fn(step)`` gives the step's loss, ``save()`` writes the model (called with the EMA
    weights swapped in) every ``cfg.save_every`` steps and at the end. ``lr_scales``: one factor
    on the learning rate per parameter (default 1)."""
    scales = lr_scales or [1.0] * len(params)
    groups = [{"params": [p for p, k in zip(params, scales) if k == scale], "lr": cfg.lr * scale}
              for scale in sorted(set(scales))]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup, cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay)
    bar = tqdm(range(1, cfg.steps + 1), desc="train-prior", mininterval=5)
    for step in bar:
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.info("step %d loss %.5f lr %.2e elapsed %.0f s", step, loss.item(),
                     sched.get_last_lr()[0], time.time() - t0)
        if step % cfg.save_every == 0 or step == cfg.steps:
            with ema_weights(ema, params):
                save()
            log.info("saved EMA weights at step %d", step)
    assert math.isfinite(loss.item())


def train_diffusion(out: Path, cfg: PriorTrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    tokenizer = M.build_tokenizer(vocabulary())
    text_encoder, unet = initial_image_prior(Path(cfg.init_from)) if cfg.init_from else \
        (M.build_text_encoder(len(tokenizer)), M.build_unet())
    codec = M.PixelShuffleCodec(factor=2)
    n_params = sum(p.numel() for p in [*unet.parameters(), *text_encoder.parameters()])
    log.info("unet + text encoder: %.2fM parameters", n_params / 1e6)

    t0 = time.time()
    data = render_dataset(cfg, g)
    log.info("rendered %d training views in %.0f s", len(data["shape"]), time.time() - t0)
    allowed = [[c for c, name in enumerate(world.COLOURS) if (shape, name) not in world.HELD_OUT]
               for shape in world.SHAPES]
    palette = world.colour_tensor(list(world.COLOURS))
    colour_names = list(world.COLOURS)
    alphas = M.build_scheduler().alphas_cumprod

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(data["shape"]), (cfg.batch_size,), generator=g)
        colours = torch.tensor([random.choice(allowed[s]) for s in data["shape"][idx].tolist()])
        images = world.colourize(data["luminance"][idx], data["alpha"][idx], palette[colours])
        prompts = [f"{random.choice(M.ARTICLES)} {colour_names[c]} {world.SHAPES[s]}"
                   for c, s in zip(colours.tolist(), data["shape"][idx].tolist())]
        prompts = ["" if random.random() < cfg.text_dropout else p for p in prompts]
        camera = data["camera"][idx] * (torch.rand(cfg.batch_size, 1, generator=g) >= cfg.camera_dropout)
        text = text_features(tokenizer, text_encoder, prompts)
        return diffusion_loss(unet, alphas, codec.encode(images), text, g, max_weight=cfg.max_loss_weight,
                              class_labels=camera)

    optimise(cfg, [*unet.parameters(), *text_encoder.parameters()], loss_fn,
             lambda: save_pipeline(out, unet, text_encoder, tokenizer, cfg), t0)


def initial_image_prior(folder: Path):
    """(text encoder, UNet) of the image prior at ``folder`` (checked by PriorTrainConfig), to train on."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(folder / "text_encoder"), UNet2DConditionModel.from_pretrained(folder / "unet")


# --- the video prior (``threedgen train-prior --video``) ------------------------------------------
@dataclass(frozen=True)
class VideoTrainConfig(TrainConfig):
    """``init_from``: the folder the video prior starts from. An image prior's UNet is inflated
    (``model.inflate``) and its text encoder gains rows for the video words ("ball" starts as
    "sphere", the motion words as small random vectors); a video prior's folder (an earlier
    training) is loaded as it is, to train on (one without the camera input gains it,
    ``model.with_camera_input``). The clip's camera is dropped to the null camera
    ``camera_dropout`` of the time, as the image prior's is."""

    steps: int = 2000
    batch_size: int = 8  # clips
    lr: float = 2e-4  # fine-tuning from the image prior
    elevation: tuple[float, float] = (-10.0, 60.0)
    # Clips are filmed from one side of the object, as videos film their subjects: over every
    # azimuth a spin is a camera orbit, so the mean spinning clip is the mean still one and the
    # loss never teaches the word (docs/video-prior.md, "Front cameras"). The side is 30-60
    # degrees off the mug's handle, which then shows in profile: seen head-on (azimuth 0) a small
    # turn of the mug barely changes the image, and a 4D mug did not turn ("Cameras on the
    # handle's side").
    azimuth: tuple[float, float] = (30.0, 60.0)
    save_every: int = 250
    clips_per_combination: int = 60
    frames: int = M.VIDEO_FRAMES
    init_from: str = str(EMBEDDED_PATH)
    timestep_shift: float = 1.0  # see diffusion_loss
    random_phase: bool = True  # False: every clip starts at phase 0 (see clip_times)
    prediction_type: str = "epsilon"  # or "v_prediction" (see diffusion_loss)
    temporal_loss_weight: float = 0.0  # see diffusion_loss
    temporal_lr_scale: float = 1.0  # learning-rate factor of the temporal layers (is_temporal)
    snr_shift: float = 1.0  # the noise schedule's SNR divided by snr_shift^2 (model.build_scheduler)
    balance_motions: bool = False  # True: each motion (and still) fills an equal share of the batches
    camera_dropout: float = 0.1
    # learning-rate factor of the camera projection (``time_embedding.cond_proj``, zero at first):
    # at the base rate it had moved little after 500 steps (camera gain on the x0 error 1-3%)
    camera_lr_scale: float = 1.0

    def rules(self) -> dict[str, bool]:
        return {**super().rules(), "prediction_type epsilon or v_prediction":
                self.prediction_type in ("epsilon", "v_prediction"),
                "timestep_shift > 0": self.timestep_shift > 0,
                "temporal_loss_weight >= 0": self.temporal_loss_weight >= 0,
                "temporal_lr_scale > 0": self.temporal_lr_scale > 0,
                "camera_lr_scale > 0": self.camera_lr_scale > 0, "snr_shift >= 1": self.snr_shift >= 1,
                "clips_per_combination >= 1": self.clips_per_combination >= 1,
                "0 <= camera_dropout <= 1": 0 <= self.camera_dropout <= 1}


def video_vocabulary() -> list[str]:
    return [*vocabulary(), *world.SYNONYMS, *world.MOTIONS]


def video_combinations() -> list[tuple[str, str | None]]:
    """(shape, motion or None for still) pairs of the training clips: every shape still, bouncing,
    sliding and pulsing; spinning only where it shows (world.SPIN_DEGREES)."""
    return [(s, m) for s in world.SHAPES for m in (None, *world.MOTIONS)
            if m != "spinning" or s in world.SPIN_DEGREES]


def video_prompt(colour: str, shape: str, motion: str | None, rng: random.Random | None = None) -> str:
    """'a red cube spinning', 'a blue ball bouncing' (a sphere may be called a ball), 'a red cube'."""
    rng = rng or random
    word = rng.choice([shape, *[w for w, s in world.SYNONYMS.items() if s == shape]])
    return " ".join([rng.choice(M.ARTICLES), colour, word, *([motion] if motion else [])])


def clip_times(n: int, frames: int, g: torch.Generator, random_phase: bool = True) -> torch.Tensor:
    """[n, frames] times of n clips: consecutive frames 1/frames apart from a random phase in
    [0, 1), or from phase 0. With phase 0 a motion is the same function of the frame index in
    every clip, so a prior can draw it from the prompt alone at high noise instead of averaging
    over phases (a smeared object). Times run past 1, not wrapped: the motions are periodic in t
    except the spin, which turns on steadily."""
    phase = torch.rand(n, 1, generator=g) if random_phase else torch.zeros(n, 1)
    return phase + torch.arange(frames) / frames


def render_clips(combos: list[tuple[str, str | None]], cameras, times: torch.Tensor):
    """Clip b shows combos[b] from cameras[b] (fixed over the clip) at times[b] [T] ->
    world.WorldRender of [B * T] frames, clip-major (red: recolour with world.colourize)."""
    B, T = times.shape
    shapes = [s for s, _ in combos for _ in range(T)]
    poses = torch.cat([world.motion_pose(m, s, times[b]) for b, (s, m) in enumerate(combos)])
    frames = cameras[torch.arange(B).repeat_interleave(T)]
    return world.render(shapes, ["red"] * len(shapes), frames, poses=poses)


def render_video_dataset(cfg: VideoTrainConfig, g: torch.Generator) -> dict:
    """luminance / alpha [N, T, 1, R, R], combination index [N], camera features [N, CAMERA_DIM]."""
    combos = video_combinations()
    lum, alpha, index, cameras = [], [], [], []
    for k, combo in enumerate(combos):
        for start in range(0, cfg.clips_per_combination, 20):
            n = min(20, cfg.clips_per_combination - start)
            cams = random_cameras(n, cfg, g)
            r = render_clips([combo] * n, cams, clip_times(n, cfg.frames, g, cfg.random_phase))
            lum.append(r.luminance.unflatten(0, (n, cfg.frames)))
            alpha.append(r.alpha.unflatten(0, (n, cfg.frames)))
            index.append(torch.full((n,), k))
            cameras.append(M.camera_embedding(cams))
    return {"luminance": torch.cat(lum), "alpha": torch.cat(alpha), "combo": torch.cat(index),
            "camera": torch.cat(cameras), "combos": combos}


def motion_weights(combos: list[tuple[str, str | None]], combo: torch.Tensor) -> torch.Tensor:
    """combo [N] (each clip's index into combos) -> [N] sampling weights that give every motion
    (still counted as one) an equal share. Spinning shows on two shapes only, so drawing clips
    uniformly gives it 2 batches in 26."""
    motion = [combos[k][1] for k in combo.tolist()]
    count = Counter(motion)
    return torch.tensor([1.0 / count[m] for m in motion])


def save_video_pipeline(out: Path, unet, text_encoder, tokenizer, cfg: VideoTrainConfig) -> None:
    """The video prior's folder: the image prior's layout with a UNetMotionModel, stored in
    float16 (12 MB instead of 24; loading casts it back to the model's dtype)."""
    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(unet).half().save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    M.build_scheduler(cfg.prediction_type, cfg.snr_shift).save_pretrained(out / "scheduler")
    M.PixelShuffleCodec(factor=M.VIDEO_FACTOR).save_pretrained(out / "vae")
    meta = {"vocabulary": video_vocabulary(), "shapes": list(world.SHAPES), "colours": list(world.COLOURS),
            "motions": list(world.MOTIONS), "synonyms": world.SYNONYMS, "frames": cfg.frames,
            "held_out": [list(p) for p in world.HELD_OUT], "resolution": cfg.resolution,
            "camera": camera_meta(cfg),
            "training": asdict(cfg)}
    (out / "world.json").write_text(json.dumps(meta, indent=2))


def initial_video_prior(folder: Path, tokenizer, g: torch.Generator):
    """(text encoder, video UNet) to start training from: the video prior at ``folder``, or one
    that starts as the image prior at ``folder`` does with the null camera (VideoTrainConfig);
    either way with the camera input."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel


    meta = json.loads((folder / "world.json").read_text())
    image_vocab, video_vocab = meta["vocabulary"], video_vocabulary()
    if "motions" in meta:  # an earlier video prior
        if image_vocab != video_vocab:
            raise ValueError(f"{folder}: its vocabulary {image_vocab} is not the video vocabulary")
        unet = video_unet_class(folder).from_pretrained(folder / "unet", torch_dtype=torch.float32)
        return CLIPTextModel.from_pretrained(folder / "text_encoder"), M.with_camera_input(unet)
    if video_vocab[:len(image_vocab)] != image_vocab:
        raise ValueError(f"{folder}: its vocabulary {image_vocab} does not start the video vocabulary")
    text_encoder = extend_vocabulary(CLIPTextModel.from_pretrained(folder / "text_encoder"), tokenizer,
                                     video_vocab[len(image_vocab):], g)
    return text_encoder, M.inflate(UNet2DConditionModel.from_pretrained(folder / "unet"))


def extend_vocabulary(text_encoder, tokenizer, new_words: list[str], g: torch.Generator):
    """Append embedding rows for ``new_words`` (the tokenizer's last ids): a synonym copies its
    shape's row, any other word starts as a random row of the table's scale."""
    table = text_encoder.get_input_embeddings().weight.detach().clone()
    rows = torch.randn(len(new_words), table.shape[1], generator=g) * table.std()
    for i, word in enumerate(new_words):
        if word in world.SYNONYMS:
            rows[i] = table[tokenizer.convert_tokens_to_ids(world.SYNONYMS[word])]
    text_encoder.resize_token_embeddings(len(table) + len(new_words), mean_resizing=False)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[len(table):] = rows
    text_encoder.config.vocab_size = len(table) + len(new_words)
    return text_encoder


def is_temporal(name: str) -> bool:
    """Whether a video UNet's parameter belongs to a temporal layer (the ones inflation adds): a
    UNetMotionModel's motion modules, a UNet3DConditionModel's temporal convolutions and attentions."""
    return "motion_modules." in name or name.startswith("transformer_in.") or ".temp_" in name


def lr_scale(name: str, cfg: VideoTrainConfig) -> float:
    """A video UNet parameter's learning-rate factor: a temporal layer's, the camera projection's, or 1."""
    if is_temporal(name):
        return cfg.temporal_lr_scale
    return cfg.camera_lr_scale if name == M.CAMERA_PROJECTION else 1.0


def train_video(out: Path, cfg: VideoTrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    tokenizer = M.build_tokenizer(video_vocabulary())
    text_encoder, unet = initial_video_prior(Path(cfg.init_from), tokenizer, g)
    codec = M.PixelShuffleCodec(factor=M.VIDEO_FACTOR)
    log.info("video unet + text encoder: %.2fM parameters",
             sum(p.numel() for p in [*unet.parameters(), *text_encoder.parameters()]) / 1e6)
    t0 = time.time()
    data = render_video_dataset(cfg, g)
    log.info("rendered %d training clips of %d frames in %.0f s", len(data["combo"]), cfg.frames, time.time() - t0)
    palette = world.colour_tensor(list(world.COLOURS))
    names = list(world.COLOURS)
    alphas = M.build_scheduler(cfg.prediction_type, cfg.snr_shift).alphas_cumprod

    weights = motion_weights(data["combos"], data["combo"]) if cfg.balance_motions else None

    def loss_fn(step: int) -> torch.Tensor:
        if weights is None:  # each clip equally likely (the draws of the shipped runs)
            idx = torch.randint(len(data["combo"]), (cfg.batch_size,), generator=g)
        else:
            idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)
        combos = [data["combos"][k] for k in data["combo"][idx].tolist()]
        colours = [rng.choice([c for c in names if (s, c) not in world.HELD_OUT]) for s, _ in combos]
        T = cfg.frames
        rgb = world.colourize(data["luminance"][idx].flatten(0, 1), data["alpha"][idx].flatten(0, 1),
                              palette[[names.index(c) for c in colours]].repeat_interleave(T, 0))
        x0 = codec.encode(rgb).unflatten(0, (cfg.batch_size, T)).transpose(1, 2)  # [B, C, T, h, w]
        prompts = ["" if rng.random() < cfg.text_dropout else video_prompt(c, s, m, rng)
                   for c, (s, m) in zip(colours, combos)]
        text = frame_text(unet, text_features(tokenizer, text_encoder, prompts), T)
        camera = data["camera"][idx] * (torch.rand(cfg.batch_size, 1, generator=g) >= cfg.camera_dropout)
        return diffusion_loss(unet, alphas, x0, text, g, timestep_cond=camera,
                              timestep_shift=cfg.timestep_shift, max_weight=cfg.max_loss_weight,
                              prediction_type=cfg.prediction_type, temporal_weight=cfg.temporal_loss_weight)

    named = list(unet.named_parameters())
    scales = [lr_scale(n, cfg) for n, _ in named]
    scales += [1.0] * len(list(text_encoder.parameters()))
    optimise(cfg, [*(p for _, p in named), *text_encoder.parameters()], loss_fn,
             lambda: save_video_pipeline(out, unet, text_encoder, tokenizer, cfg), t0, lr_scales=scales)


class ema_weights:
    """Context manager: swap the EMA weights in, restore the training weights on exit."""

    def __init__(self, ema: EMAModel, params):
        self.ema, self.params = ema, list(params)

    def __enter__(self):
        self.ema.store(self.params)
        self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        self.ema.restore(self.params)
