"""Forward+backward timing of the CPU Gaussian rasterizers: tiled (numba) vs the dense reference.

    python -m threedgen.benchmarks.gaussians               # 1k/5k/20k Gaussians at 64 and 128 px
    python -m threedgen.benchmarks.gaussians --quick       # 1k/5k at 32 and 64 px
    python -m threedgen.benchmarks.gaussians --no-dense    # tiled only (the dense 20k/128 case takes minutes)
    python -m threedgen.benchmarks.gaussians --threads 1   # on a machine whose cores are busy elsewhere

The scene is a ball of random Gaussians (radius 0.5, opacity 0.5) seen by 4 cameras on an orbit,
as early in a text-to-3D run. Times are wall-clock medians on the current torch thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from threedgen.cameras import orbit
from threedgen.render.gaussians import CPU_TILE_SIZE, rasterize_dense, rasterize_cpu
from threedgen.representations.gaussians import Gaussians


def _scene(n_gaussians: int, size: int, n_cameras: int, seed: int = 0):
    g = Gaussians.from_random_ball(n_gaussians, radius=0.5, seed=seed)
    with torch.no_grad():
        g.params["opacities"].fill_(0.0)  # sigmoid(0) = 0.5
    return g, orbit(n_cameras, 15.0, 2.7, 40.0, size)


def _time(fn, g, cams, repeats: int, **kwargs) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of forward+backward."""
    viewmats, Ks = cams.viewmats(), cams.intrinsics()
    bg = torch.ones(len(cams), 3)
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        render, alphas, _ = fn(g.means, g.quats, g.scales, g.opacities, g.colors, viewmats, Ks,
                               cams.width, cams.height, backgrounds=bg, **kwargs)
        (render.mean() + alphas.mean()).backward()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        g.zero_grad(set_to_none=True)
    return statistics.median(walls), statistics.median(cpus)


def bench_rasterizer(n_gaussians: int, size: int, n_cameras: int = 4, repeats: int = 3,
                     dense: bool = True, tile_size: int = CPU_TILE_SIZE,
                     dense_repeats: int | None = None) -> dict:
    """Median forward+backward wall seconds of rasterize_cpu ("tiled", at tile_size) and
    rasterize_dense ("dense"; None when dense=False) for n_gaussians into n_cameras views of
    size x size, after one untimed warm-up run each (dense_repeats, default repeats, of 1: one timed
    run of the dense reference and no warm-up: it takes minutes at 20k / 128^2); "speedup" is
    dense / tiled. "tiled_cpu" and
    "dense_cpu" are the process CPU seconds (with one thread, the work itself: steadier than
    wall time when other jobs share the cores)."""
    g, cams = _scene(n_gaussians, size, n_cameras)
    result = {"n_gaussians": n_gaussians, "size": size, "n_cameras": n_cameras,
              "tile_size": tile_size, "dense": None, "dense_cpu": None}
    _time(rasterize_cpu, g, cams, 1, tile_size=tile_size)
    result["tiled"], result["tiled_cpu"] = _time(rasterize_cpu, g, cams, repeats,
                                                 tile_size=tile_size)
    if dense:
        dense_repeats = dense_repeats or repeats
        if dense_repeats > 1:
            _time(rasterize_dense, g, cams, 1)
        result["dense"], result["dense_cpu"] = _time(rasterize_dense, g, cams, dense_repeats)
    result["speedup"] = result["dense"] / result["tiled"] if result["dense"] else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k/5k at 32 and 64 px only")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile-size", type=int, default=CPU_TILE_SIZE)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is best when other jobs load the cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = ([(n, s) for s in (32, 64) for n in (1000, 5000)] if args.quick
             else [(n, s) for s in (64, 128) for n in (1000, 5000, 20000)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 4 cameras, "
          f"forward+backward, tile {args.tile_size}")
    print(f"{'gaussians':>10} {'size':>5} {'tiled ms':>10} {'(cpu ms)':>10} {'dense ms':>10} "
          f"{'(cpu ms)':>10} {'speedup':>8}")
    ms = lambda v: f"{1e3 * v:10.1f}" if v else f"{'-':>10}"  # noqa: E731
    for n, s in cases:
        r = bench_rasterizer(n, s, repeats=args.repeats, dense=not args.no_dense,
                             tile_size=args.tile_size)
        speed = f"{r['speedup']:7.1f}x" if r["speedup"] else f"{'-':>8}"
        print(f"{n:>10} {s:>5} {ms(r['tiled'])} {ms(r['tiled_cpu'])} {ms(r['dense'])} "
              f"{ms(r['dense_cpu'])} {speed}", flush=True)


if __name__ == "__main__":
    main()
