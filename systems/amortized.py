"""The amortized system: one prompt-conditioned triplane generator for a whole prompt corpus
(ScaleDreamer's setting), trained by score distillation with any guidance in the table (ASD by
default), under Lightning DDP when ``trainer.devices`` x ``trainer.num_nodes`` > 1.

Everything but the Lightning glue is the per-prompt system's (``TextTo3D``: the step, manual
optimisation, divergence check, checkpoints, timings) or ``threedgen.amortized``'s (the corpus,
its shards, a step's renders and conditions). Under DDP:
- each process trains on its shard of the corpus (prompts rank, rank + N, ...), draws its own
  prompts, cameras and noise from (seed, rank, step), and DDP averages the gradients;
- rank 0 alone writes ``logs/metrics.csv`` (the loss averaged over the processes), ``val/``,
  ``ckpts/last.ckpt`` (atomically, ``systems.fit.AtomicCheckpoint``) and the end-of-run files;
- a resume loads the checkpoint on every process; each then continues its own random stream.

``cfg.prompt`` is the preview prompt: ``val/``, ``test/`` and ``metrics.json`` show the
generator's object for it. ``corpus.txt`` in the run folder keeps the corpus trained on.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from threedgen.systems.text_to_3d import TextTo3D
from threedgen.amortized import Corpus, check_prompts, distill_corpus, read_corpus, shard, step_generator
from threedgen.config import RunConfig
from threedgen.evaluate import evaluate_run
from threedgen.export.views import to_uint8
from threedgen.files import atomic_write
from threedgen.representations.generator import GeneratedTriplanes
from threedgen.runs import StepLog
from threedgen.schedules import value_at


class _NoLog:
    """The step log of processes other than rank 0."""

    def append(self, step: int, values: dict) -> None:
        pass


class Amortized(TextTo3D):
    def __init__(self, cfg: RunConfig, run_dir: Path, prior=None, initialise: bool = True):
        super().__init__(cfg, run_dir, prior=prior, initialise=initialise)
        a = cfg.system.amortized
        self.corpus_prompts = read_corpus(a.corpus)
        check_prompts(self.prior, self.corpus_prompts, a.corpus)
        text_dim = self.prompts.text.shape[-1]
        self.representation = GeneratedTriplanes(self.representation, a.generator, text_dim, seed=cfg.trainer.seed)
        self.corpus = None  # this process's shard: ``use_shard``, once the rank is known

    def use_shard(self, rank: int, world: int) -> None:
        """Encode (or read from the disk cache) the conditions of prompts rank, rank + world, ..."""
        s = self.cfg.system
        self.corpus = Corpus(self.prior, shard(self.corpus_prompts, rank, world), self.cfg.negative_prompt, s.prompts)

    def setup(self, stage: str) -> None:
        self.use_shard(self.global_rank, self.world_size)
        if self.is_zero:
            atomic_write(self.run_dir / "corpus.txt", "".join(f"{p}\n" for p in self.corpus_prompts))

    # --- optimisation -----------------------------------------------------------------------------
    def step_generator(self, step: int) -> torch.Generator:
        return step_generator(self.cfg.trainer.seed, self.global_rank, step)

    def distill(self, step: int, g: torch.Generator, time: float | None = None):
        return distill_corpus(self.representation, self.corpus, self.guidance, self.cfg, step, g, self.background,
                              value_at(self.cfg.system.pixel_grad_clip, step))

    def optimise(self, opts: dict, guide_opts: dict, backward=torch.Tensor.backward):
        """TextTo3D's step; the loss it reports is the mean over the processes."""
        loss, logs = super().optimise(opts, guide_opts, backward)
        if self.world_size > 1:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        return loss, logs

    # --- outputs: rank 0 ----------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """The processes training together (1 outside a Trainer)."""
        return 1 if self._trainer is None else self.trainer.world_size

    @property
    def is_zero(self) -> bool:
        """Rank 0 writes the run folder's files (also true outside a Trainer: tests, one process)."""
        return self._trainer is None or self.trainer.is_global_zero

    def on_train_start(self):
        self._t0 = time.time()
        self.step_log = StepLog(self.run_dir / "logs" / "metrics.csv", int(self.step_count)) if self.is_zero else _NoLog()

    def save_views(self, path: Path) -> None:
        if self.is_zero:
            super().save_views(path)

    @torch.no_grad()
    def preview(self):
        """The generator's Triplane for the preview prompt ``cfg.prompt``."""
        planes = self.representation.generator(self.prompts.text.to(self.device))[0]
        return self.representation.triplane_for(planes, seed=self.cfg.trainer.seed)

    @torch.no_grad()
    def render_frames(self, cameras):
        return to_uint8(self.preview().render(cameras, self.background).rgb.permute(0, 2, 3, 1))

    def metrics(self) -> dict:
        return {**evaluate_run(self.cfg, self.preview(), self.background), **self.timings(),
                "corpus_prompts": len(self.corpus_prompts), "processes": self.world_size}

    def finish(self) -> dict:
        if not self.is_zero:
            return {}
        return super().finish()
