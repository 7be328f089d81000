"""Amortized text-to-3D without Lightning: the prompt corpus and its shards, per-process random
draws, one step's renders and conditions, and ``generate`` (a trained generator's prompts ->
ordinary triplane run folders). ``systems/amortized.py`` is the Lightning glue around it.

One step on one process (rank r of N): draw P prompts from the rank's shard (prompts r, r+N, ...)
without replacement, P * V random cameras (V = ``system.camera.batch_size`` views per prompt,
prompt p's views contiguous), the generator's planes for the P prompts' text embeddings, their
renders, and the guidance's loss against each view's own prompt. Randomness comes from a CPU
generator seeded by (seed, rank, step): reproducible, different on every rank, and the same
after a resume.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from threedgen.cameras import CameraRanges, orbit, sample_cameras
from threedgen.config import PromptConfig, RunConfig, shipped_path
from threedgen.evaluate import evaluate_run
from threedgen.export.views import to_uint8
from threedgen.files import atomic_target, atomic_write
from threedgen.guidance.base import GuidanceOutput, clip_pixel_grad
from threedgen.priors.base import PromptError
from threedgen.priors.cfg import Conditioning
from threedgen.prompts import PromptProcessor, encode_cached
from threedgen.render.types import RenderOutput
from threedgen.representations.generator import GeneratedTriplanes
from threedgen.registry import build_representation
from threedgen.runs import CKPT, RunError, create_run_dir, save_config, write_test_renders
from threedgen.schedules import ConfigError

KEEP_PROCESSORS = 1024  # drawn prompts' conditions kept in memory; the rest are re-read from the disk cache


def read_corpus(path: str | Path) -> list[str]:
    """A corpus file -> its prompts in order: one a line, surrounding spaces and blank lines
    dropped, a repeated prompt kept once. An unreadable or empty file raises a one-line ConfigError."""
    try:
        text = shipped_path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"corpus {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    prompts = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not prompts:
        raise ConfigError(f"corpus {path}: holds no prompt (give one prompt a line)")
    return prompts


def check_prompts(prior, prompts: list[str], source: str) -> None:
    """Every prompt readable by the prior, else a one-line PromptError naming ``source`` (a file)."""
    for p in prompts:
        try:
            prior.check_prompt(p)
        except PromptError as e:
            raise PromptError(f"{source}: {e}") from None


def shard(prompts: list[str], rank: int, world: int) -> list[str]:
    """Rank ``rank``'s prompts of ``world``: every world-th from the rank-th."""
    if len(prompts) < world:
        raise ConfigError(f"system.amortized.corpus: {len(prompts)} prompt(s) for {world} processes; each "
                          "process needs at least one")
    return prompts[rank::world]


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one rank's step. Rank 0 draws from the seed a per-prompt run uses at
    that step; rank r's seed is offset by r times the golden-ratio constant 0x9E3779B1, modulo
    2^32 (the CPU generator keeps 32 bits of a seed): distinct for steps below 1.6e9."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step + rank * 0x9E3779B1) % 2**32)


def concat_conditioning(conds: list[Conditioning]) -> Conditioning:
    """Conditions of several batches of views -> one, in order (every field along the batch)."""
    first = conds[0]
    cat = lambda name: None if getattr(first, name) is None else torch.cat([getattr(c, name) for c in conds])  # noqa: E731
    perp = tuple((torch.cat([c.perp_neg[i][0] for c in conds]), torch.cat([c.perp_neg[i][1] for c in conds]))
                 for i in range(len(first.perp_neg)))
    fields = [f.name for f in dataclasses.fields(Conditioning) if f.name != "perp_neg"]
    return Conditioning(**{n: cat(n) for n in fields}, perp_neg=perp)


class Corpus:
    """One process's shard of a prompt corpus and its text conditions. Every prompt is encoded
    once, up front (``prompts.encode_cached`` keeps the embeddings on disk, keyed by the text
    encoder and the prompt); a drawn prompt's ``PromptProcessor`` is rebuilt from that cache
    unless it is among the last KEEP_PROCESSORS drawn, so memory does not grow with the corpus."""

    def __init__(self, prior, prompts: list[str], negative_prompt: str = "", cfg: PromptConfig = PromptConfig()):
        self.prompts = prompts
        self.processor = functools.lru_cache(maxsize=KEEP_PROCESSORS)(
            lambda p: PromptProcessor(prior, p, negative_prompt, cfg))
        for p in prompts:
            self.processor(p)

    def draw(self, n: int, g: torch.Generator) -> list[str]:
        """n different prompts of the shard."""
        if n > len(self.prompts):
            raise ConfigError(f"system.amortized.prompts_per_step: {n}, but this process's shard holds "
                              f"{len(self.prompts)} prompt(s)")
        return [self.prompts[i] for i in torch.randperm(len(self.prompts), generator=g)[:n].tolist()]

    def conditions(self, prompts: list[str], cameras, step: int) -> tuple[Tensor, Conditioning]:
        """P prompts, cameras [P * V] (prompt p's views contiguous) -> (text [P, L, D], the
        generator's input; the guidance's Conditioning for the P * V views)."""
        V = len(cameras) // len(prompts)
        procs = [self.processor(p) for p in prompts]
        cond = concat_conditioning([pr.conditioning(cameras[i * V:(i + 1) * V], step) for i, pr in enumerate(procs)])
        return torch.cat([pr.text for pr in procs]), cond


def render_corpus(rep: GeneratedTriplanes, corpus: Corpus, cfg: RunConfig, step: int, g: torch.Generator,
                  background: Tensor) -> tuple[RenderOutput, Conditioning]:
    """One step's prompts, cameras, planes and renders on one process -> (renders [P*V, ...],
    the guidance's conditions for them)."""
    c, a = cfg.system.camera, cfg.system.amortized
    prompts = corpus.draw(a.prompts_per_step, g)
    ranges = CameraRanges(c.elevation, c.distance, c.fov_y)
    cams = sample_cameras(len(prompts) * c.batch_size, ranges, c.resolution, g, c.views_per_group)
    text, cond = corpus.conditions(prompts, cams, step)
    return rep.render_batch(rep.generator(text), cams.to(background.device), background, g), cond


def distill_corpus(rep: GeneratedTriplanes, corpus: Corpus, guidance, cfg: RunConfig, step: int,
                   g: torch.Generator, background: Tensor, pixel_grad_clip: float = 0.0
                   ) -> tuple[RenderOutput, GuidanceOutput]:
    """One step's forward on one process: ``render_corpus``, then the guidance."""
    out, cond = render_corpus(rep, corpus, cfg, step, g, background)
    return out, guidance(clip_pixel_grad(out.rgb, pixel_grad_clip), cond, step, generator=g)


# --- generate: prompts -> run folders ------------------------------------------------------------

def load_generator(cfg: RunConfig, state: dict, prior) -> GeneratedTriplanes:
    """A generator run's GeneratedTriplanes (eval mode) from its config and checkpoint state_dict."""
    text_dim = encode_cached(prior, [""], cfg.system.prompts.cache).shape[-1]
    seed = cfg.trainer.seed
    rep = GeneratedTriplanes(build_representation(cfg.system.representation, seed=seed),
                             cfg.system.amortized.generator, text_dim, seed=seed)
    prefix = "representation."
    try:
        rep.load_weights({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    except RuntimeError as e:
        raise RunError(f"the checkpoint does not fit the run's generator ({e})") from None
    return rep.eval()


def generated_config(cfg: RunConfig, prompt: str, out: Path) -> RunConfig:
    """The config of one generated run: the generator run's, as a single-process triplane run of
    ``prompt`` under ``out``."""
    trainer = dataclasses.replace(cfg.trainer, devices=1, num_nodes=1, strategy="auto")
    return dataclasses.replace(cfg, prompt=prompt, system=dataclasses.replace(cfg.system, amortized=None),
                               trainer=trainer, output_dir=str(out.parent), name=out.name)


@torch.no_grad()
def generate(rep: GeneratedTriplanes, prior, cfg: RunConfig, prompts: list[str], out: Path,
             source: Path, argv: list[str]) -> list[tuple[Path, dict]]:
    """One ordinary triplane run folder per prompt under ``out`` (config.yaml, cmd.txt,
    ckpts/last.ckpt in the layout ``runs.load_representation`` reads, test/ renders,
    metrics.json); ``source``: the generator's run folder -> [(run folder, metrics)]."""
    check_prompts(prior, prompts, "generate")  # every prompt before any folder is written
    rep.eval()
    background = torch.tensor(cfg.system.background)
    done = []
    for prompt in prompts:
        run_cfg = generated_config(cfg, prompt, out)
        t0 = time.perf_counter()
        text = encode_cached(prior, [prompt], cfg.system.prompts.cache)
        tri = rep.triplane_for(rep.generator(text)[0], seed=cfg.trainer.seed)
        cams = test_cameras(run_cfg)
        tri.render(cams[:1], background)  # the first render: part of the timed call
        seconds = time.perf_counter() - t0
        frames = to_uint8(tri.render(cams, background).rgb.permute(0, 2, 3, 1))
        run = create_run_dir(run_cfg)
        save_config(run, run_cfg, argv)
        write_checkpoint(run / CKPT, tri, source)
        write_test_renders(run / "test", frames, run_cfg.test.fps)
        metrics = {**evaluate_run(run_cfg, tri, background), "generated_from": str(source),
                   "generate_seconds": round(seconds, 3)}
        atomic_write(run / "metrics.json", json.dumps(metrics, indent=2))
        done.append((run, metrics))
    return done


def test_cameras(cfg: RunConfig):
    """The evaluation orbit of the test renders: ``test.n_frames`` views at ``test.resolution``."""
    c, t = cfg.system.camera, cfg.test
    return orbit(t.n_frames, c.eval_elevation, c.eval_distance, c.eval_fov_y, t.resolution)


def write_checkpoint(path: Path, rep, source: Path) -> None:
    """A checkpoint that ``runs.load_representation`` reads: {"state_dict": {"representation.<k>": v}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"representation.{k}": v.detach().cpu() for k, v in rep.state_dict().items()}
    with atomic_target(path) as tmp:
        torch.save({"state_dict": state, "generated_from": str(source)}, tmp)
