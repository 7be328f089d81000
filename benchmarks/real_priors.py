"""Real-size priors with random weights: the compute of Stable Diffusion 2.1 and SDXL, no download.

    python -m threedgen.benchmarks.real_priors [--models sd21 sdxl] [--repeats 2]
    threedgen bench --prior sd21-shape      # one SDS step, 64^2 latents, batch 1, fp16 on CUDA

The UNets are built from the published configs (stabilityai/stable-diffusion-2-1-base and
stable-diffusion-xl-base-1.0 unet/config.json, copied below) with random weights. Each row times a
classifier-free-guided UNet evaluation (batch 2: conditional + unconditional) at the model's
working latent size, reports the peak memory, and on CUDA also runs in float16.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from threedgen.priors.embedded.model import SPECIAL_TOKENS, build_tokenizer

SD21 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024, use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
MODELS = {"sd21": SD21, "sdxl": SDXL}
# The other parts of the published checkpoints (their config.json files), for random-weight copies.
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)
TEXT_ENCODERS = {  # transformers CLIPTextConfig fields
    "openclip-h": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                       hidden_act="gelu", projection_dim=512),  # SD 2.x
    "clip-l": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   hidden_act="quick_gelu", projection_dim=768),  # SD 1.x, SDXL's first
    "openclip-bigg": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                          hidden_act="gelu", projection_dim=1280),  # SDXL's second (pooled)
}
# damo-vilab/text-to-video-ms-1.7b (ModelScope) unet/config.json: SD 2.1's VAE and text encoder.
MODELSCOPE = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
                  block_out_channels=(320, 640, 1280, 1280), attention_head_dim=64, cross_attention_dim=1024,
                  down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                  up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
# family -> (UNet config, VAE sample size, VAE scaling factor, text encoders); the first is a
# CLIPTextModel, a second one has a projection (its pooled output is SDXL's text_embeds).
FAMILIES = {"sd21": (SD21, 512, 0.18215, ["openclip-h"]),
            # MVDream (sd-v2.1-base-4view): SD 2.1's UNet plus a 16 -> 1280 camera MLP
            "mvdream": ({**SD21, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 16},
                        512, 0.18215, ["openclip-h"]),
            "sdxl": (SDXL, 1024, 0.13025, ["clip-l", "openclip-bigg"]),
            "modelscope": (MODELSCOPE, 256, 0.18215, ["openclip-h"])}
PROMPT_WORDS = "a an the red green blue orange yellow purple cube cone cylinder sphere torus mug corgi " \
               "wearing crown front side back overhead view bouncing ball spinning".split()


def random_parts(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, device="cpu") -> dict:
    """The components of a published checkpoint (``FAMILIES``) with random weights, built from
    its configs: unet, vae, text_encoders, tokenizers, scheduler (no download). The tokenizer is
    a word-level one over PROMPT_WORDS, padded to CLIP's 77 tokens: the real BPE vocabulary is
    not needed to exercise the shapes. ``device``: where the weights are drawn (a GPU draws a
    billion parameters in seconds)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config, vae_size, scaling, encoders = FAMILIES[family]
    torch.manual_seed(seed)
    unet_cls = UNet3DConditionModel if family == "modelscope" else UNet2DConditionModel
    with torch.device(device):
        unet = unet_cls(**unet_config).to(dtype)
        vae = AutoencoderKL(**VAE, sample_size=vae_size, scaling_factor=scaling).to(dtype)
    text_encoders, tokenizers = [], []
    for k, name in enumerate(encoders):
        config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, **TEXT_ENCODERS[name])
        with torch.device(device):  # text encoders stay float32 (the prior keeps them so, on the CPU)
            text_encoders.append((CLIPTextModelWithProjection if k else CLIPTextModel)(config).cpu())
        tok = build_tokenizer(PROMPT_WORDS)
        tok.model_max_length = 77
        tokenizers.append(tok)
    assert len(SPECIAL_TOKENS) + len(PROMPT_WORDS) < 49408
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type="epsilon")
    return dict(unet=unet.cpu(), vae=vae.cpu(), text_encoders=text_encoders, tokenizers=tokenizers, scheduler=scheduler)


def save_random_checkpoint(family: str, folder: Path, dtype: torch.dtype = torch.float16, device="cpu") -> Path:
    """``random_parts`` written in diffusers' folder layout (safetensors), loadable by
    ``system.prior.path=folder``."""
    parts = random_parts(family, dtype, device=device)
    parts["unet"].save_pretrained(folder / "unet")
    parts["vae"].save_pretrained(folder / "vae")
    parts["scheduler"].save_pretrained(folder / "scheduler")
    for k, (te, tok) in enumerate(zip(parts["text_encoders"], parts["tokenizers"])):
        suffix = f"_{k + 1}" if k else ""
        te.save_pretrained(folder / f"text_encoder{suffix}")
        tok.save_pretrained(folder / f"tokenizer{suffix}")
    return folder


def inputs(config: dict, batch: int, device, dtype) -> tuple[tuple, dict]:
    size = config["sample_size"]
    x = torch.randn(batch, 4, size, size, device=device, dtype=dtype)
    text = torch.randn(batch, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    extra = {}
    if config.get("addition_embed_type") == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, device=device, dtype=dtype),
                                      "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch,
                                                               device=device, dtype=dtype)}
    return (x, torch.full((batch,), 500, device=device), text), extra


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB, process peak


@torch.no_grad()
def time_cfg_eval(name: str, device, dtype, repeats: int) -> dict:
    config = MODELS[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    args, extra = inputs(config, 2, device, dtype)
    times = []
    for k in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        unet(*args, **extra)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    return {"model": name, "device": device.type, "dtype": str(dtype).split(".")[-1], "params_M": round(params),
            "latent": config["sample_size"], "seconds": statistics.median(times), "peak_GB": peak_memory_gb(device)}


def sd21_shape_sds_step(repeats: int = 5) -> str:
    """`threedgen bench --prior sd21-shape`: one SDS step's UNet work (CFG pair, fp16) at 64^2 latents,
    batch 1, on CUDA; a line that says it is skipped elsewhere."""
    if not torch.cuda.is_available():
        return "sd21-shape SDS step: skipped (no CUDA device)"
    r = time_cfg_eval("sd21", torch.device("cuda"), torch.float16, repeats)
    return (f"sd21-shape SDS step (CFG pair, fp16, 64^2 latents, batch 1): {r['seconds'] * 1e3:.0f} ms, "
            f"peak {r['peak_GB']:.1f} GB on {torch.cuda.get_device_name()}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    runs = [(torch.device("cpu"), torch.float32)]
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), torch.float32), (torch.device("cuda"), torch.float16)]
    print("| model | device | dtype | UNet params (M) | latent | CFG eval (s) | peak memory (GB) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for device, dtype in runs:
            r = time_cfg_eval(name, device, dtype, args.repeats)
            print(f"| {r['model']} | {r['device']} | {r['dtype']} | {r['params_M']} | {r['latent']}^2 | "
                  f"{r['seconds']:.2f} | {r['peak_GB']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
