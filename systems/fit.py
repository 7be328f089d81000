"""Run one optimisation with Lightning: progress bar, CSV and TensorBoard logs, atomic
checkpoints, resume."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from threedgen.systems.amortized import Amortized
from threedgen.systems.text_to_3d import TextTo3D
from threedgen.systems.text_to_4d import TextTo4D
from threedgen.config import RunConfig
from threedgen.registry import system_kind
from threedgen.files import atomic_target
from threedgen.runs import CKPT, RUN_DIR_ENV, read_checkpoint


# The systems by kind (``registry.system_kind``); they sit above the registry, so their table is here.
SYSTEMS = {"text_to_3d": TextTo3D, "text_to_4d": TextTo4D, "amortized": Amortized}


class AtomicCheckpoint(pl.Callback):
    """Writes ``ckpts/last.ckpt`` every ``every`` steps and at the end: temp file, then rename
    (a failed write, e.g. on a full disk, keeps the last good checkpoint: ``atomic_target``)."""

    def __init__(self, run_dir: Path, every: int):
        self.path, self.every = Path(run_dir) / CKPT, every

    def save(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:  # under DDP rank 0 writes; the others join Lightning's barrier
            trainer.save_checkpoint(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(self.path) as tmp:
            trainer.save_checkpoint(tmp)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = int(module.step_count)
        if step % self.every == 0 or step == module.cfg.trainer.max_steps:
            self.save(trainer)


def tensorboard_logger(run_dir: Path, done: int) -> TensorBoardLogger:
    """Event files in ``logs/tensorboard`` (``tensorboard --logdir RUN/logs``). A run resumed
    from a checkpoint of ``done`` steps hides the events of later steps, which it runs again
    (SummaryWriter's purge_step), as StepLog drops their rows."""
    return TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False,
                             purge_step=done + 1 if done else None)


def fit(cfg: RunConfig, run_dir: Path, ckpt_path: Path | None = None, **priors) -> dict:
    """Optimise ``cfg.prompt`` into ``run_dir`` (a 4D run when ``cfg.system.video`` is set);
    return the final metrics. priors: already loaded priors, by the system's argument names
    (``prior``; a 4D run's ``video_prior``); the system loads the others."""
    threads = torch.get_num_threads()
    try:
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        return _fit(cfg, run_dir, ckpt_path, priors)
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: RunConfig, run_dir: Path, ckpt_path: Path | None, priors: dict) -> dict:
    pl.seed_everything(cfg.trainer.seed, verbose=False)
    module = SYSTEMS[system_kind(cfg)](cfg, run_dir, initialise=ckpt_path is None, **priors)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # "GPU available", tips; after import: it resets it
    # The module writes logs/metrics.csv itself (runs.StepLog): one row per step, kept on resume;
    # it sends the same values, and the validation images, to TensorBoard.
    done = int(read_checkpoint(ckpt_path)["state_dict"]["step_count"]) if ckpt_path else 0
    bar = [TQDMProgressBar(refresh_rate=10)] if sys.stderr.isatty() else []  # none in logs and pipes
    t = cfg.trainer
    if t.devices * t.num_nodes > 1:  # the processes Lightning starts write to this run folder too
        os.environ[RUN_DIR_ENV] = str(run_dir)
    trainer = pl.Trainer(
        accelerator="auto", devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        use_distributed_sampler=False, max_epochs=1, logger=tensorboard_logger(run_dir, done),
        log_every_n_steps=1, enable_progress_bar=bool(bar),
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[AtomicCheckpoint(run_dir, cfg.trainer.ckpt_every), *bar])
    # One item per step; the module ends the epoch itself once its saved step count is reached.
    steps = DataLoader(range(cfg.trainer.max_steps), batch_size=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen prior
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
        trainer.fit(module, steps, ckpt_path=ckpt_path, weights_only=True)  # a checkpoint never runs code
    return module.finish()
