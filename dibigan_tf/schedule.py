"""Progressive growing schedule (PO-GAN) and DiBiGAN's exponential loss weighting (section 3.4).

Stage s trains resolution `start_resolution * 2**s`. Stage 0 has a stable phase only; every later
stage first fades the new block in (alpha rising linearly from 0 to 1 over `fade_images` images)
then trains it stable for `stable_images` images. All positions are counted in images shown to the
generator, so that a run resumed from a checkpoint lands on exactly the same stage, phase and alpha.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Phase:
    index: int
    stage: int
    fade: bool
    start_image: int
    end_image: int
    batch_size: int
    resolution: int

    @property
    def num_images(self) -> int:
        return self.end_image - self.start_image

    @property
    def name(self) -> str:
        return f"{self.resolution}x{self.resolution}-{'fade' if self.fade else 'stable'}"


@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    """The images-based schedule.

    batch sizes: the paper's rule (128 at 4x4, halved at each doubling) is
    `base_batch_size * base_batch_resolution / resolution`, clipped below at `min_batch_size`;
    `batch_sizes` overrides it per stage.
    """

    num_stages: int
    start_resolution: int
    stable_images: Sequence[int]
    fade_images: Sequence[int]
    base_batch_size: int = 128
    base_batch_resolution: int = 4
    min_batch_size: int = 4
    batch_sizes: Optional[Sequence[int]] = None

    def __post_init__(self):
        if self.num_stages < 1:
            raise ValueError("num_stages must be >= 1")
        for name in ("stable_images", "fade_images"):
            values = getattr(self, name)
            if len(values) != self.num_stages:
                raise ValueError(f"{name} has {len(values)} entries for {self.num_stages} stages")
            if any(v < 0 for v in values):
                raise ValueError(f"{name} must be non-negative, got {list(values)}")
        if self.batch_sizes is not None and len(self.batch_sizes) != self.num_stages:
            raise ValueError(f"batch_sizes has {len(self.batch_sizes)} entries for "
                             f"{self.num_stages} stages")

    @classmethod
    def uniform(cls, num_stages, start_resolution, stable_images, fade_images, **kwargs):
        """Same image counts at every stage (stage 0 has no fade)."""
        return cls(num_stages, start_resolution, [stable_images] * num_stages,
                   [0] + [fade_images] * (num_stages - 1), **kwargs)

    def resolution(self, stage: int) -> int:
        return self.start_resolution * 2 ** stage

    def batch_size(self, stage: int) -> int:
        if self.batch_sizes is not None:
            return int(self.batch_sizes[stage])
        size = self.base_batch_size * self.base_batch_resolution // self.resolution(stage)
        return max(self.min_batch_size, int(size))

    def phases(self) -> List[Phase]:
        phases, position = [], 0
        for stage in range(self.num_stages):
            parts = [(False, self.stable_images[stage])]
            if stage > 0:
                parts.insert(0, (True, self.fade_images[stage]))
            for fade, count in parts:
                if count == 0:
                    continue
                phases.append(Phase(len(phases), stage, fade, position, position + count,
                                    self.batch_size(stage), self.resolution(stage)))
                position += count
        return phases

    @property
    def total_images(self) -> int:
        return sum(self.stable_images) + sum(self.fade_images[1:])

    def phase_at(self, images_seen: int) -> Optional[Phase]:
        """The phase that the image at position `images_seen` belongs to (None when done)."""
        for phase in self.phases():
            if images_seen < phase.end_image:
                return phase
        return None

    def alpha(self, images_seen: int) -> float:
        """Fade-in alpha at a position: linear over a fade phase, 1.0 in stable phases."""
        phase = self.phase_at(images_seen)
        if phase is None or not phase.fade:
            return 1.0
        return (images_seen - phase.start_image) / phase.num_images

    def scale(self, images_seen: int) -> float:
        """R(i): the current scale, in octaves above the start resolution.

        Integer in stable phases; during the fade-in of stage s it rises continuously from s - 1
        to s with alpha, so the loss weights move smoothly with the growing network.
        """
        phase = self.phase_at(images_seen)
        if phase is None:
            return float(self.num_stages - 1)
        if phase.fade:
            return phase.stage - 1 + self.alpha(images_seen)
        return float(phase.stage)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    biject: float
    distill: float
    adversarial: float
    recon: float


def exponential_weights(scale: float, max_scale: float, alpha: float = 0.001,
                        beta: float = 1.0) -> LossWeights:
    """Section 3.4: lambda_b = alpha e^(R_M - R), lambda_d = lambda_r = e^(R_M - R), lambda_adv = beta e^R.

    R is the current scale and R_M the largest one, both counted in octaves above the start
    resolution (stage indices), which is our reading of "the current scales of stage i": identity
    terms dominate early, the adversarial term late. (Counting R in log2 pixels instead would only
    multiply lambda_adv by the constant e^(log2 start_resolution) and leave the other weights as
    they are.)
    """
    identity = math.exp(max_scale - scale)
    return LossWeights(biject=alpha * identity, distill=identity,
                       adversarial=beta * math.exp(scale), recon=identity)
