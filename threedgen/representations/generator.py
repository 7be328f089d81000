"""A prompt-conditioned triplane generator: text tokens -> triplane features in one forward pass,
decoded and rendered by the triplane representation's own decoder and volume renderer.

Architecture (``TriplaneGenerator``):

    queries [3 g^2, W]   learned plane tokens (g x g per plane, a plane embedding added)
    text    [P, L, D]    the prior's text-encoder output for P prompts -> Linear -> [P, L, W]
    N blocks:  q += CrossAttn(LN q, text);  q += SelfAttn(LN q);  q += MLP(LN q)
    [P, 3 g^2, W] -> [P * 3, W, g, g] -> k x (nearest 2x upsample, 3x3 conv, SiLU) -> 3x3 conv
    -> planes [P, 3, C, R, R],  R = g 2^k

Why this one. The generator must read *which* words a prompt holds (here a shape and a colour;
with Stable Diffusion, arbitrary text), so each plane location attends to the token sequence
rather than to one pooled vector: cross-attention from learned plane tokens to the text tokens,
as the generators of ATT3D / Instant3D and ScaleDreamer's triplane generator condition on text.
Its cost is fixed by the token grid, not by the prompt length. Self-attention between the three
planes' tokens lets the planes agree on one object (a point's feature is the sum of its three
projections). A convolutional upsampler then adds resolution cheaply with a locality prior,
instead of attending at full resolution. The last convolution starts near zero, so at step 0
every prompt gives near-zero planes: the decoder's density blob, as a fresh per-prompt triplane.

``GeneratedTriplanes`` is the generator plus a ``Triplane`` whose decoder it trains (its own
planes are unused and frozen: ``Triplane.decode(planes, points)`` takes the plane tensor as a
plain input). It offers the calls a system makes on a representation (optimizers, regularisers,
hooks, load_weights) and ``triplane_for(planes)``: an ordinary ``Triplane`` holding one prompt's
planes and the shared decoder, which writes ordinary triplane run folders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.render.types import RenderOutput
from threedgen.render.volume import render_volume
from threedgen.representations.nerf import opacity_entropy, opacity_sparsity
from threedgen.representations.triplane import Triplane
from threedgen.schedules import weighted_terms


class Block(nn.Module):
    """Pre-norm transformer block: cross-attention to the text, self-attention, MLP.
    q [P, N, W], text [P, L, W] -> [P, N, W]."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_t, self.norm_s, self.norm_m = (nn.LayerNorm(width) for _ in range(4))
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, q: Tensor, text: Tensor) -> Tensor:
        t = self.norm_t(text)
        q = q + self.cross(self.norm_q(q), t, t, need_weights=False)[0]
        s = self.norm_s(q)
        q = q + self.self_attn(s, s, s, need_weights=False)[0]
        return q + self.mlp(self.norm_m(q))


class TriplaneGenerator(nn.Module):
    @dataclass(frozen=True)
    class Config:
        tokens: int = 8  # g: plane tokens per side; the triplane resolution must be g * 2^k
        width: int = 64  # W
        heads: int = 4
        layers: int = 2
        conv_channels: int = 32  # the upsampler's width
        lr: float = 1e-3  # the generator (Adam); the decoder keeps the triplane's lr_decoder
        weight_decay: float = 0.0

        def __post_init__(self):
            if min(self.tokens, self.width, self.heads, self.layers, self.conv_channels) < 1:
                raise ValueError("tokens, width, heads, layers and conv_channels must be at least 1")
            if self.width % self.heads:
                raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")

    def __init__(self, cfg: Config, text_dim: int, channels: int, resolution: int, seed: int = 0):
        """text_dim D: the prior's text embedding width; the planes are [3, channels, resolution^2]."""
        super().__init__()
        g = cfg.tokens
        ups = upsamplings(resolution, g)
        self.cfg, self.resolution = cfg, resolution
        with torch.random.fork_rng(devices=[]):  # weights fixed by the seed, global RNG untouched
            torch.manual_seed(seed)
            W = cfg.width
            self.queries = nn.Parameter(torch.randn(g * g, W) * 0.02)  # [g^2, W] shared by the planes
            self.plane_embedding = nn.Parameter(torch.randn(3, 1, W) * 0.02)  # [3, 1, W]
            self.text_in = nn.Linear(text_dim, W)
            self.blocks = nn.ModuleList(Block(W, cfg.heads) for _ in range(cfg.layers))
            self.norm_out = nn.LayerNorm(W)
            layers, c_in = [], W
            for _ in range(ups):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, cfg.conv_channels, 3, padding=1),
                           nn.SiLU()]
                c_in = cfg.conv_channels
            self.upsampler = nn.Sequential(*layers)
            self.head = nn.Conv2d(c_in, channels, 3, padding=1)
            nn.init.normal_(self.head.weight, std=1e-3)
            nn.init.zeros_(self.head.bias)

    def forward(self, text: Tensor) -> Tensor:
        """text [P, L, D] -> planes [P, 3, C, R, R]."""
        P, g, W = len(text), self.cfg.tokens, self.cfg.width
        q = (self.queries[None] + self.plane_embedding).reshape(1, 3 * g * g, W).expand(P, -1, -1)
        t = self.text_in(text)
        for block in self.blocks:
            q = block(q, t)
        x = self.norm_out(q).reshape(P * 3, g, g, W).permute(0, 3, 1, 2)  # [P*3, W, g, g]
        planes = self.head(self.upsampler(x))  # [P*3, C, R, R]
        return planes.unflatten(0, (P, 3))


def upsamplings(resolution: int, tokens: int) -> int:
    """k with resolution = tokens * 2^k, else ValueError."""
    k = 0
    while tokens << k < resolution:
        k += 1
    if tokens << k != resolution:
        raise ValueError(f"the triplane resolution ({resolution}) must be the generator's tokens "
                         f"({tokens}) times a power of two")
    return k


class GeneratedTriplanes(nn.Module):
    """A TriplaneGenerator and the Triplane decoder it feeds; see the module docstring."""

    dynamic = False

    def __init__(self, triplane: Triplane, cfg: TriplaneGenerator.Config, text_dim: int, seed: int = 0):
        super().__init__()
        tc = triplane.cfg
        self.triplane = triplane
        triplane.planes.requires_grad_(False)  # unused: the generator makes the planes
        self.generator = TriplaneGenerator(cfg, text_dim, tc.channels, tc.resolution, seed)
        self._last_planes = None  # [P, 3, C, R, R] of the last training render (the tv regulariser)

    @property
    def cfg(self) -> Triplane.Config:
        return self.triplane.cfg

    def render_planes(self, planes: Tensor, cameras: Cameras, background: Tensor,
                      generator: torch.Generator | None = None) -> RenderOutput:
        """One prompt's planes [3, C, R, R] from cameras [V] -> RenderOutput [V, ...] (every sample
        through the decoder: no occupancy grid, the planes change every step)."""
        return render_volume(lambda p: self.triplane.decode(planes, p), cameras.to(planes.device),
                             aabb=self.cfg.aabb, n_samples=self.cfg.n_samples, background=background,
                             stratified=self.training, generator=generator)

    def render_batch(self, planes: Tensor, cameras: Cameras, background: Tensor,
                     generator: torch.Generator | None = None) -> RenderOutput:
        """planes [P, 3, C, R, R], cameras [P * V] (prompt p's views are p*V..p*V+V-1) ->
        RenderOutput with rgb [P*V, 3, H, W], alpha and depth [P*V, 1, H, W]."""
        V = len(cameras) // len(planes)
        outs = [self.render_planes(pl, cameras[i * V:(i + 1) * V], background, generator)
                for i, pl in enumerate(planes)]
        self._last_planes = planes
        return RenderOutput(*(torch.cat([getattr(o, k) for o in outs]) for k in ("rgb", "alpha", "depth")))

    def triplane_for(self, planes: Tensor, seed: int = 0) -> Triplane:
        """An ordinary Triplane (eval mode, occupancy refreshed) holding ``planes`` [3, C, R, R]
        and a copy of the shared decoder."""
        rep = Triplane(self.cfg, seed=seed).to(planes.device)
        rep.decoder.load_state_dict(self.triplane.decoder.state_dict())
        with torch.no_grad():
            rep.planes.copy_(planes.detach())
        rep.update_occupancy()
        return rep.eval()

    # --- the calls a system makes on a representation ---------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not hasattr(self, "_optimizers"):
            g, t = self.generator.cfg, self.cfg
            self._optimizers = {"generator": torch.optim.AdamW(
                [{"params": self.generator.parameters(), "lr": g.lr, "weight_decay": g.weight_decay},
                 {"params": self.triplane.decoder.parameters(), "lr": t.lr_decoder, "weight_decay": 0.0}],
                betas=(0.9, 0.99))}
        return self._optimizers

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """The triplane's regularisers (its lambda_* weights), tv over the last generated planes."""
        c = self.cfg
        planes = self._last_planes
        return weighted_terms(step, {
            "sparsity": (c.lambda_sparsity, lambda: opacity_sparsity(out.alpha)),
            "entropy": (c.lambda_entropy, lambda: opacity_entropy(out.alpha)),
            "tv": (c.lambda_tv, lambda: torch.diff(planes, dim=-2).square().mean()
                   + torch.diff(planes, dim=-1).square().mean()),
        })

    def pre_backward(self, step: int, optimizers: dict) -> None:
        pass

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        pass

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """The checkpoint's weights (without the unused, frozen planes, which are not saved)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = [k for k in missing if k != "triplane.planes"] + list(unexpected)
        if wrong:
            raise RuntimeError(f"generator weights do not fit: {', '.join(wrong[:4])}")


__all__ = ["TriplaneGenerator", "GeneratedTriplanes"]
