"""Turntable videos from rendered frames."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """frames [N, H, W, 3] uint8 -> .mp4 (imageio's bundled ffmpeg) or .gif, written atomically.

    Frames are padded to even sizes with white, as H.264 with yuv420p needs."""
    path = Path(path)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix == ".gif":
        imageio.mimsave(tmp, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(tmp, list(frames), fps=fps, macro_block_size=1)
    tmp.replace(path)
