"""What each export format writes, from a ``Job`` (the run's config and representation, the
options, the output folder); the name -> format table is ``threedgen.registry.FORMATS`` and
``threedgen.export.run.export`` runs it on a run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch

from threedgen.cameras import make_cameras, orbit
from threedgen.export.axes import Up
from threedgen.export.gltf import glb as glb_bytes
from threedgen.export.mesh import SurfaceError, bake_views, fidelity, textured_mesh, write_glb, write_obj, write_ply
from threedgen.export.splat import write_splat_ply
from threedgen.export import views as V
from threedgen.files import atomic_write
from threedgen.progress import counting_renders
from threedgen.schedules import check_image_size


class ExportError(ValueError):
    """A run that cannot be exported in the asked format; the message is one line."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``export`` (each format reads the ones it needs); CLI: ``key=value``."""

    grid: int = 128  # density grid of the isosurface (NeRF, triplane, Gaussians)
    level: float | None = None  # isosurface level; default: the one matching the renders' silhouettes
    min_piece: float = 0.05  # drop pieces with fewer faces than this fraction of the largest
    max_faces: int = 20000  # decimate to about this many faces (quadric); 0 keeps them all
    texture_size: int = 1024
    # Surface colours: "project" back-projects 48 renders onto the mesh (export.mesh.bake_views),
    # "query" asks the representation (surface_colour) at each point; "auto": query for a mesh
    # representation (its colour at its own triangles is exact), project otherwise.
    bake: Literal["auto", "project", "query"] = "auto"
    resolution: int | None = None  # of turntable frames and view images; default 256 (gpteval3d: 512)
    frames: int = 60  # turntable
    fps: int = 20
    shading: Literal["rgb", "normal", "depth"] = "rgb"  # turntable
    elevation: float | None = None  # turntable; default: the run's evaluation elevation
    elevations: tuple[float, ...] = (0.0, 30.0)  # views: one ring of views per elevation
    azimuths: int = 8  # views per ring
    background: tuple[float, float, float] | None = None  # default: the run's background
    times: int = 8  # 4D runs: frames of the mesh and splat sequences (times k / times)
    prompt_id: int = 0  # gpteval3d: the prompt's index in GPTEval3D's prompts.json (its folder name)
    # The files' up axis (export.axes): "y" (glTF's, and what Blender and three.js assume for OBJ
    # and PLY), "-y" (3DGS viewers'), "z" (the project's own). Default: y for glb, obj and ply,
    # -y for splat. transforms.json (views) keeps nerfstudio's convention whatever this says.
    up: Up | None = None

    def __post_init__(self):
        if self.grid < 8 or self.texture_size < 8 or (self.resolution is not None and self.resolution < 8):
            raise ValueError("grid, texture_size and resolution must be at least 8")
        if self.grid > 1024:
            raise ValueError(f"grid: {self.grid} is too large (a {self.grid}^3 grid of density and colour "
                             f"needs about {self.grid ** 3 * 16 / 2**30:,.0f} GiB; at most 1024)")
        check_image_size("texture_size", self.texture_size, 1)
        if self.resolution is not None:
            check_image_size("resolution", self.resolution, self.frames)
        if min(self.frames, self.fps, self.azimuths, self.times) < 1 or not self.elevations:
            raise ValueError("frames, fps, azimuths and times must be positive and elevations non-empty")
        if self.prompt_id < 0:
            raise ValueError(f"prompt_id: must be at least 0, got {self.prompt_id}")
        if self.max_faces < 0 or not 0 <= self.min_piece < 1:
            raise ValueError("max_faces >= 0 and 0 <= min_piece < 1 are required")
        if any(abs(e) > 89.9 for e in self.elevations) or (self.elevation is not None and abs(self.elevation) > 89.9):
            raise ValueError("elevations must lie within (-90, 90) degrees")
        if self.background is not None and not all(0 <= c <= 1 for c in self.background):
            raise ValueError("background colour components must lie in [0, 1]")

    def size(self, default: int) -> int:
        """The image size of a format: ``resolution``, else the format's ``default``."""
        return self.resolution or default


class Job:
    """One export call: the run's config and representation, the options, the output folder,
    and what several formats share (the textured meshes)."""

    def __init__(self, cfg, rep, out: Path, opts: ExportConfig):
        self.cfg, self.rep, self.out, self.opts = cfg, rep, out, opts
        self.background = torch.tensor(opts.background or cfg.system.background, dtype=torch.float32)
        self.dynamic = rep.dynamic
        self.mesh_up = opts.up or "y"  # the meshes' up axis: glTF's y unless ``up`` says otherwise

    def orbit(self, n: int, size: int, elevation: float | None = None, time: bool = False):
        """n views around the object at the run's evaluation camera (distance, field of view);
        ``time``: with times k / n, so that a dynamic object plays once during the orbit."""
        c = self.cfg.system.camera
        el = c.eval_elevation if elevation is None else elevation
        cams = orbit(n, el, c.eval_distance, c.eval_fov_y, size)
        return replace(cams, time=torch.arange(n, dtype=torch.float32) / n) if time else cams

    @cached_property
    def frames(self) -> list[tuple[str, float | None, object]]:
        """(file-name suffix, time, static representation) of each frame to export: the run's
        representation, or for a 4D run snapshots at ``times`` times ("_000", "_001", ...)."""
        if not self.dynamic:
            return [("", None, self.rep)]
        n = self.opts.times
        return [(f"_{k:03d}", k / n, self.rep.at_time(k / n)) for k in range(n)]

    @cached_property
    def meshes(self) -> dict:
        """suffix -> textured mesh, each with its fidelity against 8 orbit views, reported in
        mesh.json (a 4D run's lists its frames)."""
        o, meshes, c = self.opts, {}, self.cfg.system.camera
        project = o.bake == "project" or (o.bake == "auto" and self.rep.meshed_as == "isosurface")
        views = bake_views(c.eval_distance, c.eval_fov_y) if project else None
        for suffix, time, rep in self.frames:
            try:
                with counting_renders(rep, f"mesh{suffix}: surface and texture bake"):
                    m = textured_mesh(rep, grid=o.grid, level=o.level, min_piece=o.min_piece,
                                      max_faces=o.max_faces, texture_size=o.texture_size,
                                      cameras=views, background=self.background)
            except SurfaceError as e:
                raise ExportError(f"mesh: {e}" + (f" (time {time:g})" if time is not None else "")) from None
            with counting_renders(rep, f"mesh{suffix}: fidelity", total=8):
                m.info["fidelity"] = fidelity(rep, m.verts, m.faces, m.uv, m.texture, self.orbit(8, 128),
                                              self.background)
            meshes[suffix] = m
        report = (meshes[""].info if not self.dynamic else
                  {"frames": [{"time": t, **meshes[s].info} for s, t, _ in self.frames]})
        atomic_write(self.out / "mesh.json", json.dumps(report, indent=2))
        return meshes


def mesh_format(write, sequence=None):
    """A format that writes each textured mesh with ``write(mesh, job, suffix)``; for a 4D run,
    ``sequence(job)`` also writes all frames as one file."""
    def run(job: Job) -> list[Path]:
        whole = sequence(job) if sequence and job.dynamic else []
        return whole + [p for suffix, m in job.meshes.items() for p in write(m, job, suffix)] + [job.out / "mesh.json"]

    return run


def glb(m, job: Job, suffix: str) -> list[Path]:
    return write_glb(m, job.out / f"mesh{suffix}.glb", up=job.mesh_up)


def animated_glb(job: Job) -> list[Path]:
    """A 4D run's frames as one .glb that plays them in turn (``export.gltf``), at the turntable's
    pace: one period of the motion in ``frames / fps`` seconds."""
    o = job.opts
    path = job.out / "mesh.glb"
    atomic_write(path, glb_bytes(list(job.meshes.values()), job.mesh_up, frame_seconds=o.frames / o.fps / o.times))
    return [path]


def obj(m, job: Job, suffix: str) -> list[Path]:
    return write_obj(m, job.out / f"obj{suffix}", up=job.mesh_up)


def ply(m, job: Job, suffix: str) -> list[Path]:
    return write_ply(m, job.out / f"mesh{suffix}.ply", up=job.mesh_up)


def splat(job: Job) -> list[Path]:
    if not job.rep.has_splats:
        raise ExportError(f"splat: a {job.cfg.system.representation.name} run has no Gaussians "
                          "(the splat format is for gaussians runs)")
    paths = []
    for suffix, _, rep in job.frames:
        paths.append(job.out / f"splat{suffix}.ply")
        write_splat_ply(rep, paths[-1], up=job.opts.up or "-y")
    return paths


def turntable(suffix: str):
    def write(job: Job) -> list[Path]:
        """The turntable (a 4D run plays once while the camera orbits), and for a 4D run a
        fixed-view video too."""
        o = job.opts
        shading = "" if o.shading == "rgb" else "-" + o.shading
        size = o.size(256)
        videos = {f"turntable{shading}": job.orbit(o.frames, size, o.elevation, time=job.dynamic)}
        if job.dynamic:
            one = job.orbit(1, size, o.elevation)[torch.zeros(o.frames, dtype=torch.long)]
            videos[f"fixed{shading}"] = replace(one, time=torch.arange(o.frames, dtype=torch.float32) / o.frames)
        paths = []
        for name, cams in videos.items():
            paths.append(job.out / f"{name}.{suffix}")
            with counting_renders(job.rep, paths[-1].name, total=len(cams)):
                frames = V.turntable(job.rep, cams, o.shading, job.background)
            V.write_video(paths[-1], frames, fps=o.fps)
        return paths

    return write


def views(job: Job) -> list[Path]:
    """The multi-view set (for a 4D run, of its first frame)."""
    o, c = job.opts, job.cfg.system.camera
    cams = V.view_cameras(o.elevations, o.azimuths, c.eval_distance, c.eval_fov_y, o.size(256))
    rep = job.frames[0][2]
    with counting_renders(rep, "views", total=len(cams)):
        return V.write_view_set(rep, cams, job.out / "views", job.background)


# GPTEval3D (github.com/3DTopia/GPTEval3D) compares methods on 120 views a shape, rendered on
# threestudio's test camera path: threestudio's RandomCameraDataset "test" split puts its
# n_test_views = 120 cameras at azimuths torch.linspace(0, 360, 120) (so the last repeats the
# first) at eval_elevation_deg = 15, z up, azimuth from +x towards +y, as threedgen's cameras.
GPTEVAL3D_VIEWS = 120
GPTEVAL3D_ELEVATION = 15.0


def gpteval3d(job: Job) -> list[Path]:
    """GPTEval3D's inputs for one shape (for a 4D run, its first frame):
    ``gpteval3d/<prompt_id>/<seed>/rgb_<k>.png`` and ``normal_<k>.png``, k = 0 .. 119 without
    padding, as its tournament code reads them (``rgb_%d.png``, from the folder of prompt id
    ``prompt_id`` and seed folder ``<seed>``: the run's ``trainer.seed``; GPTEval3D reads seed 0).
    ``gpteval3d/`` is then a method folder of GPTEval3D's layout (it must hold nothing but prompt
    folders). Views: threestudio's test path (above) at ``elevation`` (default 15 degrees) and the
    run's evaluation distance and field of view, ``resolution`` (default 512) square, 8-bit RGB:
    colours on the run's background; world normals as (n + 1) / 2 times the coverage (black where
    empty), threestudio's ``comp_normal``."""
    o, c = job.opts, job.cfg.system.camera
    elevation = GPTEVAL3D_ELEVATION if o.elevation is None else o.elevation
    azimuths = torch.linspace(0.0, 360.0, GPTEVAL3D_VIEWS)
    cams = make_cameras(elevation, azimuths, c.eval_distance, c.eval_fov_y, o.size(512))
    folder = job.out / "gpteval3d" / str(o.prompt_id) / str(job.cfg.trainer.seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, k = [], 0
    for out, batch in V.render_batches(job.frames[0][2], cams, job.background):
        normals = (V.world_normals(out, batch) + 1) / 2 * out.alpha
        for rgb, normal in zip(out.rgb, normals):
            for name, image in (("rgb", rgb), ("normal", normal)):
                paths.append(folder / f"{name}_{k}.png")
                V.write_png(paths[-1], V.to_uint8(image.permute(1, 2, 0)))
            k += 1
    return paths
