"""Real-size priors with random weights: the compute of Stable Diffusion 2.1 and SDXL, no download.

    python -m benchmarks.real_priors [--models sd21 sdxl] [--repeats 2]
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

import torch
from diffusers import UNet2DConditionModel

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
