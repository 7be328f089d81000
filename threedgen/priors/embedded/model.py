"""Architecture of the embedded prior, built only from diffusers / transformers parts.

The saved folder has Stable Diffusion's layout (unet/, text_encoder/, tokenizer/, scheduler/,
vae/), so it loads through the same ``from_pretrained`` calls. The "vae" is a lossless
pixel-unshuffle codec: 32x32x3 pixels in [0, 1] <-> 16x16x12 "latents" in [-1, 1]. It keeps the
latent-diffusion code path and makes the UNet about 3x cheaper than one at full resolution.

The video prior has the same layout with a ``UNet3DConditionModel`` (spatial and temporal
layers; no camera input) on clips of VIDEO_FRAMES frames in the image prior's 16x16x12 latents. Its
spatial layers have the image UNet's shapes and start from its weights (``inflate``), its temporal
layers start as the identity, so training begins from a frame-by-frame image denoiser and only has
to learn motion and coherence across frames (Make-A-Video, AnimateDiff). A first attempt trained
from scratch on 8x8x48 latents still sampled noise after 1,650 steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, ModelMixin, UNet2DConditionModel, UNet3DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
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


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: '<bos> word word ... <eos> <pad>...', MAX_TOKENS long."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}
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


def build_video_unet() -> UNet3DConditionModel:
    """About 7M parameters on [B, 12, 8, 16, 16] clip latents; text only. Its spatial layers have
    ``build_unet``'s shapes (the 2D transformers' 1x1 conv projections become linear ones)."""
    return UNet3DConditionModel(
        sample_size=16, in_channels=3 * VIDEO_FACTOR ** 2, out_channels=3 * VIDEO_FACTOR ** 2,
        layers_per_block=1, block_out_channels=(32, 64, 128), norm_num_groups=16,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
        cross_attention_dim=64, attention_head_dim=8)


@torch.no_grad()
def inflate(image_unet: UNet2DConditionModel) -> UNet3DConditionModel:
    """A video UNet that, as built, denoises every frame as ``image_unet`` does with the null camera.

    Spatial weights are copied; the null camera's class embedding (a constant added to the time
    embedding) is folded into the time embedding's bias; every temporal attention's output
    projection is zeroed (diffusers already zeroes the temporal convolutions' last layer), so each
    temporal layer starts as the identity."""
    video = build_video_unet()
    state = video.state_dict()
    for key, value in image_unet.state_dict().items():
        if key.startswith("class_embedding."):
            continue
        state[key] = value.reshape(state[key].shape)  # [C, C, 1, 1] conv -> [C, C] linear projections
    null_camera = image_unet.class_embedding(torch.zeros(1, CAMERA_DIM))[0]
    state["time_embedding.linear_2.bias"] = state["time_embedding.linear_2.bias"] + null_camera
    for key in state:
        if (key.startswith("transformer_in.") or ".temp_attentions." in key) and ".proj_out." in key:
            state[key] = torch.zeros_like(state[key])
    video.load_state_dict(state)
    return video


def build_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction_type, clip_sample=False)
