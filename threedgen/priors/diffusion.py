"""The shared base of every prior family: diffusers' Stable Diffusion folder layout (unet/,
scheduler/, text_encoder[_2]/, tokenizer[_2]/, vae/), loaded and run behind ``priors.base.Prior``.

What every family shares lives here: finding and loading the folder, the frozen CPU text encoders,
the training schedule, v-prediction -> epsilon, and calling a UNet. What differs lives in one
small adapter per family, a subclass of ``DiffusionPrior`` that fills in its hooks (the codec:
``load_vae``, ``factor``, ``encode_images``, ``decode``; and, where the family differs,
``encode_text``, ``unet_inputs``, ``camera_condition``, ``unet_class``, ``load_parts``):

- ``sd.StableDiffusion``: SD 1.x / 2.x, AutoencoderKL latents (epsilon or v-prediction);
- ``sdxl.SDXL``: two text encoders, the pooled embedding and size/crop time ids;
- ``pixel.PixelSpace``: pixel-space models in the shape of DeepFloyd IF stage I;
- ``mvdream.MVDream``: groups of views with their cameras, multi-view attention;
- ``video.TextToVideo``: ModelScope / zeroscope / AnimateDiff-style UNets on clips
  (``video.VideoFrames``: the clip layout, shared with the embedded video prior);
- ``embedded.prior.Embedded`` / ``EmbeddedVideo``: the embedded world's priors (pixel-shuffle
  codec, closed vocabulary, the world's camera features).

Each adapter's ``detects(folder)`` reads the folder's configs; ``threedgen.registry`` holds the
table of families and picks the first that detects a folder, the one place a family is chosen.

A checkpoint is a local folder or a Hugging Face hub id. Offline (``HF_HUB_OFFLINE=1``, or the hub
unreachable) a hub id that is not in the local cache fails at once with one line that says how to
make it available; nothing retries.

Text encoders are kept out of the module tree: they stay on the CPU in float32 whatever device the
prior moves to (each prompt is encoded once and cached), which is the offload that matters most
on a small GPU; ``cpu_offload`` also streams the UNet and VAE through the GPU (accelerate).
"""

from __future__ import annotations

import json
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer

from threedgen.cameras import Cameras
from threedgen.priors.base import PriorLoadError, PromptError

EMBEDDED_PATH = Path(__file__).parent / "embedded" / "weights"
EMBEDDED_VIDEO_PATH = Path(__file__).parent / "embedded" / "video"
# What a hub download fetches: the diffusers components, safetensors only (no .bin / .ckpt twins).
HUB_PATTERNS = ["model_index.json", "scheduler/*", "tokenizer*/*", "text_encoder*/*.json",
                "text_encoder*/*.safetensors", "unet/*.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/*.json", "vae/diffusion_pytorch_model.safetensors"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusionPrior(nn.Module, ABC):
    """A frozen diffusion model in diffusers' layout; see ``threedgen.priors.base.Prior`` for the
    interface and the module docstring for the family hooks.

    text_encoders / tokenizers: one (SD 1/2, pixel models) or two (SDXL); vae: the family's codec
    module (an AutoencoderKL, a PixelShuffleCodec) or None; resolution: the image size renders
    are resized to (default: the UNet's sample size times the codec's ``factor``)."""

    # What a family without them has (adapters override): no camera, single views, images, an
    # open vocabulary, no embedded world.
    has_camera, camera_dim, num_views, video = False, 0, 1, False
    world: dict | None = None
    vocabulary: list[str] | None = None

    def __init__(self, unet: nn.Module, text_encoders: list, tokenizers: list, scheduler: DDPMScheduler,
                 vae: nn.Module | None, resolution: int | None = None):
        super().__init__()
        self.unet, self.vae = unet, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)  # not submodules: CPU
        self.scheduler = scheduler
        self.requires_grad_(False)
        self.eval()
        for te in self.text_encoders:
            te.requires_grad_(False).eval()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        size = unet.config.get("sample_size")
        self.resolution = resolution or (size * self.factor if size else None)
        if not self.resolution:
            raise PriorLoadError("the UNet's config has no sample_size: set system.prior.resolution")
        if self.resolution % self.factor:
            raise PriorLoadError(f"prior resolution {self.resolution} is not a multiple of the VAE's "
                                 f"downsampling factor {self.factor}")
        self.text_encoder_id: str | None = None  # names the text encoder(s) for the embedding cache

    # --- loading ----------------------------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def detects(folder: Path) -> bool:
        """Whether the checkpoint folder's configs are this family's (the registry asks the
        families in its table's order; the first that says yes loads the folder)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, resolution: int | None = None,
                        dtype: str = "float32") -> DiffusionPrior:
        """Load a local folder or a hub id (see ``resolve_checkpoint``) as this family."""
        folder = resolve_checkpoint(str(path))
        check_weights(path, folder)
        prior = cls(**cls.load_parts(folder, DTYPES[dtype]), resolution=resolution)
        prior.text_encoder_id = text_encoder_id(folder)
        return prior

    @classmethod
    def load_parts(cls, folder: Path, dtype: torch.dtype) -> dict:
        """The constructor's arguments read from ``folder`` (families add their own files)."""
        unet = _load(folder, "unet", lambda: cls.unet_class(folder).from_pretrained(folder, subfolder="unet",
                                                                                      torch_dtype=dtype))
        scheduler = _load(folder, "scheduler", lambda: DDPMScheduler.from_pretrained(folder, subfolder="scheduler"))
        vae = _load(folder, "vae", lambda: cls.load_vae(folder, dtype))
        suffixes = [s for s in ("", "_2") if (folder / f"text_encoder{s}").is_dir()]
        encoders = [_load(folder, f"text_encoder{s}", lambda s=s: _load_text_encoder(folder, s)) for s in suffixes]
        tokenizers = [_load(folder, f"tokenizer{s}",
                            lambda s=s: AutoTokenizer.from_pretrained(folder, subfolder=f"tokenizer{s}"))
                      for s in suffixes]
        return {"unet": unet, "text_encoders": encoders, "tokenizers": tokenizers, "scheduler": scheduler,
                "vae": vae}

    @classmethod
    def unet_class(cls, folder: Path) -> type:
        """The diffusers class of ``unet/``: an image UNet (video families name theirs)."""
        return UNet2DConditionModel

    @classmethod
    @abstractmethod
    def load_vae(cls, folder: Path, dtype: torch.dtype) -> nn.Module | None:
        """The family's codec module from ``vae/`` (None for pixel-space families)."""

    def set_memory_options(self, attention_slicing: bool = False, vae_tiling: bool = False,
                           vae_slicing: bool = False, cpu_offload: bool = False) -> None:
        """``PriorConfig``'s memory options (VAE tiling and slicing apply to AutoencoderKL
        families only, see ``sd.StableDiffusion``); cpu_offload streams the UNet and the codec
        through the GPU (accelerate)."""
        if attention_slicing:
            self.unet.set_attention_slice("auto")
        if cpu_offload:
            from accelerate import cpu_offload as offload

            for module in (self.unet, self.vae):
                if module is not None:
                    offload(module, execution_device=torch.device("cuda"))

    # --- text -------------------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """Raise PromptError for a prompt with more tokens than a text encoder reads (closed
        vocabularies check their words first, ``embedded.prior``)."""
        for tok in self.tokenizers:
            n = len(tok(self.text(prompt), verbose=False).input_ids)
            if n > tok.model_max_length:
                raise PromptError(f"prompt {prompt!r}: {n} tokens, but the text encoder reads at most "
                                  f"{tok.model_max_length} (the rest would be cut); shorten it")

    def text(self, prompt: str) -> str:
        """The text the tokenizer sees (the prompt itself; a closed vocabulary keeps its words)."""
        return prompt

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """prompts (B strings, "" = unconditional) -> [B, L, D] (the family's ``encode_text``),
        on the prior's device and dtype."""
        for p in prompts:
            self.check_prompt(p)
        return self.encode_text([self.text(p) for p in prompts]).to(self.alphas_cumprod.device, self.unet.dtype)

    def encode_text(self, texts: list[str]) -> Tensor:
        """B texts -> [B, L, D] on the CPU: each encoder's last hidden state [B, L, D_i],
        concatenated along D."""
        return torch.cat([out.last_hidden_state for out in self.encoder_outputs(texts)], dim=-1)

    def encoder_outputs(self, texts: list[str], hidden_states: bool = False) -> list:
        """Every text encoder's output on B texts padded to its tokenizer's length (padding
        masked for encoders trained so); ``hidden_states``: with every layer's."""
        outs = []
        for te, tok in zip(self.text_encoders, self.tokenizers):
            ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                      return_tensors="pt")
            mask = ids.attention_mask if getattr(te.config, "use_attention_mask", False) else None
            outs.append(te(ids.input_ids, attention_mask=mask, output_hidden_states=hidden_states))
        return outs

    # --- images (the family's codec) --------------------------------------------------------------
    @property
    @abstractmethod
    def factor(self) -> int:
        """f, the codec's downsampling: x is [B, C, R/f, R/f]."""

    @abstractmethod
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, R, R] in [0, 1] -> x [B, C, R/f, R/f], differentiable."""

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> rgb [B, 3, R, R] in [0, 1] (unclamped)."""

    # --- denoiser ---------------------------------------------------------------------------------
    def camera_condition(self, cameras: Cameras | None, batch: int, null: bool = False) -> Tensor | None:
        """None: no camera conditioning (camera-conditioned families return [B, Dc])."""
        return None

    @staticmethod
    def camera_input_width(config) -> int | None:
        """The width of the camera features a UNet of this layout takes (``unet_inputs`` routes
        them): an image UNet's projected class embedding input, else None."""
        if config.get("class_embed_type") != "projection":
            return None
        return config.get("projection_class_embeddings_input_dim")

    def unet_inputs(self, unet: nn.Module, x_t: Tensor, text: Tensor,
                    class_labels: Tensor | None) -> tuple[Tensor, dict]:
        """(encoder hidden states [B, L, D], keyword arguments) for ``unet`` on x_t: an image
        UNet takes the camera features [B, Dc] as its class labels."""
        return text, {"class_labels": None if class_labels is None else class_labels.to(unet.dtype)}

    def run_unet(self, unet: nn.Module, x_t: Tensor, t: Tensor, text: Tensor, class_labels: Tensor | None) -> Tensor:
        """Any UNet of this prior's family (its own, or a LoRA copy) on x_t [B, C, h, w] -> its raw
        prediction [B, C, h, w] in float32 (the first C channels: IF-style UNets append a variance)."""
        hidden, extra = self.unet_inputs(unet, x_t, text, class_labels)
        out = unet(x_t.to(unet.dtype), t, hidden.to(unet.dtype), **extra).sample.float()
        return out[:, :x_t.shape[1]]

    def predict_noise(self, x_t: Tensor, t: Tensor, text: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B, C, h, w], t [B] integer timesteps, text [B, L, D], camera [B, Dc] -> eps [B, C, h, w]
        (float32, whatever the UNet's dtype; v-prediction is converted)."""
        out = self.run_unet(self.unet, x_t, t, text, camera)
        if self.scheduler.config.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, *[1] * (x_t.dim() - 1))
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out


def read_config(folder: Path, name: str) -> dict:
    """A JSON file of the checkpoint (``unet/config.json``, ``world.json``, ...); {} if absent."""
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def check_weights(path: str | Path, folder: Path) -> None:
    """The weights files every family needs, present (else a PriorLoadError naming the file)."""
    hint = "; run `threedgen train-prior` or reinstall the package" if folder == EMBEDDED_PATH else ""
    needed = [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")]
    if (folder / "text_encoder_2").is_dir():
        needed.append(("text_encoder_2", "model.safetensors"))
    for sub, weights in needed:
        if not (folder / sub / weights).is_file():
            raise PriorLoadError(f"prior {path}: missing weights file {sub}/{weights}{hint}")


def text_encoder_id(folder: Path) -> str:
    """The folder and its text encoders' weights files (size, mtime): a key for cached embeddings."""
    stats = [(folder / f"{te}/model.safetensors").stat() for te in ("text_encoder", "text_encoder_2")
             if (folder / te).is_dir()]
    return f"{folder.resolve()}|" + "|".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)


def _load(folder: Path, sub: str, loader):
    """Run one component's loader; any failure is a PriorLoadError naming the component."""
    try:
        return loader()
    except PriorLoadError:
        raise
    except Exception as e:  # safetensors / json / shape errors all mean a broken checkpoint
        first = str(e).splitlines()[0] if str(e) else ""
        raise PriorLoadError(f"prior {folder}: cannot load {sub}/ ({type(e).__name__}: {first})") from e


def _load_text_encoder(folder: Path, suffix: str) -> nn.Module:
    """The transformers class the config names (CLIPTextModel, CLIPTextModelWithProjection,
    T5EncoderModel, ...), in float32 on the CPU."""
    config = read_config(folder, f"text_encoder{suffix}/config.json")
    name = (config.get("architectures") or ["CLIPTextModel"])[0]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise PriorLoadError(f"prior {folder}: text_encoder{suffix}/ names an unknown class {name!r}")
    return cls.from_pretrained(folder, subfolder=f"text_encoder{suffix}", torch_dtype=torch.float32)


# --- where a PriorConfig's checkpoint comes from (threedgen.registry.PRIOR_SOURCES) ---------------
def embedded_folder(cfg) -> Path:
    """name: embedded, the image prior shipped in the package."""
    return EMBEDDED_PATH


def embedded_video_folder(cfg) -> Path:
    """name: embedded_video, the text-to-video prior shipped in the package."""
    if not (EMBEDDED_VIDEO_PATH / "unet").is_dir():
        raise PriorLoadError(f"the embedded video prior is missing from {EMBEDDED_VIDEO_PATH}: reinstall threedgen, "
                             f"or train it with `threedgen train-prior --video` and copy prior-training/video there")
    return EMBEDDED_VIDEO_PATH


def diffusers_folder(cfg) -> Path:
    """name: diffusers, ``cfg.path``: a local folder or a hub id."""
    return resolve_checkpoint(cfg.path)


def check_device_options(dtype: str, cpu_offload: bool) -> None:
    """Half precision and CPU offload need CUDA: a clear error before anything loads."""
    if (dtype != "float32" or cpu_offload) and not torch.cuda.is_available():
        raise PriorLoadError(f"system.prior: {'cpu_offload' if cpu_offload else 'dtype ' + dtype} "
                             "needs a CUDA device; use dtype float32 and cpu_offload false on CPU")


# --- the Hugging Face hub -------------------------------------------------------------------------
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
