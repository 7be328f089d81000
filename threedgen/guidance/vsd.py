"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023, arXiv:2305.16213).

The 3D scene is a particle of a distribution whose own score is learned on the fly by eps_phi,
a LoRA copy of the prior conditioned on the camera; the update pushes the renders' distribution
towards the prior's:

    G = w(t) (eps_hat^w_pretrained(x_t; y, t) - eps_phi(x_t; y, c, t))

eps_phi is the prior's UNet with LoRA adapters (peft, through diffusers' ``add_adapter``) and a
learned embedding of the flattened camera-to-world matrix added as a class embedding (on top of
the prior's own camera embedding where it has one). Both start at zero, so eps_phi starts as the
prior. Each step it is trained with the diffusion loss on the current renders (detached), with
its own t' ~ U[0, T) and fresh noise, the camera dropped 10% of the time:

    L_phi = || out_phi(x_t'; y, c, t') - target ||^2,   target = eps or v = sqrt(a) eps - sqrt(1 - a) x

``lora_prediction``: what eps_phi outputs ("auto": the prior's own prediction type). ProlificDreamer
anneals t_max (0.98 -> 0.5); the recipes do it with a Ramp. ``esd.py`` reuses all of this with
classifier-free guidance on the camera.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from torch import Tensor, nn

from threedgen.schedules import Scheduled, value_at
from threedgen.guidance.base import Guidance, GuidanceOutput, add_noise, encode_and_draw, output, weight
from threedgen.guidance.sds import Weighting
from threedgen.priors.cfg import Conditioning, bcast, guided_noise

POSE_DIM = 16  # a flattened 4x4 camera-to-world matrix


class CameraClassEmbedding(nn.Module):
    """The LoRA UNet's class embedding: labels [B, Dc + 16] -> [B, D_time], the prior's own camera
    embedding of the first Dc features (if it has one; frozen) plus a learned embedding of the
    flattened c2w (zero-initialised output, so it starts as a no-op)."""

    def __init__(self, base: nn.Module | None, base_dim: int, time_dim: int):
        super().__init__()
        self.base, self.base_dim = base, base_dim
        self.pose = TimestepEmbedding(POSE_DIM, time_dim)
        nn.init.zeros_(self.pose.linear_2.weight)
        nn.init.zeros_(self.pose.linear_2.bias)

    def forward(self, labels: Tensor) -> Tensor:
        """labels in the UNet's dtype -> [B, D_time] in the trained (float32) embedding's."""
        out = self.pose(labels[:, self.base_dim:].to(self.pose.linear_1.weight.dtype))
        return out if self.base is None else out + self.base(labels[:, :self.base_dim]).to(out.dtype)


class VSD(Guidance):
    trains_model = True

    @dataclass(frozen=True)
    class Config:
        name: Literal["vsd"] = "vsd"
        guidance_scale: Scheduled = 7.5
        t_min: Scheduled = 0.02
        t_max: Scheduled = 0.98
        weighting: Weighting = "sds"
        use_camera: bool = True  # the pretrained prior's camera (eps_phi always sees the camera)
        lora_rank: int = 4
        lora_lr: float = 1e-3
        lora_prediction: Literal["auto", "epsilon", "v_prediction"] = "auto"
        camera_dropout: float = 0.1  # eps_phi's training drops the camera this often

        def __post_init__(self):
            if not 0 <= self.camera_dropout <= 1:
                raise ValueError(f"camera_dropout must be in [0, 1], got {self.camera_dropout}")
            if self.lora_rank < 1:
                raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")

    def __init__(self, cfg: Config, prior):
        super().__init__(cfg, prior)
        unet = copy.deepcopy(prior.unet).requires_grad_(False)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        unet.class_embedding = CameraClassEmbedding(unet.class_embedding, prior.camera_dim,
                                                    unet.time_embedding.linear_2.out_features)
        # The trained parts (LoRA, pose embedding) stay float32 in a float16/bfloat16 copy, as in
        # diffusers' LoRA training scripts: Adam's eps (1e-8) and small updates vanish in fp16.
        cast_training_params(unet, torch.float32)
        unet.train()
        self.lora_unet = unet
        own = prior.scheduler.config.prediction_type
        self.lora_prediction = own if cfg.lora_prediction == "auto" else cfg.lora_prediction

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """A fresh AdamW over the LoRA parameters, made when asked (Lightning asks once the
        module is on its device)."""
        return {"lora": torch.optim.AdamW([p for p in self.lora_unet.parameters() if p.requires_grad],
                                          lr=self.cfg.lora_lr)}

    # --- eps_phi --------------------------------------------------------------------------------
    def labels(self, cond: Conditioning, keep_camera: Tensor | None = None) -> Tensor:
        """[B, Dc + 16] class labels: prior camera features and flattened c2w; views where
        ``keep_camera`` [B] bool is False get the null camera (zeros pose)."""
        B = cond.text.shape[0]
        pose = cond.pose if cond.pose is not None else torch.zeros(B, POSE_DIM, device=cond.text.device)
        cam = cond.camera if cond.camera is not None else pose[:, :0]
        null = cond.null_camera if cond.null_camera is not None else pose[:, :0]
        if keep_camera is not None:
            k = keep_camera[:, None]
            cam, pose = torch.where(k, cam, null), torch.where(k, pose, torch.zeros_like(pose))
        return torch.cat([cam, pose], dim=1)

    def lora_out(self, x_t: Tensor, t: Tensor, text: Tensor, labels: Tensor) -> Tensor:
        """eps_phi's raw output (eps or v, per ``lora_prediction``) [B, C, h, w]."""
        return self.prior.run_unet(self.lora_unet, x_t, t, text, labels)

    def lora_eps(self, x_t: Tensor, t: Tensor, text: Tensor, labels: Tensor) -> Tensor:
        """eps_phi(x_t; y, c, t) [B, C, h, w], converted to eps."""
        out = self.lora_out(x_t, t, text, labels)
        if self.lora_prediction == "v_prediction":
            a = bcast(self.prior.alphas_cumprod[t], x_t)
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    def lora_score(self, x_t: Tensor, t: Tensor, cond: Conditioning, step: int) -> tuple[Tensor, int]:
        """The particles' score estimate used in G -> (eps [B, C, h, w], evals). VSD: eps_phi(x_t; y, c)."""
        return self.lora_eps(x_t, t, cond.text, self.labels(cond)), len(x_t)

    def lora_loss(self, x: Tensor, cond: Conditioning, generator: torch.Generator | None) -> Tensor:
        """eps_phi's diffusion loss on renders x [B, C, h, w] (detached), its own t' and noise."""
        x = x.detach()
        T = self.prior.num_train_timesteps
        t = torch.randint(0, T, (len(x),), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x)
        keep = (torch.rand(len(x), generator=generator) >= self.cfg.camera_dropout).to(x.device)
        a = self.prior.alphas_cumprod[t]
        out = self.lora_out(add_noise(x, noise, a), t, cond.text, self.labels(cond, keep))
        target = noise if self.lora_prediction == "epsilon" else bcast(a, x).sqrt() * noise - bcast(1 - a, x).sqrt() * x
        return F.mse_loss(out, target)

    # --- the step -------------------------------------------------------------------------------
    def forward(self, rgb: Tensor, cond: Conditioning, step: int,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        """rgb [B, 3, H, W] renders in [0, 1] -> GuidanceOutput; its loss also trains eps_phi."""
        prior, cfg = self.prior, self.cfg
        x, t, noise = encode_and_draw(prior, rgb, value_at(cfg.t_min, step), value_at(cfg.t_max, step), generator)
        a = prior.alphas_cumprod[t]
        with torch.no_grad():
            x_t = add_noise(x, noise, a)
            guided = guided_noise(prior, x_t, t, cond, value_at(cfg.guidance_scale, step), cfg.use_camera)
            eps_phi, evals = self.lora_score(x_t, t, cond, step)
            grad = bcast(weight(cfg.weighting, a), x) * (guided.eps - eps_phi)
        lora_loss = self.lora_loss(x, cond, generator)
        return output(x, grad, t, guided.evals + evals + len(x), extra_loss=lora_loss,
                      logs={"lora_loss": lora_loss.item()})
