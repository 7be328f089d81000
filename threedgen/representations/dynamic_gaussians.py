"""Dynamic 3D Gaussians for text-to-4D: canonical Gaussians plus a deformation field over (x, t).

At time t in [0, 1] (the span of one clip: the video prior's clips show one period of motion),
Gaussian i with canonical centre mu_i moves to mu_i + d_mu, its rotation logits become q_i + d_q,
its log-scales s_i + d_s and its opacity logit o_i + d_o, where (d_mu, d_q, d_s, d_o) =
MLP(gamma_x(mu_i), gamma_t(t)), with Fourier features gamma_x(x) = [x, sin(2^k pi x), cos(2^k pi x)],
k < pos_freqs, and gamma_t(t) = [t, sin(k pi t), cos(k pi t)], 1 <= k <= time_freqs (the
MLP-on-encodings variant of DreamGaussian4D's deformation network). The output layer starts at
zero, so the deformation starts as the identity: the static object of stage 1. Rendering at a
time goes through the same Gaussian rasterizer, once per distinct time in the camera batch
(``Cameras.time``; cameras without times see the canonical Gaussians).

Root motion (``root_motion``, on by default): the deformed Gaussians then move as one body by a
similarity transform about the origin (where canonical objects sit), x -> s(t) R(t) x + b(t),
their rotations composed with R(t) and their log-scales shifted by log s(t), with
(axis-angle of R, b, log s) = W gamma_t(t) + c: a truncated Fourier series in time, starting at
zero (the identity).
A whole-object motion (a jump, a turn, a slide, a pulse) then needs no per-Gaussian offsets, which
video SDS at high noise tears apart; with ``lambda_deform`` the per-Gaussian MLP is left with what
the root cannot explain (the root-body pose of articulated reconstruction, e.g. BANMo).

Regularisers (weights Scheduled): temporal smoothness
mean ||d_mu(mu, t + dt) - d_mu(mu, t)||^2 / dt^2 at a random t (dt = 1/16), which discourages
jitter between frames, and the deformation's size mean ||d_mu(mu, t)||^2, which keeps what the
prompt does not move still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from kornia.geometry.conversions import axis_angle_to_quaternion, quaternion_to_rotation_matrix
from kornia.geometry.quaternion import Quaternion
from torch import Tensor, nn

from threedgen.cameras import Cameras
from threedgen.schedules import Scheduled, value_at
from threedgen.render.gaussians import footprint_eps2d, render_gaussians
from threedgen.render.types import RenderOutput
from threedgen.representations.gaussians import Gaussians


def fourier(x: Tensor, freqs: int) -> Tensor:
    """x [N, D] -> [N, D (1 + 2 freqs)]: x, sin(2^k pi x), cos(2^k pi x) for k < freqs."""
    scaled = x[..., None] * (math.pi * 2.0 ** torch.arange(freqs, device=x.device))  # [N, D, F]
    return torch.cat([x, scaled.sin().flatten(1), scaled.cos().flatten(1)], -1)


def time_features(t: Tensor, freqs: int) -> Tensor:
    """t [N] in [0, 1] -> [N, 1 + 2 freqs]: t, sin(k pi t), cos(k pi t) for 1 <= k <= freqs."""
    angles = t[:, None] * (math.pi * torch.arange(1, freqs + 1, device=t.device))
    return torch.cat([t[:, None], angles.sin(), angles.cos()], -1)


class DynamicGaussians(Gaussians):
    dynamic = True

    @dataclass(frozen=True)
    class Config(Gaussians.Config):
        name: Literal["dynamic_gaussians"] = "dynamic_gaussians"
        pos_freqs: int = 4
        time_freqs: int = 4
        hidden: int = 64
        layers: int = 3  # hidden layers of the deformation MLP
        lr_deform: float = 0.001
        deform_position: bool = True  # with all four off, only the root motion moves the object
        deform_rotation: bool = True
        deform_scale: bool = True  # needed for pulsing
        deform_opacity: bool = False
        root_motion: bool = True  # a whole-object similarity transform over time (module doc)
        lr_root: float = 0.003
        lambda_smooth: Scheduled = 0.0  # temporal smoothness of d_mu
        lambda_deform: Scheduled = 0.0  # size of d_mu

        def __post_init__(self):
            super().__post_init__()
            if min(self.pos_freqs, self.time_freqs) < 0 or min(self.hidden, self.layers) < 1:
                raise ValueError("pos_freqs, time_freqs >= 0 and hidden, layers >= 1 are required")

    """The canonical Gaussians (``Gaussians``' parameters) plus ``deform``, the MLP."""

    def __init__(self, means, scales, quats, opacities, colors, sh_degree: int = 0,
                 cfg: Config | None = None, seed: int = 0):
        super().__init__(means, scales, quats, opacities, colors, sh_degree)
        cfg = cfg or DynamicGaussians.Config()
        self.cfg = cfg
        width_in = 3 * (1 + 2 * cfg.pos_freqs) + 1 + 2 * cfg.time_freqs
        layers, w = [], width_in
        gen = torch.Generator().manual_seed(seed)  # CPU draws, any default device
        for _ in range(cfg.layers):
            layer = nn.Linear(w, cfg.hidden)
            with torch.no_grad():
                bound = w ** -0.5
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen, device="cpu") * 2 - 1) * bound)
                layer.bias.zero_()
            layers += [layer, nn.SiLU()]
            w = cfg.hidden
        out = nn.Linear(w, 11)  # d_mu 3, d_q 4, d_s 3, d_o 1
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.deform = nn.Sequential(*layers, out)
        mask = torch.tensor([float(cfg.deform_position)] * 3 + [float(cfg.deform_rotation)] * 4
                            + [float(cfg.deform_scale)] * 3 + [float(cfg.deform_opacity)])
        self.register_buffer("_out_mask", mask, persistent=False)
        self._mlp_on = bool(mask.any())  # all four off: the MLP is not evaluated (root motion only)
        if cfg.root_motion:
            self.root = nn.Linear(1 + 2 * cfg.time_freqs, 7)  # axis-angle 3, translation 3, log-scale 1
            nn.init.zeros_(self.root.weight)
            nn.init.zeros_(self.root.bias)

    @classmethod
    def from_config(cls, cfg: Config, seed: int = 0) -> DynamicGaussians:
        static = Gaussians.from_config(cfg, seed=seed)  # the same canonical initialisation
        p = static.params
        return cls(p["means"].data, p["scales"].data, p["quats"].data, p["opacities"].data,
                   p["colors"].data, static.sh_degree, cfg=cfg, seed=seed)

    # --- deformation ---
    def offsets(self, t: Tensor | float) -> Tensor:
        """[N, 11] (d_mu, d_q, d_s, d_o) of every Gaussian at time t (a scalar). The canonical
        positions enter as the MLP's input only (no gradient to them through it)."""
        if not self._mlp_on:
            return self.means.new_zeros(len(self.means), 11)
        x = fourier(self.means.detach() / self.aabb, self.cfg.pos_freqs)
        feats = torch.cat([x, self._time_features(t).expand(len(x), -1)], -1)
        return self.deform(feats) * self._out_mask

    def _time_features(self, t: Tensor | float) -> Tensor:
        """A scalar time -> [1, 1 + 2 time_freqs] (``time_features``)."""
        t = torch.as_tensor(t, dtype=self.means.dtype, device=self.means.device).reshape(1)
        return time_features(t, self.cfg.time_freqs)

    def root_pose(self, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """The root motion at time t: (unit quaternion wxyz [4], translation [3], log-scale [])."""
        pose = self.root(self._time_features(t))[0]  # [7]
        return axis_angle_to_quaternion(pose[:3]), pose[3:6], pose[6]

    def deformed(self, t: float, params: dict[str, Tensor] | None = None,
                 root_motion: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The Gaussians at time t: (means [N, 3], quats [N, 4] wxyz unnormalised, log-scales
        [N, 3], opacity logits [N]), from ``params`` (default: the canonical parameters);
        root_motion False: in the object's own frame (the per-Gaussian deformation only)."""
        p = self.params if params is None else params
        d = self.offsets(t)
        means, quats = p["means"] + d[:, :3], p["quats"] + d[:, 3:7]
        log_scales, logits = p["scales"] + d[:, 7:10], p["opacities"] + d[:, 10]
        if self.cfg.root_motion and root_motion:
            rotation, shift, log_s = self.root_pose(t)
            means = log_s.exp() * means @ quaternion_to_rotation_matrix(rotation).T + shift
            quats = (Quaternion(rotation.expand_as(quats)) * Quaternion(quats)).data
            log_scales = log_scales + log_s
        return means, quats, log_scales, logits

    def at_time(self, t: float) -> Gaussians:
        """A static snapshot: the Gaussians deformed to time t (for export, per-frame files)."""
        with torch.no_grad():
            means, quats, log_scales, logits = self.deformed(t)
            snapshot = Gaussians(means, log_scales, quats, logits, self.params["colors"].clone(), self.sh_degree)
        snapshot.fit_resolution, snapshot.fit_pixel = self.fit_resolution, self.fit_pixel
        return snapshot

    # --- the system's calls ---
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Gaussians' per-parameter Adams, plus "deform" for the MLP and the root motion."""
        if not hasattr(self, "_optimizers"):
            opts = super().optimizers()
            groups = [{"params": self.deform.parameters(), "lr": self.cfg.lr_deform}]
            if self.cfg.root_motion:
                groups.append({"params": self.root.parameters(), "lr": self.cfg.lr_root})
            opts["deform"] = torch.optim.Adam(groups)
        return self._optimizers

    def regularisers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        regs = super().regularisers(out, step)
        w_smooth, w_size = value_at(self.cfg.lambda_smooth, step), value_at(self.cfg.lambda_deform, step)
        if w_smooth > 0 or w_size > 0:
            dt = 1 / 16
            t = (step * 0.6180339887) % 1.0 * (1 - dt)  # a low-discrepancy time per step (resumable)
            d0 = self.offsets(t)[:, :3]
            if w_smooth > 0:
                regs["smooth"] = w_smooth * ((self.offsets(t + dt)[:, :3] - d0) / dt).square().sum(-1).mean()
            if w_size > 0:
                regs["deform"] = w_size * d0.square().sum(-1).mean()
        return regs

    def post_step(self, step: int, out: RenderOutput, optimizers: dict) -> None:
        """Densification (Gaussians') after renders at one time only: a clip's frames have no
        common screen-space statistics (a render over several times has no info)."""
        if out.info is not None:
            super().post_step(step, out, {k: v for k, v in optimizers.items() if k in self.params})

    def render(self, cameras: Cameras, background: Tensor, backend: str = "auto",
               generator: torch.Generator | None = None, canonical_grad: bool = True,
               root_motion: bool = True) -> RenderOutput:
        """Render each camera at its own time (see the module doc). canonical_grad False: the
        gradient reaches the deformation only (the canonical Gaussians are held). root_motion
        False: each time in the object's own frame (``deformed``)."""
        if cameras.time is None:
            return super().render(cameras, background, backend)
        times = cameras.time.unique()
        p = self.params if canonical_grad else {k: v.detach() for k, v in self.params.items()}
        outs = []
        for t in times.tolist():
            means, quats, log_scales, logits = self.deformed(t, p, root_motion)
            sel = (cameras.time == t).nonzero().squeeze(-1)
            outs.append((sel, render_gaussians(
                means, quats, torch.exp(log_scales), torch.sigmoid(logits),
                p["colors"] if self.sh_degree else torch.sigmoid(p["colors"]),
                cameras[sel].to(self.means.device),
                background, sh_degree=self.sh_degree or None, backend=backend,
                eps2d=footprint_eps2d(cameras.height, self.fit_resolution))))
        return _gather(outs)

    def render_with_normals(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        """Each camera at its own time: the snapshot's (``at_time``) render with its normals
        (``Gaussians.render_with_normals``)."""
        if cameras.time is None:
            return super().render_with_normals(cameras, background)
        return _gather([((cameras.time == t).nonzero().squeeze(-1),
                         self.at_time(t).render_with_normals(cameras[cameras.time == t], background))
                        for t in cameras.time.unique().tolist()])


def _gather(outs: list[tuple[Tensor, RenderOutput]]) -> RenderOutput:
    """Renders of camera subsets (camera indices [b], RenderOutput of b views) -> one render of
    all the cameras in their order (normals where every part has them)."""
    if len(outs) == 1:
        return outs[0][1]
    order = torch.cat([sel for sel, _ in outs]).argsort()
    cat = lambda name: torch.cat([getattr(o, name) for _, o in outs])[order]  # noqa: E731
    normal = cat("normal") if all(o.normal is not None for _, o in outs) else None
    return RenderOutput(rgb=cat("rgb"), alpha=cat("alpha"), depth=cat("depth"), normal=normal)
