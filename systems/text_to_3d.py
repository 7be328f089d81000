"""The text-to-3D Lightning system: cameras -> render -> guidance (+ regularisers) -> step.

Lightning is used for the loop, manual optimisation, checkpoint/resume and the progress bar;
every piece of math lives in ``threedgen``. Randomness is drawn from a generator seeded by
(seed, step), so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from threedgen.cameras import CameraRanges, orbit, sample_cameras
from threedgen.config import RunConfig
from threedgen.evaluate import evaluate_run
from threedgen.export.run import export
from threedgen.export.views import to_uint8, write_png
from threedgen.files import atomic_write
from threedgen.guidance.base import clip_pixel_grad
from threedgen.prompts import PromptProcessor
from threedgen import progress
from threedgen.report.build import write_report
from threedgen.registry import build_guidance, build_representation, convert, load_prior
from threedgen.runs import StepLog, check_finite, keep_fit_footprint, load_representation, write_test_renders
from threedgen.schedules import ConfigError, value_at

FROZEN = ("prior.", "guidance.prior.")  # never written to checkpoints, nor any frozen parameter


class TextTo3D(pl.LightningModule):
    def __init__(self, cfg: RunConfig, run_dir: Path, prior=None, initialise: bool = True):
        """initialise: build the representation from ``cfg.init_from`` when set (a resumed run
        skips it: its checkpoint holds the representation)."""
        super().__init__()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        s = cfg.system
        self.prior = prior if prior is not None else load_prior(s.prior)
        self.prompts = PromptProcessor(self.prior, self.image_prompt(), cfg.negative_prompt, s.prompts)
        if cfg.init_from and initialise:
            _, source = load_representation(Path(cfg.init_from))
            self.representation = convert(source, s.representation, seed=cfg.trainer.seed)
        else:
            self.representation = build_representation(s.representation, seed=cfg.trainer.seed)
        keep_fit_footprint(self.representation, s.camera)
        if s.camera.views_per_group != self.prior.num_views:
            raise ConfigError(f"system.camera.views_per_group: the prior denoises groups of {self.prior.num_views} "
                              f"view(s), got {s.camera.views_per_group}")
        self.guidance = build_guidance(s.guidance, self.prior)
        self.register_buffer("background", torch.tensor(s.background), persistent=False)
        self.ranges = CameraRanges(s.camera.elevation, s.camera.distance, s.camera.fov_y)
        # Our own step counter, saved in checkpoints: Lightning's global_step counts optimizer
        # steps (several per training step here) and its dataloader restarts on resume.
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave the frozen prior out
        self._t0 = None
        self._evals = self._steps = 0  # prior evaluations and steps run in this session
        self._past = {"seconds": 0.0, "steps": 0, "prior_evals": 0}  # earlier sessions' (resume)

    def image_prompt(self) -> str:
        """The prompt the image guidance sees."""
        return self.cfg.prompt

    # --- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        """The representation's optimizers, then the guidance's own (VSD's LoRA)."""
        rep, guide = self.representation.optimizers(), self.guidance.optimizers()
        self.optimizer_names = list(rep) + [f"guidance/{k}" for k in guide]
        return list(rep.values()) + list(guide.values())

    def _optimizers(self) -> tuple[dict, dict]:
        """(representation optimizers, guidance optimizers), by name."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        named = {n: o.optimizer for n, o in zip(self.optimizer_names, opts)}
        guide = {n: o for n, o in named.items() if n.startswith("guidance/")}
        return {n: o for n, o in named.items() if n not in guide}, guide

    def on_train_batch_start(self, batch, batch_idx):
        if int(self.step_count) >= self.cfg.trainer.max_steps:
            return -1  # tells Lightning to end the epoch: the run is complete

    def distill(self, step: int, g: torch.Generator, time: float | None = None, **render_kwargs):
        """Render a batch of random views (at ``time``, for dynamic representations, with
        ``render_kwargs`` for the representation's render) and score them with the guidance ->
        (RenderOutput, GuidanceOutput)."""
        cfg = self.cfg
        c = cfg.system.camera
        cams = sample_cameras(c.batch_size, self.ranges, c.resolution, g, c.views_per_group).to(self.device)
        if time is not None:
            cams = replace(cams, time=torch.full((len(cams),), time, device=cams.device))
        out = self.representation.render(cams, self.background, generator=g, **render_kwargs)
        rgb = clip_pixel_grad(out.rgb, value_at(cfg.system.pixel_grad_clip, step))
        return out, self.guidance(rgb, self.prompts.conditioning(cams, step), step, generator=g)

    def step_generator(self, step: int) -> torch.Generator:
        """The CPU generator every random draw of training step ``step`` comes from."""
        return torch.Generator().manual_seed(self.cfg.trainer.seed * 1_000_003 + step)

    def training_step(self, batch, batch_idx):
        step = int(self.step_count)
        loss, logs = self.optimise(*self._optimizers(), backward=self.manual_backward)
        self.log_step(step + 1, {"loss": loss, **logs})
        self.log("loss", loss, prog_bar=True, logger=False)  # the bar; loggers get log_step's values
        if self.cfg.trainer.val_every and (step + 1) % self.cfg.trainer.val_every == 0:
            self.save_views(self.run_dir / "val" / f"step{step + 1:05d}.png")

    def log_step(self, step: int, values: dict) -> None:
        """One row of logs/metrics.csv, and the same values to Lightning's loggers (TensorBoard)
        at the training step ``step`` (1-based; Lightning's global_step counts optimizer steps)."""
        values = {k: float(v) for k, v in values.items()}
        self.step_log.append(step, values)
        for logger in self.loggers:
            logger.log_metrics(values, step)

    def optimise(self, opts: dict, guide_opts: dict, backward=torch.Tensor.backward) -> tuple[torch.Tensor, dict]:
        """One training step, without Lightning: render, guide, regularise, step every optimizer
        (``opts``: the representation's, ``guide_opts``: the guidance's, by name) ->
        (detached loss, logs). Random draws come from a CPU generator seeded by (seed, step) and
        are moved to the data's device, so a seed gives the same run on every device."""
        step = int(self.step_count)
        g = self.step_generator(step)
        self.representation.pre_backward(step, opts)
        out, guided = self.distill(step, g)
        regs = self.representation.regularisers(out, step)
        loss = guided.loss + sum(regs.values())
        for o in (*opts.values(), *guide_opts.values()):
            o.zero_grad(set_to_none=True)
        backward(loss)
        for o in (*opts.values(), *guide_opts.values()):
            o.step()
        self.representation.post_step(step, out, opts)
        check_finite(step + 1, loss, self)  # before this step's checkpoint: it keeps the last finite one
        self.step_count += 1
        self._evals, self._steps = self._evals + guided.prior_evals, self._steps + 1
        logs = {"grad": guided.grad_norm, "t": guided.timesteps.float().mean() / self.prior.num_train_timesteps,
                **guided.logs, **{f"reg/{k}": v.detach() for k, v in regs.items()}}
        return guided.loss.detach(), logs

    # --- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        frozen = {k for k, p in self.named_parameters() if not p.requires_grad}  # e.g. VSD's UNet copy
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(FROZEN) and k not in frozen}
        checkpoint["timings"] = self._totals()

    def on_load_checkpoint(self, checkpoint):
        self._past = checkpoint.get("timings", self._past)  # none in checkpoints of older versions
        rep = {k[len("representation."):]: v for k, v in checkpoint["state_dict"].items()
               if k.startswith("representation.")}
        self.representation.load_weights(rep)  # resizes (e.g. densified Gaussians) before Lightning loads

    # --- outputs ----------------------------------------------------------------------------------
    def orbit_cameras(self, n: int, size: int):
        """n evaluation views around the object, on the system's device."""
        c = self.cfg.system.camera
        return orbit(n, c.eval_elevation, c.eval_distance, c.eval_fov_y, size).to(self.device)

    @torch.no_grad()
    def render_frames(self, cameras) -> np.ndarray:
        """[B, H, W, 3] uint8 renders."""
        return to_uint8(self.representation.render(cameras, self.background).rgb.permute(0, 2, 3, 1))

    def render_video_frames(self, cameras, desc: str, batch: int = 8) -> np.ndarray:
        """``render_frames`` a few views at a time, with a progress bar named ``desc``."""
        frames = []
        with progress.bar(total=len(cameras), desc=desc, unit=" views") as bar:
            for i in range(0, len(cameras), batch):
                frames.append(self.render_frames(cameras[i:i + batch]))
                bar.update(len(frames[-1]))
        return np.concatenate(frames)

    def val_image(self) -> np.ndarray:
        """[H, W, 3] uint8: four views around the object, side by side."""
        return np.concatenate(list(self.render_frames(self.orbit_cameras(4, self.cfg.test.resolution))), axis=1)

    def save_views(self, path: Path) -> None:
        """The validation image to ``path`` and to TensorBoard (tag "val", at this step)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        image = self.val_image()
        write_png(path, image)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val", image, int(self.step_count), dataformats="HWC")

    def on_train_start(self):
        self._t0 = time.time()
        self.step_log = StepLog(self.run_dir / "logs" / "metrics.csv", int(self.step_count))

    @torch.no_grad()
    def finish(self) -> dict:
        """Test renders, turntable video, metrics.json, the test.export formats (in
        <run>/export) and report.html for the finished run, each phase with a progress bar."""
        self.representation.eval()
        t = self.cfg.test
        test_dir = self.run_dir / "test"
        test_dir.mkdir(exist_ok=True)
        self.write_test_videos(test_dir)
        with progress.phase("metrics"):
            metrics = self.metrics()
        atomic_write(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        if t.export:
            export(self.run_dir, list(t.export), representation=self.representation)
        with progress.phase("report"):
            write_report(self.run_dir)
        return metrics

    def write_test_videos(self, test_dir: Path) -> None:
        """test/NNN.png and test/turntable.mp4: the evaluation orbit."""
        t = self.cfg.test
        write_test_renders(test_dir, self.render_video_frames(self.orbit_cameras(t.n_frames, t.resolution), "test renders"),
                           t.fps)

    def metrics(self) -> dict:
        return {**evaluate_run(self.cfg, self.representation, self.background), **self.timings()}

    def _totals(self) -> dict:
        """Training seconds, steps and prior evaluations of all sessions so far (a resumed run
        adds its own to those its checkpoint saved)."""
        p = self._past
        return {"seconds": p["seconds"] + time.time() - self._t0, "steps": p["steps"] + self._steps,
                "prior_evals": p["prior_evals"] + self._evals}

    def timings(self) -> dict:
        """steps, the device, and fit_seconds, seconds_per_step and prior_evals_per_step over all
        sessions."""
        t = self._totals()
        return {"steps": self.cfg.trainer.max_steps, "device": str(self.device), "fit_seconds": round(t["seconds"], 1),
                "seconds_per_step": round(t["seconds"] / t["steps"], 4),
                "prior_evals_per_step": t["prior_evals"] / t["steps"]}
