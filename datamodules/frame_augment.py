"""Train-time augmentation of event frames ``[T, C, H, W]``: one random draw per sample, shared by all T frames.

The policies of the OSR paper (Zhu, Ding, Huang, Xie, Yu, "Online Stabilization of Spiking Neural Networks",
ICLR 2024) and the MPBN paper (Guo et al., "Membrane Potential Batch Normalization for Spiking Neural
Networks", ICCV 2023), which :class:`~spikenorm.datamodules.TonicDataModule` applies by default (its
``DVS_DATASETS`` table):

* DVS128 Gesture: random resized crop (scale 0.7 to 1) and random rotation (up to 20 degrees), plus
  random temporal deletion (train on 14 of 20 frames). No flip: left- and right-hand gestures are
  different classes.
* CIFAR10-DVS: NDA (Li et al., ECCV 2022, "Neuromorphic Data Augmentation"): horizontal flip with
  probability 1/2, then one of roll, rotation or shear chosen at random. The magnitudes (roll up to 5
  pixels, rotation up to 15 degrees, shear up to 8 degrees) are spikenorm defaults, not taken from the
  NDA code; all are arguments.
* N-MNIST: none (flips and large rotations change digits).

spikenorm crops and rotates the cached frames after downsampling (e.g. at 48x48), where the paper
crops the 128x128 frames before resizing to 48: the same geometric family, at a fraction of the cost.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2


class FrameAugmentation:
    """Random augmentation of one sample's frames ``[T, C, H, W]`` (float), the same for every frame.

    Args:
        keep_steps: random temporal deletion: keep this many of the ``T`` frames, a uniformly drawn
            subset in time order (``None``: keep all). The task then needs ``time_steps = keep_steps`` and
            ``eval_time_steps = T``.
        crop_scale: random resized crop with area scale in ``[lo, hi]`` and aspect ratio in [3/4, 4/3],
            resized back to ``H x W`` (bilinear); ``None``: no crop.
        rotation: random rotation by up to this many degrees (0: none).
        hflip: horizontal flip with probability 1/2.
        nda: after the above, one of roll (up to ``roll`` pixels in each direction), rotation (up to
            ``nda_rotation`` degrees) or horizontal shear (up to ``shear`` degrees), uniformly chosen.
    """

    def __init__(
        self,
        keep_steps: int | None = None,
        crop_scale: tuple[float, float] | None = None,
        rotation: float = 0.0,
        hflip: bool = False,
        nda: bool = False,
        roll: int = 5,
        nda_rotation: float = 15.0,
        shear: float = 8.0,
    ) -> None:
        if keep_steps is not None and keep_steps < 1:
            raise ValueError(f"FrameAugmentation expects keep_steps >= 1 or None, got {keep_steps}")
        if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"FrameAugmentation expects 0 < crop_scale[0] <= crop_scale[1] <= 1, got {crop_scale}")
        if rotation < 0 or nda_rotation < 0 or shear < 0 or roll < 0:
            raise ValueError(
                "FrameAugmentation expects non-negative magnitudes, got "
                f"rotation={rotation}, roll={roll}, nda_rotation={nda_rotation}, shear={shear}"
            )
        self.keep_steps = keep_steps
        self.crop_scale = None if crop_scale is None else (float(crop_scale[0]), float(crop_scale[1]))
        self.rotation = float(rotation)
        self.hflip = hflip
        self.nda = nda
        self.roll = int(roll)
        self.nda_rotation = float(nda_rotation)
        self.shear = float(shear)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"FrameAugmentation({fields})"

    def __call__(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4:
            raise ValueError(f"FrameAugmentation expects frames [T, C, H, W], got shape {tuple(frames.shape)}")
        if self.keep_steps is not None:
            steps = frames.shape[0]
            if self.keep_steps > steps:
                raise ValueError(f"FrameAugmentation keep_steps={self.keep_steps} exceeds the {steps} frames")
            kept = torch.randperm(steps)[: self.keep_steps].sort().values
            frames = frames[kept]
        height, width = frames.shape[-2:]
        if self.crop_scale is not None:
            frames = v2.RandomResizedCrop((height, width), scale=self.crop_scale, antialias=True)(frames)
        if self.rotation:
            frames = v2.RandomRotation(self.rotation)(frames)
        if self.hflip and torch.rand(()) < 0.5:
            frames = frames.flip(-1)
        if self.nda:
            frames = self._one_of_roll_rotate_shear(frames)
        return frames

    def _one_of_roll_rotate_shear(self, frames: Tensor) -> Tensor:
        choice = int(torch.randint(3, ()))
        if choice == 0:
            dy, dx = torch.randint(-self.roll, self.roll + 1, (2,)).tolist()
            return frames.roll((dy, dx), dims=(-2, -1))
        if choice == 1:
            return v2.RandomRotation(self.nda_rotation)(frames)
        return v2.RandomAffine(degrees=0.0, shear=(-self.shear, self.shear))(frames)
