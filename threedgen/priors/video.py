"""Text-to-video priors: video UNets on clips, one timestep per clip.

``VideoFrames`` is the clip layout every video family shares: clips [B, 3, T, R, R] are encoded
frame by frame into [B, C, T, h, w] (by the family's image codec); a ``UNet3DConditionModel``
(ModelScope, zeroscope) takes the text [B, L, D] once per clip, a ``UNetMotionModel``
(AnimateDiff, the embedded video prior) once per frame; the camera, if any, is the UNet's
``timestep_cond`` (a projection added to the timestep features).

``TextToVideo``: ModelScope / zeroscope-style checkpoints on AutoencoderKL latents.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet3DConditionModel, UNetMotionModel
from torch import Tensor, nn

from threedgen.priors.diffusion import DiffusionPrior, read_config
from threedgen.priors.sd import StableDiffusion

VIDEO_UNETS = (UNet3DConditionModel, UNetMotionModel)


def video_unet_class(folder: Path) -> type | None:
    """The video UNet class a text-to-video checkpoint's ``unet/config.json`` names; None for an
    image UNet."""
    name = read_config(folder, "unet/config.json").get("_class_name")
    return {cls.__name__: cls for cls in VIDEO_UNETS}.get(name)


def per_frame(fn, clip: Tensor) -> Tensor:
    """Apply an image function to each frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    out = fn(clip.transpose(1, 2).flatten(0, 1))  # [B*T, C', H', W']
    return out.unflatten(0, (len(clip), -1)).transpose(1, 2)


def frame_text(unet, text: Tensor, frames: int) -> Tensor:
    """The text rows a video UNet takes for clips of ``frames`` frames: text [B, L, D] as it is for
    a UNet3DConditionModel, repeated per frame [B * T, L, D] for a UNetMotionModel (whose forward
    folds the frames into the batch and, unlike diffusers' AnimateDiff pipeline, leaves the
    repeat to the caller)."""
    return text.repeat_interleave(frames, 0) if isinstance(unet, UNetMotionModel) else text


class VideoFrames(DiffusionPrior):
    """The clip layout, over a family's image codec (put it first among the bases)."""

    video = True

    @staticmethod
    def detects(folder: Path) -> bool:
        return video_unet_class(folder) is not None

    @classmethod
    def unet_class(cls, folder: Path) -> type:
        return video_unet_class(folder)

    def encode_images(self, rgb: Tensor) -> Tensor:
        """Clips [B, 3, T, R, R] in [0, 1] -> [B, C, T, R/f, R/f], frame by frame (single images
        [B, 3, R, R] as the codec encodes them)."""
        return per_frame(super().encode_images, rgb) if rgb.dim() == 5 else super().encode_images(rgb)

    def decode(self, x: Tensor) -> Tensor:
        """[B, C, T, h, w] -> clips [B, 3, T, R, R], frame by frame (images as the codec does)."""
        return per_frame(super().decode, x) if x.dim() == 5 else super().decode(x)

    @staticmethod
    def camera_input_width(config) -> int | None:
        return config.get("time_cond_proj_dim")

    def unet_inputs(self, unet: nn.Module, x_t: Tensor, text: Tensor,
                    class_labels: Tensor | None) -> tuple[Tensor, dict]:
        """x_t [B, C, T, h, w], text [B, L, D] -> (``frame_text``, the camera features [B, Dc] as
        ``timestep_cond`` when given)."""
        extra = {} if class_labels is None else {"timestep_cond": class_labels.to(unet.dtype)}
        return frame_text(unet, text, x_t.shape[2]), extra


class TextToVideo(VideoFrames, StableDiffusion):
    """ModelScope / zeroscope: a UNet3DConditionModel on AutoencoderKL latents, CLIP text."""
