"""Save the random-number generators' states in Lightning checkpoints and restore them on resume.

Lightning restores model, optimizer, scheduler and loop counters from a checkpoint, but not the
global RNGs, so a resumed run would reshuffle its data (and redraw any random labels) unlike the
uninterrupted run. With this callback a run killed after epoch k and resumed from its last
checkpoint continues with the same batches, and on CPU ends with bit-identical weights.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCheckpoint(Callback):
    """Stores ``torch`` (CPU and CUDA), ``numpy`` and ``random`` states with every checkpoint.


    States are stored as tensors and plain numbers, so checkpoints stay loadable with
    ``torch.load(weights_only=True)`` (nothing in a checkpoint can execute code).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "gauss": gauss,
            },
            "python": {
                "version": version,
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
        )
        py = state_dict["python"]
        random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
