"""Frozen diffusion priors in diffusers' Stable Diffusion folder layout, behind one interface.

One loader serves every family that keeps this layout:

- the embedded prior (pixel space behind a lossless ``PixelShuffleCodec``; ``world.json`` declares
  its closed vocabulary and camera features);
- Stable Diffusion 1.x / 2.x (``vae/`` an AutoencoderKL; epsilon or v-prediction);
- SDXL (``text_encoder_2/`` + ``tokenizer_2/``; the UNet's ``addition_embed_type`` "text_time"
  takes the pooled prompt embedding and the size/crop "time ids");
- pixel-space models in the shape of DeepFloyd IF stage I (no ``vae/``; a UNet that also predicts
  its variance returns 2C channels, of which the first C are eps; any text encoder class that
  transformers names in its config, e.g. T5EncoderModel);
- text-to-video models (ModelScope, zeroscope: ``unet/`` a UNet3DConditionModel; AnimateDiff-style
  and the embedded video prior: a UNetMotionModel): clips [B, 3, T, H, W] are encoded frame by
  frame into [B, C, T, h, w] latents, one timestep per clip.

A checkpoint is a local folder or a Hugging Face hub id. Offline (``HF_HUB_OFFLINE=1``, or the hub
unreachable) a hub id that is not in the local cache fails at once with one line that says how to
make it available; nothing retries.

Text encoders are kept out of the module tree: they stay on the CPU in float32 whatever device the
prior moves to (each prompt is encoded once and cached), which is the offload that matters most
on a small GPU; ``cpu_offload`` also streams the UNet and VAE through the GPU (accelerate).

SDXL's extra conditioning travels inside the text tensor, so that everything that batches, picks or
caches prompt embeddings works unchanged: ``encode_prompts`` returns [B, L + 1, D], whose last row
holds the pooled embedding (zero-padded to D).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel
from torch import Tensor, nn
from transformers import AutoTokenizer

from threedgen.cameras import Cameras
from threedgen.priors.base import PriorLoadError, PromptError, cache_root, prompt_words, unreadable
from threedgen.priors.embedded.model import CAMERA_DIM, PixelShuffleCodec, camera_embedding, frame_text
from threedgen.priors.mvdream import converted_folder, install_multiview_attention, mvdream_camera

EMBEDDED_PATH = Path(__file__).parent / "embedded" / "weights"
EMBEDDED_VIDEO_PATH = Path(__file__).parent / "embedded" / "video"
# What a hub download fetches: the diffusers components, safetensors only (no .bin / .ckpt twins).
HUB_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer*/*", "text_encoder*/*.json",
                "text_encoder*/*.safetensors", "unet/*.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/*.json", "vae/diffusion_pytorch_model.safetensors"]
VIDEO_UNETS = (UNet3DConditionModel, UNetMotionModel)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusionPrior(nn.Module):
    """A frozen diffusion model. See ``threedgen.priors.base`` for the interface.

    text_encoders / tokenizers: one (SD 1/2, pixel models) or two (SDXL); vae: an AutoencoderKL,
    a PixelShuffleCodec, or None (pixel space); resolution: the image size renders are resized to
    (default: the UNet's sample size times the VAE's downsampling); multiview: {"num_views": V}
    for MVDream-style UNets (see ``threedgen.priors.mvdream``)."""

    def __init__(self, unet: UNet2DConditionModel, text_encoders: list, tokenizers: list,
                 scheduler: DDPMScheduler, vae: nn.Module | None, world: dict | None = None,
                 resolution: int | None = None, multiview: dict | None = None):
        super().__init__()
        self.unet, self.vae = unet, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)  # not submodules: CPU
        self.scheduler, self.world = scheduler, world
        self.requires_grad_(False)
        self.eval()
        for te in self.text_encoders:
            te.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.factor = _downsampling(vae)
        size = unet.config.get("sample_size")
        self.resolution = resolution or (size * self.factor if size else None)
        if not self.resolution:
            raise PriorLoadError("the UNet's config has no sample_size: set system.prior.resolution")
        if self.resolution % self.factor:
            raise PriorLoadError(f"prior resolution {self.resolution} is not a multiple of the VAE's "
                                 f"downsampling factor {self.factor}")
        self.vocabulary = world["vocabulary"] if world else None
        config = unet.config
        self.num_views = multiview["num_views"] if multiview else 1
        if multiview:
            install_multiview_attention(unet, self.num_views)
        self.sdxl = config.get("addition_embed_type") == "text_time"
        self.video = isinstance(unet, VIDEO_UNETS)
        # The camera: the embedded world's features (an image UNet's class embedding, a video
        # UNet's timestep_cond), MVDream's c2w, or none.
        world_camera = world is not None and (
            config.get("time_cond_proj_dim") == CAMERA_DIM if self.video else
            config.get("class_embed_type") == "projection"
            and config.get("projection_class_embeddings_input_dim") == CAMERA_DIM)
        self.camera_kind = "c2w" if multiview else "world" if world_camera else None
        self.text_encoder_id: str | None = None  # names the text encoder(s) for the embedding cache

    @classmethod
    def from_pretrained(cls, path: str | Path = EMBEDDED_PATH, resolution: int | None = None,
                        dtype: str = "float32") -> DiffusionPrior:
        """Load a local folder or a hub id (see ``resolve_checkpoint``)."""
        folder = resolve_checkpoint(str(path))
        hint = "; run `threedgen train-prior` or reinstall the package" if folder == EMBEDDED_PATH else ""
        for sub, weights in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")]:
            if not (folder / sub / weights).is_file():
                raise PriorLoadError(f"prior {path}: missing weights file {sub}/{weights}{hint}")
        torch_dtype = DTYPES[dtype]
        unet = _load(folder, "unet", lambda: unet_class(folder).from_pretrained(folder, subfolder="unet",
                                                                                  torch_dtype=torch_dtype))
        scheduler = _load(folder, "scheduler", lambda: DDPMScheduler.from_pretrained(folder, subfolder="scheduler"))
        vae = None
        if (folder / "vae").is_dir():
            vae = _load(folder, "vae", lambda: _load_vae(folder, torch_dtype))
        encoders, tokenizers = [], []
        for suffix in ("", "_2"):
            if not (folder / f"text_encoder{suffix}").is_dir():
                continue
            if not (folder / f"text_encoder{suffix}" / "model.safetensors").is_file():
                raise PriorLoadError(f"prior {path}: missing weights file text_encoder{suffix}/model.safetensors")
            encoders.append(_load(folder, f"text_encoder{suffix}", lambda s=suffix: _load_text_encoder(folder, s)))
            tokenizers.append(_load(folder, f"tokenizer{suffix}",
                                    lambda s=suffix: AutoTokenizer.from_pretrained(folder, subfolder=f"tokenizer{s}")))
        read = lambda name: json.loads((folder / name).read_text()) if (folder / name).is_file() else None  # noqa: E731
        prior = cls(unet, encoders, tokenizers, scheduler, vae, read("world.json"), resolution, read("multiview.json"))
        stats = [(folder / f"{te}/model.safetensors").stat() for te in ("text_encoder", "text_encoder_2")
                 if (folder / te).is_dir()]
        prior.text_encoder_id = f"{folder.resolve()}|" + "|".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)
        return prior

    # --- text -------------------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError for a prompt the text encoder would not read whole: words outside a
        closed vocabulary or characters it has no token for, or more tokens than it reads."""
        if self.vocabulary is not None:
            unknown = [w for w in prompt_words(prompt) if w not in self.vocabulary]
            if unknown:
                raise PromptError(f"prompt {prompt!r}: unknown word{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(map(repr, unknown))}; the prior's vocabulary is: "
                                  f"{', '.join(self.vocabulary)}")
            if unreadable(prompt):
                raise PromptError(f"prompt {prompt!r}: unreadable character(s) {' '.join(unreadable(prompt))}; "
                                  "the prior reads words of its vocabulary")
        for tok in self.tokenizers:
            n = len(tok(self.text(prompt), verbose=False).input_ids)
            if n > tok.model_max_length:
                raise PromptError(f"prompt {prompt!r}: {n} tokens, but the text encoder reads at most "
                                  f"{tok.model_max_length} (the rest would be cut); shorten it")

    def text(self, prompt: str) -> str:
        """The text the tokenizer sees: a closed vocabulary's words alone."""
        return " ".join(prompt_words(prompt)) if self.vocabulary is not None else prompt

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """prompts (B strings, "" = unconditional) -> [B, L, D] (SDXL: [B, L + 1, D], see the
        module docstring), on the prior's device and dtype."""
        for p in prompts:
            self.check_prompt(p)
        texts = [self.text(p) for p in prompts]
        hidden, pooled = [], None
        for te, tok in zip(self.text_encoders, self.tokenizers):
            ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt")
            mask = ids.attention_mask if getattr(te.config, "use_attention_mask", False) else None
            out = te(ids.input_ids, attention_mask=mask, output_hidden_states=self.sdxl)
            # SDXL reads the penultimate layer of both encoders and the second one's pooled output.
            hidden.append(out.hidden_states[-2] if self.sdxl else out.last_hidden_state)
            pooled = getattr(out, "text_embeds", None)
        text = torch.cat(hidden, dim=-1)
        if self.sdxl:
            row = torch.zeros(len(prompts), 1, text.shape[-1])
            row[:, 0, :pooled.shape[-1]] = pooled
            text = torch.cat([text, row], dim=1)
        return text.to(self.alphas_cumprod.device, self.unet.dtype)

    # --- images -----------------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, C, R/f, R/f] (differentiable); clips [B, 3, T, R, R]
        -> [B, C, T, R/f, R/f], frame by frame. AutoencoderKL: the scaled posterior mean
        (deterministic, so a step is reproducible)."""
        if rgb.dim() == 5:
            return _per_frame(self.encode_images, rgb)
        if self.vae is None:
            return rgb * 2 - 1
        if isinstance(self.vae, PixelShuffleCodec):
            return self.vae.encode(rgb)
        latent = self.vae.encode((rgb * 2 - 1).to(self.vae.dtype)).latent_dist.mean
        return (latent * self.vae.config.scaling_factor).float()

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> rgb [B, 3, R, R] in [0, 1] (unclamped); clips frame by frame."""
        if x.dim() == 5:
            return _per_frame(self.decode, x)
        if self.vae is None:
            return (x + 1) / 2
        if isinstance(self.vae, PixelShuffleCodec):
            return self.vae.decode(x)
        return (self.vae.decode((x / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float() + 1) / 2

    # --- denoiser ---------------------------------------------------------------------------------
    @property
    def has_camera(self) -> bool:
        return self.camera_kind is not None

    @property
    def camera_dim(self) -> int:
        """Dc, the width of ``camera_condition``'s features (0 without camera conditioning)."""
        return {None: 0, "world": CAMERA_DIM, "c2w": 16}[self.camera_kind]

    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor | None:
        """[B, Dc] camera features: the world's (zeros = the null camera, for ``null`` or no
        cameras) or MVDream's c2w (which has no null camera: ``null`` returns the cameras' own)."""
        device = self.alphas_cumprod.device
        if self.camera_kind is None:
            return None
        if self.camera_kind == "c2w":
            if cameras is None:
                raise ValueError("a multi-view prior needs the views' cameras")
            return mvdream_camera(cameras).to(device)
        if cameras is None or null:
            return torch.zeros(batch, CAMERA_DIM, device=device)
        return camera_embedding(cameras).to(device)

    def unet_kwargs(self, text: Tensor) -> tuple[Tensor, dict]:
        """Split SDXL's packed text [B, L + 1, D] into (hidden states, added_cond_kwargs)."""
        if not self.sdxl:
            return text, {}
        pooled_dim = self.unet.config.projection_class_embeddings_input_dim - 6 * self.unet.config.addition_time_embed_dim
        R = self.resolution
        # (original height, width, crop top, left, target height, width) of a full, uncropped render
        time_ids = torch.tensor([R, R, 0, 0, R, R], device=text.device, dtype=text.dtype).expand(len(text), 6)
        return text[:, :-1], {"added_cond_kwargs": {"text_embeds": text[:, -1, :pooled_dim], "time_ids": time_ids}}

    def run_unet(self, unet: nn.Module, x_t: Tensor, t: Tensor, text: Tensor, class_labels: Tensor | None) -> Tensor:
        """Any UNet of this prior's family (its own, or a LoRA copy) on x_t [B, C, h, w] -> its raw
        prediction [B, C, h, w] in float32 (the first C channels: IF-style UNets append a variance)."""
        hidden, extra = self.unet_kwargs(text)
        dtype = unet.dtype
        if self.video:  # clips [B, C, T, h, w]; the camera, if any, is the timestep condition
            hidden = frame_text(unet, hidden, x_t.shape[2])
            if class_labels is not None:
                extra["timestep_cond"] = class_labels.to(dtype)
        else:
            extra["class_labels"] = None if class_labels is None else class_labels.to(dtype)
        out = unet(x_t.to(dtype), t, hidden.to(dtype), **extra).sample.float()
        return out[:, :x_t.shape[1]]

    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B, C, h, w], t [B] integer timesteps, text [B, L, D], camera [B, Dc] -> eps [B, C, h, w]
        (float32, whatever the UNet's dtype; v-prediction is converted)."""
        out = self.run_unet(self.unet, x_t, t, text, camera)
        if self.scheduler.config.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, *[1] * (x_t.dim() - 1))
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out


def _per_frame(fn, clip: Tensor) -> Tensor:
    """Apply an image function to each frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    out = fn(clip.transpose(1, 2).flatten(0, 1))  # [B*T, C', H', W']
    return out.unflatten(0, (len(clip), -1)).transpose(1, 2)


def unet_class(folder: Path):
    """UNet2DConditionModel, or the video UNet class a text-to-video checkpoint's config names."""
    name = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
    return {cls.__name__: cls for cls in VIDEO_UNETS}.get(name, UNet2DConditionModel)


def _downsampling(vae) -> int:
    if vae is None:
        return 1
    if isinstance(vae, PixelShuffleCodec):
        return vae.config.factor
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _load(folder: Path, sub: str, loader):
    """Run one component's loader; any failure is a PriorLoadError naming the component."""
    try:
        return loader()
    except PriorLoadError:
        raise
    except Exception as e:  # safetensors / json / shape errors all mean a broken checkpoint
        first = str(e).splitlines()[0] if str(e) else ""
        raise PriorLoadError(f"prior {folder}: cannot load {sub}/ ({type(e).__name__}: {first})") from e


def _load_vae(folder: Path, dtype: torch.dtype) -> nn.Module:
    """``vae/``: our lossless PixelShuffleCodec (a config, no weights) or an AutoencoderKL."""
    config = json.loads((folder / "vae" / "config.json").read_text())
    if config.get("_class_name") == "PixelShuffleCodec":
        return PixelShuffleCodec.from_config(PixelShuffleCodec.load_config(folder, subfolder="vae"))
    return AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)


def _load_text_encoder(folder: Path, suffix: str) -> nn.Module:
    """The transformers class the config names (CLIPTextModel, CLIPTextModelWithProjection,
    T5EncoderModel, ...), in float32 on the CPU."""
    config = json.loads((folder / f"text_encoder{suffix}" / "config.json").read_text())
    name = (config.get("architectures") or ["CLIPTextModel"])[0]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise PriorLoadError(f"prior {folder}: text_encoder{suffix}/ names an unknown class {name!r}")
    return cls.from_pretrained(folder, subfolder=f"text_encoder{suffix}", torch_dtype=torch.float32)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint, no retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(name: str, fetch, what: str = "prior", setting: str = "system.prior.path") -> Path:
    """``fetch(local_files_only) -> path`` from the Hugging Face cache, else downloaded when the
    hub is allowed and reachable; offline, one line that says how to make it available.
    ``what`` names the model in messages, ``setting`` the config key that takes a local folder."""
    try:
        return Path(fetch(True))
    except Exception:  # not cached (LocalEntryNotFoundError), or an incomplete cache entry
        pass
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE=1" if hub_offline() else "the hub cannot be reached"
        raise PriorLoadError(
            f"{what} {name!r} is not in the local Hugging Face cache and {why}: on a connected machine run "
            f"`hf download {name}` (then copy ~/.cache/huggingface), or set {setting} to a local folder")
    try:
        return Path(fetch(False))
    except Exception as e:
        raise PriorLoadError(f"{what} {name!r}: download failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def resolve_file(name: str) -> Path:
    """A local file, or "org/repo/filename" on the hub -> its path in the Hugging Face cache."""
    local = Path(name).expanduser()
    if local.is_file():
        return local
    parts = name.split("/")
    if local.exists() or name.startswith((".", "/", "~")) or len(parts) < 3:
        raise PriorLoadError(f"prior {name}: no such file (and not a hub file of the form org/repo/filename)")
    from huggingface_hub import hf_hub_download

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return _from_hub(name, lambda cached: hf_hub_download(repo, filename, local_files_only=cached))


def resolve_checkpoint(name: str, patterns: list[str] = HUB_PATTERNS, what: str = "prior",
                       setting: str = "system.prior.path") -> Path:
    """A local folder, or a hub id ("org/model") -> its folder in the Hugging Face cache,
    downloaded (the files matching ``patterns``: by default the diffusers components,
    safetensors only) when online and not cached yet. ``what`` and ``setting``: see ``_from_hub``."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise PriorLoadError(f"{what} {name}: no such folder (and not a hub id of the form org/model)")
    from huggingface_hub import snapshot_download

    return _from_hub(name, lambda cached: snapshot_download(name, allow_patterns=patterns, local_files_only=cached),
                     what, setting)


def load_prior(cfg) -> DiffusionPrior:
    """Build the prior a ``PriorConfig`` names."""
    if (cfg.dtype != "float32" or cfg.cpu_offload) and not torch.cuda.is_available():
        raise PriorLoadError(f"system.prior: {'cpu_offload' if cfg.cpu_offload else 'dtype ' + cfg.dtype} "
                             "needs a CUDA device; use dtype float32 and cpu_offload false on CPU")
    if cfg.name == "mvdream":  # a single file + the SD 2.1 base folder -> a converted folder, made once
        path = converted_folder(resolve_file(cfg.path), resolve_checkpoint(cfg.base), cache_root() / "priors")
    else:
        path = {"embedded": EMBEDDED_PATH, "embedded_video": EMBEDDED_VIDEO_PATH}.get(cfg.name, cfg.path)
    if cfg.name == "embedded_video" and not (EMBEDDED_VIDEO_PATH / "unet").is_dir():
        raise PriorLoadError(f"the embedded video prior is missing from {EMBEDDED_VIDEO_PATH}: reinstall threedgen, "
                             f"or train it with `threedgen train-prior --video` and copy prior-training/video there")
    prior = DiffusionPrior.from_pretrained(path, resolution=cfg.resolution, dtype=cfg.dtype)
    if cfg.attention_slicing:
        prior.unet.set_attention_slice("auto")
    if cfg.vae_tiling and isinstance(prior.vae, AutoencoderKL):
        prior.vae.enable_tiling()
    if cfg.vae_slicing and isinstance(prior.vae, AutoencoderKL):
        prior.vae.enable_slicing()
    if cfg.cpu_offload:
        from accelerate import cpu_offload

        for module in (prior.unet, prior.vae):
            if module is not None:
                cpu_offload(module, execution_device=torch.device("cuda"))
    return prior


def load_video_prior(cfg) -> DiffusionPrior:
    """The prior a ``PriorConfig`` names, checked to be a text-to-video model."""
    prior = load_prior(cfg)
    if not prior.video:
        raise PriorLoadError("system.video.prior: not a text-to-video model (its UNet has no time axis)")
    return prior
