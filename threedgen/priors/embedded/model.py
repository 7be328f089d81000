"""Architecture of the embedded prior, built only from diffusers / transformers parts.

The saved folder has Stable Diffusion's layout (unet/, text_encoder/, tokenizer/, scheduler/,
vae/), so it loads through the same ``from_pretrained`` calls. The "vae" is a lossless
pixel-unshuffle codec: 32x32x3 pixels in [0, 1] <-> 16x16x12 "latents" in [-1, 1]. It keeps the
latent-diffusion code path and makes the UNet about 3x cheaper than one at full resolution.

The video prior has the same layout with an AnimateDiff ``UNetMotionModel`` (the image UNet's
spatial layers, the camera through ``time_cond_proj_dim``, plus motion modules: temporal
attention over the frames with sinusoidal frame positions) on clips of VIDEO_FRAMES frames in
the image prior's 16x16x12 latents. Its spatial layers start from the image prior's weights
(``inflate``), its motion modules as the identity, so training begins from a frame-by-frame
image denoiser and only has to learn motion and coherence across frames (AnimateDiff). A
``UNet3DConditionModel`` was tried first (its temporal attention has no frame positions).
Neither learnt the motion words on the plain cosine schedule; what taught this one was dividing
the schedule's SNR (``build_scheduler``'s ``snr_shift``), see docs/video-prior.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, ModelMixin, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import logging as diffusers_logging
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from threedgen.cameras import Cameras

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
ARTICLES = ("a", "an", "the")
MAX_TOKENS = 8
CAMERA_DIM = 10
VIDEO_FRAMES, VIDEO_FACTOR = 8, 2
REFERENCE_DISTANCE = 2.8  # the world's camera distances are encoded relative to this


class PixelShuffleCodec(ModelMixin, ConfigMixin):
    """Lossless stand-in for a VAE: pixels [B, 3, H, W] in [0, 1] <-> latents [B, 3f^2, H/f, W/f]."""

    @register_to_config
    def __init__(self, factor: int = 2):
        super().__init__()

    def encode(self, images: Tensor) -> Tensor:
        return F.pixel_unshuffle(images * 2 - 1, self.config.factor)

    def decode(self, latents: Tensor) -> Tensor:
        return (F.pixel_shuffle(latents, self.config.factor) + 1) / 2


def camera_embedding(cameras: Cameras) -> Tensor:
    """[B] cameras -> [B, CAMERA_DIM] features; the all-zero vector is the null camera.

    Azimuth is encoded at frequencies 1, 2 and 4 so that the 90-degree period of the cube and the
    full period of the mug are both easy to read; the last entry flags a present camera.
    """
    el, az = torch.deg2rad(cameras.elevation), torch.deg2rad(cameras.azimuth)
    feats = [torch.sin(el), torch.cos(el)]
    for k in (1, 2, 4):
        feats += [torch.sin(k * az), torch.cos(k * az)]
    feats += [(cameras.distance - REFERENCE_DISTANCE) / 0.2, torch.ones_like(el)]
    return torch.stack(feats, dim=-1)


def build_tokenizer(words: list[str], specials: tuple[str, ...] = SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: '<bos> word word ... <eos> <pad>...', MAX_TOKENS long; ids follow
    ``specials`` (the four special tokens in id order), then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2, projection_dim=64,
                            use_attention_mask=True)  # padding is masked, in training and in use
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    """About 4M parameters on 16x16x12 latents; camera through a projected class embedding."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=12, out_channels=12, layers_per_block=1,
        block_out_channels=(32, 64, 128), norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)


def motion_adapter() -> MotionAdapter:
    """AnimateDiff motion modules for ``build_unet``'s blocks: one temporal transformer after each
    spatial layer (and in the mid block), 4 heads, frame positions up to 32; about 1.8M
    parameters. Their output projections start at zero, so each module starts as the identity."""
    adapter = MotionAdapter(block_out_channels=(32, 64, 128), motion_layers_per_block=1,
                            motion_num_attention_heads=4, motion_norm_num_groups=16,
                            motion_max_seq_length=32, use_motion_mid_block=True)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".proj_out." in name:
                p.zero_()
    return adapter


def build_video_unet() -> UNetMotionModel:
    """About 6M parameters on [B, 12, T, 16, 16] clip latents; text, and the clip's camera
    [B, CAMERA_DIM] as ``timestep_cond`` (see ``with_camera_input``)."""
    return with_camera_input(_with_motion(_camera_blind(build_unet())))


def _camera_blind(image_unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The image UNet's architecture without its camera class embedding, which ``UNetMotionModel``
    lacks (``with_camera_input`` gives the video UNet its camera another way)."""
    return UNet2DConditionModel(**{**image_unet.config, "class_embed_type": None,
                                   "projection_class_embeddings_input_dim": None})


CAMERA_PROJECTION = "time_embedding.cond_proj.weight"  # the video UNet's camera input (with_camera_input)


@torch.no_grad()
def with_camera_input(unet: UNetMotionModel) -> UNetMotionModel:
    """A camera-blind video UNet (``time_cond_proj_dim`` None, as the first shipped video priors)
    given the camera input, its projection at zero (float32): it predicts exactly as before for
    every camera until trained. A UNet that has the input is returned as it is.

    The input is ``time_cond_proj_dim``: a bias-free projection of the camera features added to
    the sinusoidal timestep features, so that the all-zero null camera adds nothing.

    Why the video prior needs the camera: a clip of an object spinning about the vertical axis is
    the still object seen from an orbiting camera, so over unknown camera azimuths the mean
    spinning clip is the mean still clip and a camera-blind prior cannot learn "spinning"
    (docs/video-prior.md)."""
    if unet.config.time_cond_proj_dim == CAMERA_DIM:
        return unet
    if unet.config.time_cond_proj_dim is not None:
        raise ValueError(f"video UNet: time_cond_proj_dim {unet.config.time_cond_proj_dim}, not {CAMERA_DIM}")
    state = unet.state_dict()
    upgraded = UNetMotionModel.from_config({**unet.config, "time_cond_proj_dim": CAMERA_DIM})
    state[CAMERA_PROJECTION] = torch.zeros_like(upgraded.state_dict()[CAMERA_PROJECTION])
    upgraded.load_state_dict(state)
    return upgraded


def _with_motion(image_unet: UNet2DConditionModel) -> UNetMotionModel:
    """``UNetMotionModel.from_unet2d`` with fresh ``motion_adapter`` modules. It casts the model to
    the UNet's dtype, which makes diffusers warn about float32 modules there are none of: the
    warning is silenced."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return UNetMotionModel.from_unet2d(image_unet, motion_adapter())
    finally:
        diffusers_logging.set_verbosity(verbosity)


@torch.no_grad()
def inflate(image_unet: UNet2DConditionModel) -> UNetMotionModel:
    """A video UNet that, as built, denoises every frame as ``image_unet`` does with the null camera,
    whatever camera it is given.

    Spatial weights are copied; the null camera's class embedding (a constant added to the time
    embedding) is folded into the time embedding's bias; the new camera input
    (``with_camera_input``) starts at zero; the motion modules start as the identity
    (``motion_adapter``)."""
    state = {k: v for k, v in image_unet.state_dict().items() if not k.startswith("class_embedding.")}
    null_camera = image_unet.class_embedding(torch.zeros(1, CAMERA_DIM))[0]
    state["time_embedding.linear_2.bias"] = state["time_embedding.linear_2.bias"] + null_camera
    spatial = _camera_blind(image_unet)
    spatial.load_state_dict(state)
    return with_camera_input(_with_motion(spatial))


def build_scheduler(prediction_type: str = "epsilon", snr_shift: float = 1.0) -> DDPMScheduler:
    """diffusers' squaredcos ("cosine") schedule over 1000 steps; ``snr_shift`` k > 1 divides its
    signal-to-noise ratio by k^2 at every step (log SNR shifted by -2 ln k, "simple diffusion"),
    stored as the scheduler's ``trained_betas`` so that it loads like any diffusers scheduler.

    Why the video prior needs it: in this small, high-contrast world x_t still shows where the
    object is in each frame up to t ~ 980 (a bounce against a still clip is d' = 6.4 apart at
    t = 950 under the plain schedule), so the best denoiser reads the motion from x_t and ignores
    the motion word almost everywhere; SDS and DDIM never reach the few steps where it matters
    (docs/video-prior.md)."""
    plain = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type=prediction_type, clip_sample=False)
    if snr_shift == 1.0:
        return plain
    abar = plain.alphas_cumprod.double()
    shifted = torch.sigmoid(torch.logit(abar) - 2 * math.log(snr_shift))
    betas = 1 - shifted / torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
    return DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.clamp(max=0.999).tolist(),
                         prediction_type=prediction_type, clip_sample=False)
