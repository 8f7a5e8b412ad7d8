"""Train augmentation of a whole batch at once: per-sample ``RandomResizedCrop`` + horizontal flip
+ ``Normalize`` as one ``affine_grid``/``grid_sample`` call (issue #10).

The per-sample path (``RandomResizedCrop → RandomHorizontalFlip → ToTensor → Normalize`` on PIL
images, 000 App. C.1, SPEC §7) costs one Python call chain per image and cannot run on a GPU.
:class:`BatchAugment` takes the batch ``N×C×H×W`` (uint8 as stored, or float in [0, 1]) on
whatever device it lives and gives the same *distribution* of augmented images:

* every sample gets its own crop box, drawn as ``torchvision.transforms.RandomResizedCrop
  .get_params`` draws it (:func:`random_resized_crop_params`): area fraction ``s ~ U(scale)``,
  aspect ratio ``r = exp(U(log ratio))``, ``w = round(√(s·H·W·r))``, ``h = round(√(s·H·W/r))``,
  accepted if it fits, up to 10 tries, else the central crop of the closest allowed ratio; the
  position is uniform over the boxes that fit;
* a flip with probability ``flip_p``, folded into the affine map (``x → −x``);
* the crop is resampled to ``size×size`` by bilinear ``grid_sample`` (``align_corners=False``)
  at exactly the points ``(u + ½)·w/size − ½`` that a bilinear resize of the cropped image
  samples, clamped to the box's pixel centres as the resize clamps them: it equals torchvision's
  tensor ``resized_crop`` (bilinear) up to float rounding when up-sampling, the usual case. It
  differs from the per-sample PIL path where PIL anti-aliases a down-sampling crop and where PIL
  rounds the resized image to uint8, so images are close to, not equal to, that path's;
* then ``(x − mean) / std`` per channel.

Random numbers come from torch's global CPU generator (or ``generator``): ``seed_everything``
makes the draws reproducible and an RNG-state checkpoint (``callbacks/rng_state.py``) makes
resumes exact, and a CPU and a GPU run of the same seed draw the same boxes. The number of draws
per batch is fixed (``22·N`` for crops, ``N`` more for flips), whatever the draws turn out to
be. The stream is not the per-sample path's: runs are not bit-identical between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: torchvision's default aspect-ratio range of ``RandomResizedCrop``.
DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
#: tries before the central-crop fallback (torchvision's ``get_params``).
TRIES = 10


def random_resized_crop_params(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float] = DEFAULT_RATIO,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop boxes ``(top, left, h, w)`` of ``n`` images ``height×width``, int64 ``n×4``: the rule
    of ``torchvision.transforms.RandomResizedCrop.get_params``, vectorised over samples and tries.

    For each sample, try ``k = 1..10``: ``s ~ U(scale)``, ``r = exp(U(log ratio))``,
    ``w = round(√(s·A·r))``, ``h = round(√(s·A/r))`` with ``A = height·width``; the first try with
    ``0 < w ≤ width`` and ``0 < h ≤ height`` wins. Without one: the whole image cut to the
    nearest allowed aspect ratio, centred. The position is uniform over the fitting boxes:
    ``top = ⌊u·(height − h + 1)⌋``, ``left = ⌊v·(width − w + 1)⌋``. Draws on the CPU.
    """
    lo, hi = float(scale[0]), float(scale[1])
    log_lo, log_hi = torch.log(torch.tensor([float(ratio[0]), float(ratio[1])])).tolist()
    area = float(height * width)
    s = torch.empty(n, TRIES).uniform_(lo, hi, generator=generator)
    r = torch.exp(torch.empty(n, TRIES).uniform_(log_lo, log_hi, generator=generator))
    s64, r64 = s.double(), r.double()
    w = torch.round(torch.sqrt(area * s64 * r64)).long()  # round half to even, as Python's round
    h = torch.round(torch.sqrt(area * s64 / r64)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first accepted try
    found = ok.any(dim=1)
    w_ok, h_ok = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback: central crop of the full image cut to the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w_box = torch.where(found, w_ok, torch.full_like(w_ok, fw))
    h_box = torch.where(found, h_ok, torch.full_like(h_ok, fh))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h_box + 1)).long().clamp_max(height - h_box)
    left = torch.floor(u[:, 1] * (width - w_box + 1)).long().clamp_max(width - w_box)
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h_box, w_box], dim=1)


def crop_flip_theta(boxes: Tensor, flip: Tensor, height: int, width: int) -> Tensor:
    """The ``n×2×3`` matrices of ``affine_grid`` (normalised coordinates, ``align_corners=False``)
    that map the output square onto each crop box, mirrored where ``flip``.

    Box ``(top, left, h, w)`` spans ``[2·left/W − 1, 2·(left + w)/W − 1]`` in normalised x, so
    ``x_in = (2·left + w)/W − 1 + (±w/W)·x_out`` (− for a flip) and likewise for y.
    """
    b = boxes.double()
    top, left, h, w = b.unbind(dim=1)
    theta = torch.zeros(len(boxes), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def box_pixel_centres(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Normalised ``(x, y)`` of the first and last pixel centres of each box, ``n×1×1×2`` each:
    the range the sampling grid is clamped to, so that — as in a resize of the cropped image —
    points within half a pixel of the box edge repeat the edge pixel instead of blending in the
    pixels outside the box (``(2·p + 1)/W − 1`` for pixel column ``p``)."""
    top, left, h, w = boxes.to(torch.float32).unbind(dim=1)
    lo = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1)
    hi = torch.stack([(2 * (left + w) - 1) / width - 1, (2 * (top + h) - 1) / height - 1], dim=1)
    return lo[:, None, None, :], hi[:, None, None, :]


class BatchAugment:
    """Per-sample ``RandomResizedCrop(size, scale, ratio)`` + flip (``flip_p``) + ``Normalize``
    of a batch ``N×C×H×W`` in one ``grid_sample`` call, on the batch's device (module docstring).

    Args:
        size: side of the (square) output, the network input.
        scale: range of the crop's area fraction (``crop_scale``).
        mean, std: per-channel normalisation applied after the crop, on ``[0, 1]`` pixels.
        flip_p: probability of a horizontal flip per sample (0 = no flip and no flip draws).
        ratio: range of the crop's aspect ratio w/h (log-uniform).
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
        flip_p: float = 0.5,
        ratio: Sequence[float] = DEFAULT_RATIO,
    ) -> None:
        if not 0.0 < float(scale[0]) <= float(scale[1]) <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {tuple(scale)}")
        if not 0.0 < float(ratio[0]) <= float(ratio[1]) or not math.isfinite(float(ratio[1])):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32)

    def __repr__(self) -> str:
        return (
            f"BatchAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_p={self.flip_p})"
        )

    def draw(self, n: int, height: int, width: int, generator: torch.Generator | None = None):
        """The random part of one batch: crop boxes ``n×4`` and flip flags ``(n,)`` (CPU)."""
        boxes = random_resized_crop_params(n, height, width, self.scale, self.ratio, generator)
        if self.flip_p > 0.0:
            flip = torch.rand(n, generator=generator) < self.flip_p
        else:
            flip = torch.zeros(n, dtype=torch.bool)
        return boxes, flip

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augmented, normalised float32 ``N×C×size×size`` on ``x.device``; ``x`` is uint8 (pixels
        0–255, as ``ToTensor`` divides them by 255) or float in ``[0, 1]``."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch N×C×H×W, got shape {tuple(x.shape)}")
        n, c, height, width = x.shape
        if c != len(self.mean):
            raise ValueError(f"{c} channels but mean/std for {len(self.mean)}")
        boxes, flip = self.draw(n, height, width, generator)
        theta = crop_flip_theta(boxes, flip, height, width)
        pixels = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if n == 0:
            return pixels.new_empty(0, c, self.size, self.size)
        grid = F.affine_grid(
            theta.to(device=x.device, dtype=torch.float32),
            [n, c, self.size, self.size],
            align_corners=False,
        )
        lo, hi = box_pixel_centres(boxes, height, width)
        grid = torch.maximum(torch.minimum(grid, hi.to(x.device)), lo.to(x.device))
        out = F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        mean = self.mean.to(x.device)[:, None, None]
        std = self.std.to(x.device)[:, None, None]
        return out.sub_(mean).div_(std)
