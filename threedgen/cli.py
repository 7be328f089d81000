"""``threedgen fit | generate | batch | eval | export | report | bench | train-prior | check-prior``.

User errors (bad config, unknown prompt word, missing, damaged or unsafe checkpoint, unwritable
folder) print one line, ``threedgen: error: ...``, and exit with code 2; no traceback. Faults
during a run (a full disk, a diverged optimisation, any other failed read or write) print one
line too and exit with code 1. A fresh ``fit`` that stops before its first checkpoint removes
its run folder: it could be neither resumed nor evaluated. ``fit`` and ``eval`` run through the
Python API's functions (threedgen/api.py), ``export`` through the same ``export``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import diffusers
import torch
import transformers

from threedgen import batch
from threedgen import config as C
from threedgen import runs
from threedgen.amortized import generate, load_generator, read_corpus
from threedgen.api import Run, fit_config
from threedgen.evaluate import metrics_table
from threedgen.export.formats import ExportConfig, ExportError
from threedgen.export.run import export
from threedgen.files import WriteError, atomic_write
from threedgen.priors.base import PriorLoadError, PromptError
from threedgen.priors.diffusion import EMBEDDED_PATH, EMBEDDED_VIDEO_PATH
from threedgen.registry import FORMATS, load_prior
from threedgen.report.build import ReportError, report
from threedgen.world import classifier as K
from threedgen.world import train as T
from threedgen.world.clip import train_world_clip, world_clip_figures
from threedgen.world.check import check_prior, check_video_prior


class UserError(Exception):
    """Raised for bad input; main() prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """Command-line mistakes as one line too (argparse prints the usage first)."""

    def error(self, message):
        self.exit(2, f"threedgen: error: {message}; see '{self.prog} -h'\n")


USER_ERRORS = (UserError, C.ConfigError, PromptError, PriorLoadError, runs.RunError, ExportError, ReportError,
               batch.BatchError)
FAULTS = (WriteError, runs.NonFiniteError, OSError)


def cmd_fit(args) -> int:
    if args.resume:
        run = Path(args.resume)
        cfg = runs.load_run_config(run)
        if args.overrides:
            raise UserError("--resume takes no overrides: a resumed run keeps its config")
    else:
        if not args.config:
            raise UserError("fit needs --config RECIPE (a name such as gaussians-sds, or a file; or --resume RUN_DIR)")
        cfg = C.load(args.config, args.overrides)
        run = None
    result = fit_config(cfg, ["threedgen", *args.argv], resume=run)
    print(json.dumps({"run": str(result.path), **result.metrics}, indent=2))
    return 0


def cmd_batch(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise UserError(f"batch --workers: must be at least 1, got {args.workers}")
    if args.retries < 0:
        raise UserError(f"batch --retries: must be at least 0, got {args.retries}")
    return batch.run_batch(Path(args.prompts), args.config, args.overrides, args.out, args.address, args.workers,
                           args.retries, ["threedgen", *args.argv])


def cmd_generate(args) -> int:
    run = Path(args.generator_run)
    prompts = list(args.prompts) + (read_corpus(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise UserError('generate needs prompts: PROMPT ... (e.g. "a blue cone") or --prompts FILE')
    cfg = runs.load_run_config(run)
    if cfg.system.amortized is None:
        raise UserError(f"{run}: not a generator run (its config has no system.amortized); fit one with "
                        "configs/amortized-asd.yaml")
    state = runs.read_checkpoint(runs.checkpoint_path(run))["state_dict"]
    prior = load_prior(cfg.system.prior)
    rep = load_generator(cfg, state, prior)
    out = Path(args.out) if args.out else run / "generated"
    done = generate(rep, prior, cfg, prompts, out, run, ["threedgen", *args.argv])
    print(json.dumps([{"run": str(r), **m} for r, m in done], indent=2))
    return 0


def cmd_eval(args) -> int:
    # "RUN RUN eval.clip_model=X": key=value words among the run folders are eval settings.
    folders = [Path(w) for w in args.run_dirs if "=" not in w]
    overrides = [w for w in args.run_dirs if "=" in w]
    if args.clip_model:
        overrides.append(f"eval.clip_model={args.clip_model}")
    if args.views < 1:
        raise UserError(f"eval --views: must be at least 1, got {args.views}")
    if not folders:
        raise UserError("eval: no run folder given")
    other = [o for o in overrides if not o.startswith("eval.")]
    if other:
        raise UserError(f"eval: {other[0]}: only eval.* settings can be given (a run keeps the rest of its config)")
    if args.out and not Path(args.out).parent.is_dir():
        raise UserError(f"eval --out: the folder {Path(args.out).parent} does not exist")
    rows = [{"run": str(run), **Run.open(run).evaluate_dotted(overrides, args.views)} for run in folders]
    if args.out:
        atomic_write(Path(args.out), json.dumps(rows, indent=2) + "\n")
    fmt = args.format or ("json" if len(rows) == 1 else "markdown")
    if fmt == "json":
        # one run: its metrics as Run.evaluate returns them; several: a list naming each run
        print(json.dumps(metrics_of(rows[0]) if len(rows) == 1 else rows, indent=2))
    else:
        print(metrics_table(rows, fmt), end="")
    return 0


def metrics_of(row: dict) -> dict:
    """An eval row without the run folder it names."""
    return {k: v for k, v in row.items() if k != "run"}


def cmd_export(args) -> int:
    # "--format glb mp4 shading=normal": key=value words after the formats are options too.
    formats = [f for f in args.format if "=" not in f]
    opts = C.from_overrides(ExportConfig, [*args.options, *(f for f in args.format if "=" in f)])
    for path in export(Path(args.run_dir), formats, Path(args.out) if args.out else None, opts):
        print(path)
    return 0


def cmd_report(args) -> int:
    print(report(Path(args.path)))
    return 0


# train-prior's options that are config fields (argparse dest = field name, but --clips and
# --fixed-phase); the second set only applies to the video prior
TRAIN_OPTIONS = ("steps", "lr", "warmup", "ema_decay", "max_loss_weight", "init_from")
VIDEO_TRAIN_OPTIONS = ("timestep_shift", "camera_lr_scale", "temporal_lr_scale", "prediction_type",
                       "temporal_loss_weight", "balance_motions", "fixed_phase", "snr_shift", "azimuth", "clips")


def cmd_train_prior(args) -> int:
    # the options given (None / False: not given, the config's default), as config fields
    given = {k: v for k in (*TRAIN_OPTIONS, *VIDEO_TRAIN_OPTIONS)
             if (v := getattr(args, k)) is not None and v is not False}  # "--lr 0" is given (0 == False)
    video_only = [f"--{k.replace('_', '-')}" for k in VIDEO_TRAIN_OPTIONS if k in given]
    if video_only and not args.video:
        raise UserError(f"train-prior: {', '.join(video_only)} only apply with --video")
    if args.part == "clip" and args.video:
        raise UserError("train-prior --part clip: the world's CLIP reads still images; drop --video")
    if "clips" in given:
        given["clips_per_combination"] = given.pop("clips")
    if given.pop("fixed_phase", False):
        given["random_phase"] = False
    if "azimuth" in given:
        given["azimuth"] = tuple(given["azimuth"])
    try:  # validated before anything is written
        video_cfg = T.VideoTrainConfig(seed=args.seed, **given) if args.video else None
        image_cfg = None if args.video else T.PriorTrainConfig(seed=args.seed, **given)
    except ValueError as e:
        raise UserError(f"train-prior{' --video' if args.video else ''}: {e}") from e
    out = Path(args.out or ("prior-training/video" if args.video else "prior-training/weights"))
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log")])
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part in ("all", "diffusion"):
        if args.video:
            T.train_video(out, video_cfg)
        else:
            T.train_diffusion(out, image_cfg)
    if args.part in ("all", "classifier"):
        if args.video:
            model = K.train_clip_classifier(out / "classifier", seed=args.seed)
            print(json.dumps({"classifier_accuracy": K.clip_classifier_accuracy(model)}))
        else:
            model = K.train_classifier(out / "classifier", seed=args.seed)
            print(json.dumps({"classifier_accuracy": K.classifier_accuracy(model)}))
    if args.part in ("all", "clip") and not args.video:
        print(json.dumps({"clip": world_clip_figures(train_world_clip(out / "clip", seed=args.seed))}))
    ship = "video" if args.video else "weights"
    print(f"saved to {out}; copy it to threedgen/priors/embedded/{ship} to ship it")
    return 0


def cmd_check_prior(args) -> int:
    t_start = None if args.t_start < 0 else args.t_start
    if args.video:
        result = check_video_prior(Path(args.path) if args.path else EMBEDDED_VIDEO_PATH, Path(args.grid),
                                   samples=args.views, guidance_scale=args.guidance_scale, steps=args.steps,
                                   seed=args.seed, t_start=t_start)
    else:
        result = check_prior(Path(args.path) if args.path else EMBEDDED_PATH, Path(args.grid),
                             views=args.views, guidance_scale=args.guidance_scale, steps=args.steps,
                             seed=args.seed, t_start=t_start)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench(args) -> int:
    # The benchmarks import Lightning (2-3 s); only this command needs them.
    from threedgen.benchmarks import gpu_step, real_priors, run as bench_run

    if args.gpu:
        return gpu_step.main([])
    if args.prior:
        print(real_priors.sd21_shape_sds_step())
        return 0
    return bench_run.main(args)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="threedgen", description="Text-to-3D by score distillation.")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="optimise one prompt into a 3D object")
    f.add_argument("--config", action="append",
                   help="recipe: a shipped one's name (gaussians-sds; the files in configs/) or a YAML file "
                        "(repeatable; merged in order)")
    f.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    f.add_argument("overrides", nargs="*", help='dotted key=value, e.g. prompt="a red cube" trainer.max_steps=800')
    f.set_defaults(func=cmd_fit)

    g = sub.add_parser("generate", help="a trained generator's object for each prompt, one run folder each")
    g.add_argument("generator_run", help="the run folder of an amortized fit (configs/amortized-*.yaml)")
    g.add_argument("prompts", nargs="*", help='prompts, e.g. "a blue cone" "a red torus"')
    g.add_argument("--prompts", dest="prompts_file", metavar="FILE", help="a text file, one prompt a line")
    g.add_argument("--out", help="where the run folders go (default: GENERATOR_RUN/generated)")
    g.set_defaults(func=cmd_generate)

    a = sub.add_parser("batch", help="fit every prompt of a file on a Ray cluster (a local one by default), "
                                     "one run folder each under one batch folder")
    a.add_argument("prompts", metavar="PROMPTS.txt", help="one prompt a line; blank lines and # comments are skipped")
    a.add_argument("--config", action="append", required=True, help="YAML recipe (repeatable; merged in order)")
    a.add_argument("--out", help="the batch folder (default: <output_dir>/<name>/batch-<PROMPTS stem>); the same "
                                 "command run again skips the finished prompts and resumes the others")
    a.add_argument("--address", help="a running Ray cluster ('auto', or the head's host:port that 'ray start "
                                     "--head' prints); default: start a local one")
    a.add_argument("--workers", type=int, help="prompts fitted side by side (default: as many as the cluster "
                                               "holds, each reserving the recipe's resources.cpus / gpus / memory_gb)")
    a.add_argument("--retries", type=int, default=2, help="times a prompt whose worker died resumes on a new one")
    a.add_argument("overrides", nargs="*", help="dotted key=value for every prompt, e.g. trainer.max_steps=800")
    a.set_defaults(func=cmd_batch)

    e = sub.add_parser("eval", help="metrics of finished runs: JSON for one, a table for several")
    e.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders, and eval.* settings as key=value (eval.prompt_pool=FILE eval.views=8)")
    e.add_argument("--views", type=int, default=4, help="orbit views of the embedded world's metrics")
    e.add_argument("--clip-model", help="CLIP for the CLIP metrics: a hub id, a local folder or 'embedded' "
                                        "(default: the run's eval.clip_model)")
    e.add_argument("--format", choices=["json", "markdown", "csv"],
                   help="what is printed (default: json for one run, a markdown table for several)")
    e.add_argument("--out", help="also write every run's metrics to this JSON file (a list, one entry a run)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a finished run's assets (several formats in one call)")
    x.add_argument("run_dir")
    x.add_argument("--format", nargs="+", required=True, metavar="FORMAT",
                   help=f"one or more of {', '.join(FORMATS)}. glb / obj / ply: textured "
                        "mesh; splat: the Gaussians as a 3DGS .ply; mp4 / gif: turntable; views: "
                        "multi-view set with transforms.json; gpteval3d: GPTEval3D's 120 RGB and normal "
                        "views (prompt_id=N)")
    x.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    x.add_argument("options", nargs="*", help="key=value export options, e.g. texture_size=2048 "
                   "max_faces=20000 shading=normal frames=90 (see threedgen.export.formats.ExportConfig)")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("report", help="a run's report.html, or an index.html of every run below a folder")
    r.add_argument("path", help="a run folder (writes RUN/report.html) or a folder of runs, e.g. outputs/ "
                                "(writes each run's report and PATH/index.html)")
    r.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="renderer and step timings, as a table")
    b.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    b.add_argument("--prior", choices=["sd21-shape"],
                   help="instead: one SDS step of a random-weight SD 2.1-size UNet, fp16 on CUDA (skipped without)")
    b.add_argument("--gpu", action="store_true",
                   help="instead: one full step of each real-prior recipe at real scale on CUDA, split into its "
                        "parts, against the UNet's CFG pair (skipped without CUDA; benchmarks/gpu_step.py)")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train-prior", help="train the embedded prior (or --video: the video prior) and its classifier")
    t.add_argument("--video", action="store_true", help="the text-to-video prior of the moving world")
    t.add_argument("--out", help="default: prior-training/weights (prior-training/video with --video)")
    t.add_argument("--steps", type=int, help="default: 5000 (2000 with --video)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--lr", type=float, help="peak learning rate (default 6e-4; 2e-4 with --video)")
    t.add_argument("--warmup", type=int, help="learning-rate warmup steps (default 100)")
    t.add_argument("--init-from", help="continue training this image prior's folder (default: from scratch); "
                                       "with --video: start from this image prior (default: the shipped one) "
                                       "or an earlier video prior's folder")
    t.add_argument("--timestep-shift", type=float,
                   help="with --video: draw t = T u^(1/k), k > 1 favouring high noise (default 1: uniform)")
    t.add_argument("--camera-lr-scale", type=float,
                   help="with --video: learning-rate factor of the camera projection (default 1)")
    t.add_argument("--temporal-lr-scale", type=float,
                   help="with --video: learning-rate factor of the temporal layers (default 1)")
    t.add_argument("--max-loss-weight", type=float,
                   help="weight each sample's loss by 1/SNR(t), clamped to [1, this] (default 1: off)")
    t.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                   help="with --video: what the UNet predicts (default epsilon)")
    t.add_argument("--temporal-loss-weight", type=float,
                   help="with --video: weight of the frame-to-frame difference of the error (default 0: off)")
    t.add_argument("--balance-motions", action="store_true",
                   help="with --video: draw each motion (and still) equally often, not each clip")
    t.add_argument("--fixed-phase", action="store_true", help="with --video: every training clip starts at phase 0")
    t.add_argument("--ema-decay", type=float, help="EMA decay of the saved weights (default 0.999)")
    t.add_argument("--snr-shift", type=float,
                   help="with --video: divide the noise schedule's SNR by this squared (default 1: the plain cosine)")
    t.add_argument("--azimuth", type=float, nargs=2, metavar=("LO", "HI"),
                   help="with --video: the clips' camera azimuth range, degrees (default 30 60: the mug's handle in profile)")
    t.add_argument("--clips", type=int,
                   help="with --video: training clips rendered per shape and motion (default 60)")
    t.add_argument("--part", choices=["all", "diffusion", "classifier", "clip"], default="all",
                   help="all: the diffusion model, its classifier and (not with --video) the world's CLIP")
    t.set_defaults(func=cmd_train_prior)

    c = sub.add_parser("check-prior", help="sample the prior and score the samples, as JSON")
    c.add_argument("--video", action="store_true", help="the video prior: clips of every shape and motion")
    c.add_argument("--path", help="prior folder (default: the shipped one)")
    c.add_argument("--grid", default="check-prior.png", help="where to save the sample grid")
    c.add_argument("--views", type=int, default=4, help="samples per prompt (with --video: per shape and motion)")
    c.add_argument("--guidance-scale", type=float, default=7.5)
    c.add_argument("--steps", type=int, default=50)
    c.add_argument("--seed", type=int, default=0, help="seeds the noise, cameras and colours drawn")
    c.add_argument("--t-start", type=int, default=850,
                   help="start DDIM at this timestep from the world's mean image; -1: pure noise at the top")
    c.set_defaults(func=cmd_check_prior)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args, extra = p.parse_known_args(argv)
    # "batch PROMPTS.txt --config R k=v": argparse gives the words after an option to no positional
    if extra and not (args.command == "batch" and all("=" in w and not w.startswith("-") for w in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    args.argv = argv

    transformers.logging.disable_progress_bar()  # "Loading weights" bars on every prior load
    diffusers.utils.logging.disable_progress_bar()
    try:
        return args.func(args)
    except FAULTS as e:
        print(f"threedgen: error: {e}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        print(f"threedgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
