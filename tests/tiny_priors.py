"""Tiny diffusers checkpoints of every family the prior loader reads, built from configs with a
fixed seed and written with ``save_pretrained``: nothing is downloaded."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet3DConditionModel
from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from threedgen.priors.embedded.model import MAX_TOKENS, SPECIAL_TOKENS, build_tokenizer

WORDS = "a an red green blue orange cube cone cylinder sphere torus mug front side back overhead view".split()
VOCAB = len(SPECIAL_TOKENS) + len(WORDS)


def _clip(hidden: int = 32, projection: bool = False):
    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _unet(**kw) -> UNet2DConditionModel:
    args = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                attention_head_dim=8, norm_num_groups=32)
    return UNet2DConditionModel(**{**args, **kw})


def _vae() -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=16)


def save(folder: Path, **parts) -> Path:
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    return folder


def tiny_sd(folder: Path, prediction_type: str = "epsilon") -> Path:
    """Stable Diffusion 1.x/2.x shape: AutoencoderKL (x2 down), 8x8x4 latents, one CLIP encoder."""
    torch.manual_seed(0)
    return save(folder, unet=_unet(), vae=_vae(), text_encoder=_clip(), tokenizer=build_tokenizer(WORDS),
                scheduler=DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type))


def tiny_sdxl(folder: Path) -> Path:
    """SDXL shape: two encoders (the second with a projection: pooled), text_time additions."""
    torch.manual_seed(0)
    unet = _unet(cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=32 + 6 * 8, transformer_layers_per_block=1)
    return save(folder, unet=unet, vae=_vae(), text_encoder=_clip(), text_encoder_2=_clip(projection=True),
                tokenizer=build_tokenizer(WORDS), tokenizer_2=build_tokenizer(WORDS),
                scheduler=DDPMScheduler(beta_schedule="scaled_linear"))


def tiny_pixel(folder: Path) -> Path:
    """DeepFloyd IF stage I shape: pixels (no VAE), a T5 encoder, a UNet that learns its variance."""
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 pad_token_id=0, eos_token_id=2))
    return save(folder, unet=_unet(sample_size=16, in_channels=3, out_channels=6), text_encoder=t5,
                tokenizer=build_tokenizer(WORDS), scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"))


def tiny_video(folder: Path) -> Path:
    """ModelScope / zeroscope shape: a UNet3DConditionModel on per-frame VAE latents."""
    torch.manual_seed(0)
    unet = UNet3DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    return save(folder, unet=unet, vae=_vae(), text_encoder=_clip(), tokenizer=build_tokenizer(WORDS),
                scheduler=DDPMScheduler(beta_schedule="scaled_linear"))


FAMILIES = {"sd": tiny_sd, "sdxl": tiny_sdxl, "pixel": tiny_pixel, "video": tiny_video}


def to_ldm_unet(state: dict, layers_per_block: int) -> dict:
    """A diffusers UNet2DConditionModel state dict -> the original LDM key layout (what MVDream's
    single file holds under ``model.diffusion_model.``), the inverse of diffusers' converter."""
    L = layers_per_block
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    fixed = [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")]
    out = {}
    for key, value in state.items():
        new = None
        for a, b in fixed:
            if key.startswith(a + "."):
                new = b + key[len(a):]
        parts = key.split(".")
        if parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(L + 1) * (i + 1)}.0.op.{rest.removeprefix('conv.')}"
            else:
                new = f"input_blocks.{(L + 1) * i + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
                new = f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}.{rest}"
            else:
                new = f"output_blocks.{(L + 1) * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{1 if kind == 'attentions' else 2 * j}.{rest}"
        if new is None:
            raise KeyError(f"no LDM name for {key}")
        if parts[0] in ("down_blocks", "up_blocks", "mid_block") and "resnets" in parts:
            for a, b in resnet:
                new = new.replace(f".{a}.", f".{b}.")
        out[new] = value
    return out


def tiny_mvdream(folder: Path) -> tuple[Path, Path]:
    """(an MVDream-layout single file, the SD 2.1-shaped base folder it was 'fine-tuned' from)."""
    base = tiny_sd(folder / "base")
    torch.manual_seed(1)
    config = dict(UNet2DConditionModel.load_config(base, subfolder="unet"))
    unet = UNet2DConditionModel.from_config({**config, "class_embed_type": "projection",
                                             "projection_class_embeddings_input_dim": 16})
    return save_mvdream_file(unet, folder / "sd-v2.1-base-4view.pt"), base


def save_mvdream_file(unet: UNet2DConditionModel, path: Path) -> Path:
    """A camera-conditioned UNet (class embedding: a 16 -> D MLP) written as MVDream's released
    single file lays it out: LDM keys under ``model.diffusion_model.``, the MLP as ``camera_embed``."""
    state = {k: v.cpu() for k, v in unet.state_dict().items()}
    camera = {k: state.pop(k) for k in list(state) if k.startswith("class_embedding.")}
    ldm = {f"model.diffusion_model.{k}": v
           for k, v in to_ldm_unet(state, unet.config["layers_per_block"]).items()}
    for name, layer in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            ldm[f"model.diffusion_model.camera_embed.{name}.{p}"] = camera[f"class_embedding.{layer}.{p}"]
    ldm["cond_stage_model.model.token_embedding.weight"] = torch.zeros(3, 4)  # other parts are ignored
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": ldm}, path)
    return path


def untrained_video_prior(folder: Path) -> Path:
    """The embedded video prior's folder layout and vocabulary, with untrained weights."""
    from threedgen.priors.embedded import model as M
    from threedgen.world import train as T

    torch.manual_seed(0)
    tok = M.build_tokenizer(T.video_vocabulary())
    T.save_video_pipeline(folder, M.build_video_unet(), M.build_text_encoder(len(tok)), tok, T.VideoTrainConfig())
    return folder


def tiny_clip(folder: Path, words: list[str] = WORDS) -> Path:
    """A random transformers CLIPModel of tiny dims (32x32 images, 8x8 patches, one layer a tower,
    8-dim embeddings) with a word-level tokenizer over ``words``, in the CLIPModel folder layout."""
    from transformers import CLIPConfig, CLIPVisionConfig

    from threedgen.world.clip import SPECIALS, save_world_clip

    torch.manual_seed(0)
    tokenizer = build_tokenizer(words, SPECIALS)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=MAX_TOKENS, pad_token_id=0, bos_token_id=1,
                          eos_token_id=tokenizer.convert_tokens_to_ids("<eos>"))
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
    save_world_clip(folder, model, tokenizer)
    return folder
