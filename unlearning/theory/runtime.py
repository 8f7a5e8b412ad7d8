"""Run a lab's many tiny tensor operations on one intra-op thread.

The labs multiply matrices of a few dozen rows thousands of times; torch's intra-op thread pool
costs more than it saves there (on a loaded 2-core machine, 8× slower measured on the
stability-frontier grid). The previous thread count is restored on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded() -> Iterator[None]:
    """``torch.set_num_threads(1)`` inside the block, the previous value after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
