"""Influence unlearning (IU) with a WoodFisher inverse-Hessian approximation (SPEC §2; 004
App. E.1; Izzo et al. 2021, Koh & Liang 2017; the ``wfisher`` code of the Unlearn-Sparse /
SalUn code bases, Jia et al. 2023).

One Newton-like step from f_A, no training loop::

    v = (n_F / n) · (ḡ_F − ḡ_R)           ḡ_X: mean gradient of CE over X, n = n_F + n_R
    H = λ·I + (1/N) Σ_{i≤N} g_i g_iᵀ       empirical Fisher on N retain samples
    w ← w + scale · H⁻¹ v

``v`` is the reference code's ``forget_grad − retain_grad`` (sums of per-sample gradients
rescaled by ``1/n`` and ``n_F/(n·n_R)``); at an exact optimum of the training loss it is the
influence-function direction ``(1/n) Σ_F ∇ℓ`` up to the factor ``1 + n_F/n_R``. ``scale`` is the
reference's ``--alpha`` (renamed so it is not confused with the top-level retain weight).

H⁻¹ is built by the WoodFisher recursion (Singh & Alistarh 2020): rank-one Sherman–Morrison
updates ``H_n⁻¹ = H_{n−1}⁻¹ − u_n u_nᵀ / (N + g_nᵀ u_n)`` with ``u_n = H_{n−1}⁻¹ g_n`` and
``H_0⁻¹ = I/λ``. It is never formed: the N vectors u_n are kept (``O(N·d)`` memory), each u_n is
itself a product with the previous inverse, and ``H_N⁻¹ v = v/λ − Σ_n u_n (u_nᵀ v)/(N + g_nᵀ u_n)``.
Blocks of samples are processed with matrix products (exact; the order of the rank-one updates
is kept). The reference code keeps a single running vector instead of all u_n (a cheaper
approximation of the same recursion); here the recursion is exact, so it equals a dense
``inv(λI + mean g gᵀ)`` (tested). Per-sample gradients come from ``torch.func`` (``vmap`` over
``grad`` of a ``functional_call``) with the backbone in eval mode (BatchNorm uses its running
statistics, as the reference's ``model.eval()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from unlearning.methods.base import Batch, UnlearningMethod
from unlearning.modes import eval_mode

log = logging.getLogger(__name__)

Pairs = Iterable[tuple[Tensor, Tensor]]


def _trainable(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def per_sample_gradients(net: nn.Module, x: Tensor, y: Tensor, chunk: int = 256) -> Tensor:
    """``(len(x), d)`` matrix of flattened ``∇_w CE(net(x_i), y_i)`` over the trainable
    parameters (in ``named_parameters`` order), by ``vmap(grad(functional_call))``. ``net`` should
    be in eval mode (BatchNorm on running statistics)."""
    named = _trainable(net)
    params = {n: p.detach() for n, p in named}
    buffers = dict(net.named_buffers())

    def sample_loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, len(x), chunk):
        grads = per_sample(params, x[start : start + chunk], y[start : start + chunk])
        rows.append(torch.cat([grads[n].flatten(1) for n, _ in named], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, sum(p.numel() for _, p in named))


def woodfisher_inverse_product(
    grads: Tensor, v: Tensor, damping: float = 1.0, block: int = 64
) -> Tensor:
    """``(λI + (1/N) Σ_i g_i g_iᵀ)⁻¹ v`` by the WoodFisher recursion of rank-one
    Sherman–Morrison updates over the rows ``g_i`` of ``grads`` (``N×d``), without a ``d×d``
    matrix: memory ``O(N·d)``, time ``O(N²·d)`` (matrix products over blocks of rows).
    ``v`` is ``(d,)`` or ``(d, k)``."""
    n, _ = grads.shape
    if n == 0:
        return v / damping
    u = torch.empty_like(grads)  # u_i = H_{i-1}⁻¹ g_i
    denom = torch.empty(n, dtype=grads.dtype, device=grads.device)  # N + g_iᵀ u_i
    for start in range(0, n, block):
        g = grads[start : start + block]
        # H_{start−1}⁻¹ g for the whole block: I/λ minus the earlier rank-one terms
        z = g / damping
        if start:
            coeff = (g @ u[:start].T) / denom[:start]  # (b, start)
            z = z - coeff @ u[:start]
        # rank-one updates inside the block, in order, on b×b coefficients: u_i = Σ_l M_il z_l
        # (M unit lower-triangular), so u_kᵀ g_i = (M A)_ki with A = Z Gᵀ
        a = z @ g.T
        m = torch.eye(len(g), dtype=g.dtype, device=g.device)
        d_blk = torch.empty(len(g), dtype=g.dtype, device=g.device)
        for i in range(len(g)):
            if i:
                dots = m[:i] @ a[:, i]  # u_kᵀ g_i for k < i
                m[i] = m[i] - (dots / d_blk[:i]) @ m[:i]
            d_blk[i] = n + m[i] @ a[:, i]
        u[start : start + len(g)] = m @ z
        denom[start : start + len(g)] = d_blk
    vec = v.unsqueeze(1) if v.dim() == 1 else v
    out = vec / damping - u.T @ ((u @ vec) / denom.unsqueeze(1))
    return out.squeeze(1) if v.dim() == 1 else out


class InfluenceUnlearning(UnlearningMethod):
    """IU: ``w ← w + scale · H⁻¹ (n_F/n)(ḡ_F − ḡ_R)`` with the WoodFisher H⁻¹ (module docstring).

    A one-shot update that runs through the ordinary pipeline: it is applied in
    :meth:`on_fit_start` from the trainer's datamodule (R and F with test transforms, i.e. no
    augmentation); the training loop then iterates once over F (``epochs: 1``) with a
    ``training_step`` that does nothing (manual optimization, no optimizer step), so nothing else
    changes the weights.

    Args:
        scale: multiplier of the Newton step (the reference code's ``--alpha``); > 0.
        damping: λ > 0 in ``H = λI + mean g gᵀ`` (the reference's ``H_0 = I`` is λ = 1).
        num_samples: N, the number of retain samples (the first N of R in index order, as the
            reference's unshuffled loader) whose per-sample gradients form the Fisher;
            ``None`` = all of R.
        max_params: size guard: refuse backbones with more trainable parameters (the stored
            per-sample gradients take ``N·d`` floats and the recursion ``O(N²·d)`` time).
        chunk: samples per ``vmap`` call (memory of one per-sample gradient chunk).
    """

    train_sets: ClassVar[tuple[str, ...]] = ("forget",)
    #: the pipeline hands the ``optim`` preset's sharpness settings to :meth:`use_sharpness`
    #: (IU takes no gradient-descent step, so they are ignored with a warning).
    owns_sharpness: ClassVar[bool] = True

    def __init__(
        self,
        *args: Any,
        scale: float = 0.2,
        damping: float = 1.0,
        num_samples: int | None = 1000,
        max_params: int = 50_000,
        chunk: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        if not float(scale) > 0:
            raise ValueError(f"method.scale={scale!r}: the IU step multiplier must be > 0")
        if not float(damping) > 0:
            raise ValueError(f"method.damping={damping!r}: λ of H = λI + Fisher must be > 0")
        if num_samples is not None and not int(num_samples) >= 1:
            raise ValueError(f"method.num_samples={num_samples!r}: must be ≥ 1 (or null = all R)")
        if not int(chunk) >= 1:
            raise ValueError(f"method.chunk={chunk!r}: must be ≥ 1")
        if self.epochs != 1:
            raise ValueError(
                f"method.epochs={self.epochs!r}: IU is a one-shot update, use method.epochs=1"
            )
        d = sum(p.numel() for _, p in _trainable(self.net))
        if d > int(max_params):
            n = "all of R" if num_samples is None else f"{num_samples}"
            raise ValueError(
                f"method.max_params={max_params!r}: the backbone has {d} trainable parameters; "
                f"IU stores {n} per-sample gradients of that size (N·d floats) and costs "
                "O(N²·d). Raise method.max_params knowingly, and/or lower method.num_samples."
            )
        self.scale, self.damping = float(scale), float(damping)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.max_params, self.chunk = int(max_params), int(chunk)
        self.applied = False
        self.stats: dict[str, float] = {}

    def use_sharpness(self, settings: Any | None) -> None:
        """IU is one Newton step, not a descent step: a SAM/ASAM ``optim`` has nothing to wrap.
        The settings are ignored with a logged warning (so ``-m optim=sgd,sam`` sweeps run)."""
        if settings is not None:
            log.warning(
                "optim: influence unlearning (iu) is a one-shot Newton update and takes no "
                "optimizer step; the sharpness-aware settings %r are ignored",
                settings,
            )

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """CE on the forget batch (logged only; IU's update is :meth:`influence_update`)."""
        forget = self.cross_entropy(batch, "forget")
        return forget, {"loss_forget": forget}

    def _gradient_sum(self, batches: Pairs) -> tuple[Tensor, int]:
        params = [p for _, p in _trainable(self.net)]
        total = torch.zeros(
            sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype
        )
        count = 0
        for x, y in batches:
            loss = F.cross_entropy(self.net(x), y, reduction="sum")
            grads = torch.autograd.grad(loss, params)
            total += torch.cat([g.flatten() for g in grads])
            count += len(y)
        return total, count

    @torch.no_grad()
    def _add_to_weights(self, delta: Tensor) -> None:
        offset = 0
        for _, p in _trainable(self.net):
            p.add_(delta[offset : offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()

    def influence_update(self, retain: Pairs, forget: Pairs) -> dict[str, float]:
        """Apply ``w ← w + scale·H⁻¹ v`` from batches of R and F (lists of ``(x, y)`` on the
        backbone's device); returns a few diagnostics."""
        retain, forget = list(retain), list(forget)
        with eval_mode(self.net):
            with torch.enable_grad():
                sum_f, n_f = self._gradient_sum(forget)
                sum_r, n_r = self._gradient_sum(retain)
                if n_f == 0 or n_r == 0:
                    raise ValueError("IU needs non-empty retain and forget sets")
                n = n_f + n_r
                v = sum_f / n - sum_r * (n_f / (n * n_r))  # (n_F/n)(ḡ_F − ḡ_R)
                x_r = torch.cat([x for x, _ in retain])[: self.num_samples]
                y_r = torch.cat([y for _, y in retain])[: self.num_samples]
                grads = per_sample_gradients(self.net, x_r, y_r, self.chunk)
            delta = self.scale * woodfisher_inverse_product(grads, v, self.damping)
            self._add_to_weights(delta)
        self.applied = True
        self.stats = {
            "fisher_samples": float(len(grads)),
            "v_norm": float(v.norm()),
            "step_norm": float(delta.norm()),
        }
        return self.stats

    def on_fit_start(self) -> None:
        """The one-shot update, from the datamodule's R and F (test transforms)."""
        if self.applied:
            return
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "eval_dataloader"):
            raise RuntimeError("IU reads R and F from an UnlearningDataModule passed to fit()")

        def batches(name: str) -> list[tuple[Tensor, Tensor]]:
            loader = data.eval_dataloader(name, batch_size=self.chunk)
            return [(x.to(self.device), y.to(self.device)) for x, y in loader]

        stats = self.influence_update(batches("retain"), batches("forget"))
        log.info("iu: applied the influence step %s", stats)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """Nothing to optimise: the update was applied in :meth:`on_fit_start`."""
        if batch_idx == 0:
            for key, value in self.stats.items():
                self.log(f"train/{key}", value, batch_size=len(batch["forget"][1]))
        return None
