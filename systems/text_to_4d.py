"""The text-to-4D system: 4D-fy's hybrid score distillation on a dynamic representation.

Stage 1 (steps < ``system.video.start``): the canonical object alone, exactly as a text-to-3D
run, with the image prior and the prompt in its words. Stage 2: each step draws, with
probability ``image_probability``, an image step (the usual views, all at one random time), else
a video step: one random camera (azimuth in ``camera_azimuth``, by default the range the video
prior's clips were filmed from), T = ``frames`` consecutive times 1/T apart from a random start
in [0, 1/T), the clip [1, 3, T, H, W] scored by the video guidance with one diffusion timestep
(Dream-in-4D / 4D-fy) and, for a camera-conditioned video prior, the clip's camera. The
representation's regularisers (temporal smoothness, deformation size) join every step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from threedgen.systems.text_to_3d import TextTo3D
from threedgen.cameras import CameraRanges, make_cameras, sample_cameras
from threedgen.config import PromptConfig, RunConfig
from threedgen.export.views import write_video
from threedgen.prompts import PromptProcessor, image_prompt_for
from threedgen.registry import build_guidance, load_video_prior
from threedgen.world.check import training_azimuth


class TextTo4D(TextTo3D):
    def __init__(self, cfg: RunConfig, run_dir: Path, prior=None, video_prior=None, initialise: bool = True):
        super().__init__(cfg, run_dir, prior=prior, initialise=initialise)
        v = cfg.system.video
        self.video_prior = video_prior if video_prior is not None else load_video_prior(v.prior)
        self.video_guidance = build_guidance(v.guidance, self.video_prior)  # checked: trains no model
        negative = self.image_prompt() if v.motion_only_guidance else cfg.negative_prompt
        self.video_prompts = PromptProcessor(self.video_prior, cfg.prompt, negative, PromptConfig(view_dependent=False))
        c = cfg.system.camera
        azimuth = v.camera_azimuth or training_azimuth(self.video_prior)  # None: as the prior's clips
        self.clip_ranges = CameraRanges(v.camera_elevation, c.distance, c.fov_y, azimuth)

    def image_prompt(self) -> str:
        v = self.cfg.system.video
        return v.image_prompt or image_prompt_for(self.cfg.prompt, self.prior.vocabulary)

    # --- optimisation -----------------------------------------------------------------------------
    def distill(self, step: int, g: torch.Generator, time: float | None = None):
        v = self.cfg.system.video
        if step < v.start:
            return super().distill(step, g)  # stage 1: the canonical object
        if float(torch.rand((), generator=g)) < v.image_probability:
            return super().distill(step, g, time=float(torch.rand((), generator=g)), root_motion=v.image_root_motion)
        cam = sample_cameras(1, self.clip_ranges, v.resolution, g).to(self.device)
        times = (float(torch.rand((), generator=g)) + torch.arange(v.frames, device=self.device)) / v.frames
        clip_cams = replace(cam[torch.zeros(v.frames, dtype=torch.long, device=self.device)], time=times)
        out = self.representation.render(clip_cams, self.background, generator=g, canonical_grad=v.train_canonical)
        clip = out.rgb.transpose(0, 1)[None]  # [1, 3, T, H, W]
        cond = self.video_prompts.conditioning(cam, step)  # the clip's camera, if the prior takes one
        if v.motion_only_guidance:  # CFG between two motions of the object seen from the same camera
            cond = replace(cond, null_camera=cond.camera)
        return out, self.video_guidance(clip, cond, step, generator=g)

    # --- outputs ----------------------------------------------------------------------------------
    def orbit_cameras(self, n: int, size: int):
        """The evaluation orbit with times k / n: the motion plays once while the camera turns."""
        return replace(super().orbit_cameras(n, size), time=torch.arange(n, dtype=torch.float32, device=self.device) / n)

    def val_image(self) -> np.ndarray:
        """Four views at t = 0 over four views at t = 1/2."""
        cams = super().orbit_cameras(4, self.cfg.test.resolution)
        rows = [np.concatenate(list(self.render_frames(replace(cams, time=torch.full((4,), t, device=cams.device)))), axis=1)
                for t in (0.0, 0.5)]
        return np.concatenate(rows, axis=0)

    def write_test_videos(self, test_dir: Path) -> None:
        """The turntable (see ``orbit_cameras``) and test/fixed.mp4: one view while time runs."""
        super().write_test_videos(test_dir)
        t, c = self.cfg.test, self.cfg.system.camera
        times = torch.arange(t.n_frames, dtype=torch.float32) / t.n_frames
        fixed = make_cameras(c.eval_elevation, 45.0, c.eval_distance, c.eval_fov_y, t.resolution, time=times).to(self.device)
        write_video(test_dir / "fixed.mp4", self.render_video_frames(fixed, "fixed-view renders"), fps=t.fps)
