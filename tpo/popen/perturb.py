"""Input perturbations for POPEN's segmentation-embedding preference set.

POPEN adds Gaussian noise to three rectangular regions of the input and reruns the model with
the same instruction. For video we draw the rectangles once per clip and apply them to every
frame (the same region is hidden throughout, as an occluder would be); the noise itself is drawn
independently per pixel and frame.

Only the frames the LLM sees (`TrainBatch.frames`, normalised) are perturbed. The mask head
decodes on the clean mask frames, so the mask quality of a perturbed run differs from the clean
run only through the `<tracking>` embedding, which is what the preference loss ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_rects(
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    n_rects: int = 3,
    min_frac: float = 0.1,
    max_frac: float = 0.4,
) -> list[tuple[int, int, int, int]]:
    """`n_rects` rectangles `(y0, x0, y1, x1)` (end-exclusive pixels) inside a height x width
    image; each side is a uniform fraction in [min_frac, max_frac] of that dimension (at least
    one pixel), and the position is uniform over where the rectangle fits."""
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(
            f"random_rects: need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}"
        )
    if n_rects < 0:
        raise ValueError(f"random_rects: n_rects must be >= 0, got {n_rects}")
    rects = []
    for _ in range(n_rects):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        h = max(1, round((min_frac + (max_frac - min_frac) * u[0]) * height))
        w = max(1, round((min_frac + (max_frac - min_frac) * u[1]) * width))
        y0 = min(int(u[2] * (height - h + 1)), height - h)
        x0 = min(int(u[3] * (width - w + 1)), width - w)
        rects.append((y0, x0, y0 + h, x0 + w))
    return rects


def perturb_frames(
    frames: Tensor,
    generator: torch.Generator,
    *,
    n_rects: int = 3,
    noise_std: float = 1.0,
    min_frac: float = 0.1,
    max_frac: float = 0.4,
) -> Tensor:
    """A copy of normalised `frames [f, 3, H, W]` with Gaussian noise (std `noise_std`, in
    normalised units) added inside `n_rects` random rectangles, the same rectangles on every
    frame (see `random_rects`). The rectangles are drawn first, then the noise, both from
    `generator` (on the CPU), so the result depends only on the generator's state."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"perturb_frames: expected frames [f, 3, H, W], got {tuple(frames.shape)}")
    f, _, height, width = frames.shape
    rects = random_rects(
        height, width, generator, n_rects=n_rects, min_frac=min_frac, max_frac=max_frac
    )
    inside = torch.zeros(height, width, dtype=torch.bool)
    for y0, x0, y1, x1 in rects:
        inside[y0:y1, x0:x1] = True
    noise = torch.randn(f, 3, height, width, generator=generator) * noise_std
    noise = noise * inside  # zero outside the rectangles
    return frames + noise.to(frames.device, frames.dtype)
