"""The batched train augmentation (issue #10): per-sample RandomResizedCrop boxes drawn as
torchvision draws them, crop + flip as one ``grid_sample``, normalisation, and its randomness."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from datamodules.batch_augment import (
    DEFAULT_RATIO,
    BatchAugment,
    crop_flip_theta,
    random_resized_crop_params,
)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    pixels = x.float() / 255 if x.dtype == torch.uint8 else x
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("size", "dtype"), [(32, torch.uint8), (48, torch.uint8), (24, torch.float32)]
)
def test_output_shape_dtype_and_device(size: int, dtype: torch.dtype) -> None:
    x = _images(5)
    x = x if dtype == torch.uint8 else x.float() / 255
    out = BatchAugment(size, (0.5, 1.0), MEAN, STD)(x)
    assert out.shape == (5, 3, size, size) and out.dtype == torch.float32
    assert out.device == x.device
    assert BatchAugment(size, (0.5, 1.0), MEAN, STD)(x[:0]).shape == (0, 3, size, size)


def test_full_crop_without_flip_is_the_normalised_image() -> None:
    """scale = ratio = (1, 1): every box is the whole image, so grid_sample samples the pixel
    centres themselves."""
    x = _images(8)
    aug = BatchAugment(32, (1.0, 1.0), MEAN, STD, flip_p=0.0, ratio=(1.0, 1.0))
    torch.testing.assert_close(aug(x), _normalise(x), atol=1e-5, rtol=0)


def test_flip_only_mirrors_every_image() -> None:
    x = _images(8)
    aug = BatchAugment(32, (1.0, 1.0), MEAN, STD, flip_p=1.0, ratio=(1.0, 1.0))
    torch.testing.assert_close(aug(x), _normalise(x).flip(-1), atol=1e-5, rtol=0)


def test_half_of_the_images_are_flipped_independently() -> None:
    x = _images(1).expand(400, -1, -1, -1)
    torch.manual_seed(0)
    out = BatchAugment(32, (1.0, 1.0), MEAN, STD, ratio=(1.0, 1.0))(x)
    plain, mirror = _normalise(x[0]), _normalise(x[0]).flip(-1)
    same = torch.tensor([torch.allclose(o, plain, atol=1e-5) for o in out])
    flipped = torch.tensor([torch.allclose(o, mirror, atol=1e-5) for o in out])
    assert bool((same ^ flipped).all())
    assert 150 < int(flipped.sum()) < 250  # p = 0.5: 200 ± 5 sd


def test_each_sample_gets_its_own_crop_box() -> None:
    aug = BatchAugment(32, (0.08, 1.0), MEAN, STD)
    torch.manual_seed(0)
    boxes, flips = aug.draw(64, 32, 32)
    assert len({tuple(b) for b in boxes.tolist()}) > 50
    assert 0 < int(flips.sum()) < 64
    # the same image 64 times comes out as (mostly) different crops
    out = aug(_images(1).expand(64, -1, -1, -1))
    distinct = {tuple(o.flatten()[:50].tolist()) for o in out}
    assert len(distinct) > 50


def test_crop_equals_torchvision_resized_crop_of_the_drawn_box() -> None:
    """The affine map of a box (+ its clamp to the box's pixel centres) resamples exactly what a
    bilinear resize of the cropped image gives: checked against torchvision's tensor
    ``resized_crop`` for up- and down-sampling (without anti-aliasing, which PIL adds when it
    down-samples)."""
    x = torch.rand(16, 3, 32, 32)
    for size in (32, 48, 20):
        aug = BatchAugment(size, (0.08, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        boxes, flips = aug.draw(16, 32, 32, torch.Generator().manual_seed(size))
        out = aug(x, torch.Generator().manual_seed(size))
        for k in range(16):
            top, left, h, w = boxes[k].tolist()
            ref = TF.resized_crop(x[k], top, left, h, w, [size, size], antialias=False)
            ref = ref.flip(-1) if flips[k] else ref
            torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def test_reproducible_under_the_global_seed_and_a_generator() -> None:
    x = _images(32)
    aug = BatchAugment(32, (0.08, 1.0), MEAN, STD)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(4)
    c = aug(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(aug(x, g1), aug(x, g2))


def test_a_batch_always_takes_the_same_number_of_random_draws() -> None:
    """Whatever the boxes turn out to be (accepted or the fallback), the global RNG advances by
    a fixed amount per batch of a given size: resumes replay the same stream."""
    fallback = BatchAugment(32, (1.0, 1.0), MEAN, STD, ratio=(2.0, 3.0))  # never fits a square
    usual = BatchAugment(32, (0.08, 1.0), MEAN, STD)
    after = []
    for aug, x in ((fallback, _images(10)), (usual, _images(10, seed=1))):
        torch.manual_seed(0)
        aug(x)
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1])


def test_drawn_areas_and_ratios_lie_in_their_ranges() -> None:
    """On a large image (rounding negligible) every accepted box has area fraction in
    ``scale`` and aspect ratio in ``ratio``, and lies inside the image."""
    side, scale = 1000, (0.2, 0.6)
    boxes = random_resized_crop_params(5000, side, side, scale, generator=torch.Generator())
    top, left, h, w = boxes.double().unbind(1)
    area = h * w / side**2
    assert float(area.min()) >= scale[0] - 2e-3 and float(area.max()) <= scale[1] + 2e-3
    ratio = w / h
    lo, hi = DEFAULT_RATIO
    assert float(ratio.min()) >= lo - 2e-3 and float(ratio.max()) <= hi + 2e-3
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= side).all() and (left + w <= side).all())
    # positions spread over the whole range of valid offsets
    assert float(top.max()) > 0.9 * float((side - h).max()) and float(top.min()) == 0


def test_no_fitting_box_falls_back_to_the_central_crop() -> None:
    # a square image, area 1 and w/h in [2, 3]: w = √2·side > side always, so the fallback is
    # the whole width and h = round(w / 2), centred
    boxes = random_resized_crop_params(20, 32, 32, (1.0, 1.0), ratio=(2.0, 3.0))
    assert boxes.tolist() == [[8, 0, 16, 32]] * 20
    boxes = random_resized_crop_params(5, 32, 32, (1.0, 1.0), ratio=(1.0, 1.0))
    assert boxes.tolist() == [[0, 0, 32, 32]] * 5


def test_box_distribution_matches_torchvision_get_params() -> None:
    """Same rule as ``RandomResizedCrop.get_params``: the mean and spread of the area fraction,
    the log aspect ratio and the offset agree with torchvision's draws (20,000 each)."""
    n, scale = 20_000, (0.08, 1.0)
    torch.manual_seed(0)
    ours = random_resized_crop_params(n, 32, 32, scale).double()
    image = torch.empty(3, 32, 32)
    ref = torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), list(DEFAULT_RATIO)) for _ in range(n)]
    ).double()

    def stats(b: torch.Tensor) -> list[float]:
        area, log_ratio = b[:, 2] * b[:, 3] / 1024, torch.log(b[:, 3] / b[:, 2])
        return [area.mean(), area.std(), log_ratio.std(), b[:, 0].mean(), b[:, 1].mean()]

    for a, b in zip(stats(ours), stats(ref), strict=True):
        assert math.isclose(float(a), float(b), rel_tol=0.05, abs_tol=0.01), (a, b)


def test_theta_of_the_full_box_is_the_identity_and_a_flip_negates_x() -> None:
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 32, 32], [4, 8, 16, 8]])
    theta = crop_flip_theta(boxes, torch.tensor([False, True, False]), 32, 32)
    assert theta[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert theta[1].tolist() == [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    # box x ∈ [8, 16) → normalised [-0.5, 0], centre -0.25, half-width 0.25
    assert theta[2].tolist() == [[0.25, 0.0, -0.25], [0.0, 0.5, -0.25]]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        BatchAugment(32, (0.9, 0.5), MEAN, STD)
    with pytest.raises(ValueError, match="flip_p"):
        BatchAugment(32, (0.5, 1.0), MEAN, STD, flip_p=2.0)
    with pytest.raises(ValueError, match="channels"):
        BatchAugment(32, (0.5, 1.0), MEAN, STD)(torch.zeros(2, 1, 32, 32))
