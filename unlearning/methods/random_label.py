"""Random Label (RL, Hayase et al. 2020; 000 §2.2) and SalUn (Fan et al. 2023) — SPEC §2.

**RL.** Fine-tune f_A on R ∪ F with every forget label replaced by a class drawn uniformly among
the K − 1 *wrong* classes, redrawn every epoch (SPEC §2). As in the SalUn / Unlearn-Sparse code
bases, an epoch is one shuffled pass over the union S = R ∪ F (``train_sets = ("train",)``,
⌈|S|/B⌉ steps), each F sample appearing once per epoch with its relabelled target, and a step
minimises the mean cross-entropy over its batch::

    L_RL = 1/|B| · [ Σ_{i∈B∩R} CE(f(x_i), y_i) + Σ_{i∈B∩F} CE(f(x_i), ỹ_i) ],
    ỹ_i = (y_i + o_i) mod K,   o_i ~ U{1, …, K − 1}

*How the labels are drawn.* Batches carry each sample's index i in S (``sample_id_sets``); a
sample is relabelled when i ∈ F, and its offset in epoch e is a pure function of
``(label seed, e, i)`` (a SplitMix64 hash, :func:`per_sample_offsets`). So every forget sample
has exactly one random wrong label per epoch; both passes of SAM/ASAM (which call
``training_step`` twice on one batch) see the same labels, so the sharpness-aware step perturbs
and descends one objective; and runs are reproducible and resumable. The label seed is drawn
once in the constructor from the global RNG, which the pipeline seeds with ``cfg.seed``.

**SalUn.** RL restricted to the saliency mask m (``True`` = salient): the top ``fraction`` of
f_A's parameter entries by ``|Σ_b ∇CE(F_b)|`` after one pass over F, ranked globally
(:mod:`unlearning.methods.saliency`, computed and cached by the pipeline's mask stage and handed
over through :class:`~unlearning.methods.masked.MaskedMethod`'s intake). Salient entries follow
the RL objective; all other entries stay *exactly* at f_A: gradients are masked after every
backward pass (so a SAM/ASAM perturbation, computed from those gradients, also lives on the mask)
and, after every optimizer step, the non-salient entries are copied back from f_A, so weight
decay and momentum cannot move them either (the SalUn code only masks the gradient, which lets
weight decay and momentum drift the frozen part; SPEC §2 asks for no drift).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearning.methods.base import Batch, UnlearningMethod
from unlearning.methods.masked import MaskedMethod


def infer_num_classes(net: nn.Module) -> int | None:
    """``out_features`` of the last ``nn.Linear`` of ``net`` (the classifier head), or None."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective, well-mixing hash of uint64s."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def per_sample_offsets(ids: Tensor, seed: int, epoch: int, num_classes: int) -> Tensor:
    """``o_i ∈ {1, …, K − 1}`` for each sample id: uniform (up to a 2⁻⁶⁴-order bias) and
    independent across ids and epochs, and the same on every call with the same arguments."""
    key = _splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(epoch)
    z = _splitmix64(_splitmix64(key) ^ ids.detach().cpu().numpy().astype(np.uint64))
    offsets = 1 + (z % np.uint64(num_classes - 1)).astype(np.int64)
    return torch.from_numpy(offsets).to(ids.device)


class RandomLabel(UnlearningMethod):
    """RL: cross-entropy on R ∪ F with F relabelled uniformly among wrong classes (SPEC §2).

    Args:
        num_classes: K (``${dataset.num_classes}``); ``None`` infers it from the backbone's last
            ``nn.Linear``. Must be ≥ 2 (a wrong class must exist).

    Paper defaults (000 App. C.2): lr 0.06 on CIFAR-100, 0.08 on CIFAR-10, 0.02 on ImageNet,
    10 epochs, constant schedule. No retain weight: ``alpha`` does not apply.
    """

    #: one pass over S = R ∪ F per epoch, with sample ids: F is relabelled per sample and epoch
    train_sets: ClassVar[tuple[str, ...]] = ("train",)
    sample_id_sets: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, *args: Any, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if num_classes is None:
            num_classes = infer_num_classes(self.net)
            if num_classes is None:
                raise ValueError(
                    "method.num_classes=None: cannot infer the number of classes from the "
                    "backbone (no nn.Linear head); set method.num_classes to an integer >= 2"
                )
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(
                f"method.num_classes={num_classes!r}: must be an integer >= 2 (random labels "
                "are drawn among the K - 1 wrong classes)"
            )
        self.num_classes = int(num_classes)
        # drawn from the global RNG, which the pipeline seeds with cfg.seed before instantiating
        self.label_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        #: indices of F in S; taken from the datamodule at fit start unless set
        self.forget_ids: Tensor | None = None

    def on_fit_start(self) -> None:
        if self.forget_ids is None:
            data = getattr(self.trainer, "datamodule", None)
            if data is None or not hasattr(data, "indices"):
                raise RuntimeError(
                    "RL needs the forget indices: set forget_ids or fit on an UnlearningDataModule"
                )
            self.forget_ids = torch.as_tensor(data.indices["forget"], dtype=torch.int64)

    def relabel(self, batch: Batch, epoch: int) -> Batch:
        """``batch`` (``{"train": (x, y, ids)}``) with the label of every forget sample replaced
        by its random wrong label of ``epoch``, ``ỹ_i = (y_i + o_i) mod K``; the result also
        holds ``is_forget``, the mask of forget samples."""
        if self.forget_ids is None:
            raise RuntimeError("RL needs the forget indices (forget_ids) before relabelling")
        x, y, ids = batch["train"]
        is_forget = torch.isin(ids, self.forget_ids.to(ids.device))
        offsets = per_sample_offsets(ids, self.label_seed, epoch, self.num_classes)
        labels = torch.where(is_forget, (y + offsets) % self.num_classes, y)
        return {"train": (x, labels), "is_forget": is_forget}

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean CE over the (already relabelled) batch of R ∪ F; the parts on R and F are logged
        (when the batch holds samples of each)."""
        x, y = batch["train"]
        per_sample = F.cross_entropy(self.net(x), y, reduction="none")
        is_forget = batch["is_forget"]
        parts = {
            f"loss_{name}": per_sample[mask].mean().detach()
            for name, mask in (("retain", ~is_forget), ("forget", is_forget))
            if mask.any()
        }
        return per_sample.mean(), parts

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return super().training_step(self.relabel(batch, self.current_epoch), batch_idx)


class SalUn(MaskedMethod, RandomLabel):
    """SalUn: RL on the salient entries only; the others stay bit-exactly at f_A (SPEC §2).

    Args:
        fraction: the share p of parameter entries that are salient (updated), in (0, 1).
            Paper (000 App. C.2): 0.5 on CIFAR-100 / CIFAR-10, 0.3 on ImageNet / Tiny-ImageNet.
        num_classes: as :class:`RandomLabel`.

    The mask is handed over by the pipeline's mask stage (``needs_forget_mask``, from
    :class:`~unlearning.methods.masked.MaskedMethod`) through :meth:`set_forget_mask` before
    training; the weights at that moment (f_A) are the anchor the non-salient entries are
    restored to after every optimizer step.
    """

    def __init__(self, *args: Any, fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, fraction=fraction, **kwargs)
        self.anchor: dict[str, Tensor] | None = None

    def set_forget_mask(self, masks: dict[str, Tensor]) -> None:
        """The mask (``True`` = salient, updated; :meth:`MaskedMethod.set_forget_mask`); the
        current weights (f_A) become the values of the non-salient entries."""
        super().set_forget_mask(masks)
        self.anchor = {name: p.detach().clone() for name, p in self._trainable().items()}

    def _masked(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(parameter, mask, f_A value) triples, moving masks/anchors to the parameter's device."""
        masked = self.masked_parameters()  # raises if the mask was never handed over
        assert self.anchor is not None  # set together with the mask
        out = []
        for name, p, mask in masked:
            anchor = self.anchor[name]
            if anchor.device != p.device or anchor.dtype != p.dtype:
                anchor = self.anchor[name] = anchor.to(p.device, p.dtype)
            out.append((p, mask, anchor))
        return out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._masked()  # fail early without a mask; move mask and anchor to the device once

    def on_after_backward(self) -> None:
        """Zero the gradient of non-salient entries (runs after each backward pass, i.e. after
        both passes of SAM/ASAM, so the perturbation ê is confined to the mask too)."""
        with torch.no_grad():
            for p, mask, _ in self._masked():
                if p.grad is not None:
                    p.grad.mul_(mask)

    def restore_frozen(self) -> None:
        """Copy f_A back into the non-salient entries (undoes weight decay and momentum)."""
        with torch.no_grad():
            for p, mask, anchor in self._masked():
                p.copy_(torch.where(mask, p, anchor))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.restore_frozen()
