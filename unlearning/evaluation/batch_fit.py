"""The largest inference batch a model fits on a device: what ``eval_batch_size=auto`` resolves to.

Evaluation passes (accuracies, the outputs the evaluation suite reads, the memorization proxy's
predictions) keep no gradients, so a larger batch only trades memory for fewer kernel launches.
On a GPU the best batch is the largest one that fits: :func:`largest_batch` tries a start size
(the set size capped at :data:`MAX_START`, rounded down to a power of two) and halves it after
every CUDA out-of-memory error, emptying the CUDA cache between tries. On the CPU it does not
probe and returns :data:`CPU_BATCH_SIZE`: host RAM is not what limits an inference batch there,
and beyond ~1k samples a CPU forward gains nothing from a larger batch (the kernels are already
saturated), while probing would allocate tens of GB for an 8192-sample batch of a ResNet.

The answer is memoised per (model class, parameter count, input shape, device) for the process,
so a sweep run in one process probes each backbone once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from unlearning.modes import eval_mode

log = logging.getLogger(__name__)

#: the value of ``eval_batch_size`` that asks for the largest batch that fits
AUTO = "auto"
#: what ``auto`` gives without probing (CPU): the config default, so results and keys match it
CPU_BATCH_SIZE = 1024
#: the largest batch tried first on a GPU
MAX_START = 8192

_FITTED: dict[tuple[str, int, tuple[int, ...], str], int] = {}


def forget_fits() -> None:
    """Drop every memoised answer of :func:`largest_batch` (the next call probes again)."""
    _FITTED.clear()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error: ``torch.cuda.OutOfMemoryError`` or the
    generic ``RuntimeError`` that some backends (cuDNN, older PyTorch) raise, whose message
    contains "out of memory"."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error)


def start_size(set_size: int | None, cap: int = MAX_START) -> int:
    """The first batch size tried: the largest power of two ≤ ``min(set_size, cap)`` (≥ 1)."""
    limit = max(1, min(set_size if set_size is not None else cap, cap))
    return 1 << (limit.bit_length() - 1)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_batch(
    model: nn.Module,
    sample_shape: Sequence[int],
    device: torch.device | str,
    *,
    set_size: int | None = None,
    probe: bool | None = None,
) -> int:
    """The largest batch (a power of two ≤ :func:`start_size`) whose eval-mode, no-gradient
    forward pass of ``model`` fits on ``device``.

    Args:
        model: the backbone, already on ``device``; its mode is restored afterwards.
        sample_shape: the shape of one input sample, e.g. ``(3, 32, 32)``.
        device: where the evaluation runs.
        set_size: the largest set the batches will cover (a larger batch is pointless).
        probe: try batches (``True``) or return :data:`CPU_BATCH_SIZE` (``False``); ``None``
            probes on CUDA only (see the module docstring for why not on the CPU).

    Raises:
        RuntimeError: a batch of one does not fit (or a non-memory error of the forward pass).
    """
    device = torch.device(device)
    if probe is None:
        probe = device.type == "cuda"
    if not probe:
        return CPU_BATCH_SIZE
    shape = tuple(int(s) for s in sample_shape)
    params = sum(p.numel() for p in model.parameters())
    key = (f"{type(model).__module__}.{type(model).__qualname__}", params, shape, str(device))
    if key in _FITTED:
        return _FITTED[key]
    size = start_size(set_size)
    while True:
        failed = False
        try:
            with torch.inference_mode(), eval_mode(model):
                model(torch.zeros((size, *shape), device=device))
        except Exception as exc:
            if not is_out_of_memory(exc) or size == 1:
                raise
            failed = True  # halve outside the handler, so the traceback's tensors are freed
        _release(device)
        if not failed:
            break
        log.info("[eval] a batch of %d does not fit on %s; trying %d", size, device, size // 2)
        size //= 2
    _FITTED[key] = size
    log.info("[eval] eval_batch_size=auto: %d on %s", size, device)
    return size
