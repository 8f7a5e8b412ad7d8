"""Top Hessian eigenvalue by power iteration on HVPs (torch.func) vs a dense eigendecomposition."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from unlearning.evaluation.metrics.hessian import top_hessian_eigenvalue


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, x, y


def _dense_eigenvalues(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            k = int(np.prod(shape))
            params[name] = theta[i : i + k].view(shape)
            i += k
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    return torch.linalg.eigvalsh(hessian).numpy()


def test_power_iteration_matches_the_dense_eigendecomposition():
    model, x, y = _tiny()
    eig = _dense_eigenvalues(model, x, y)
    top = eig[np.argmax(np.abs(eig))]
    est = top_hessian_eigenvalue(model, x, y, iterations=300, tol=1e-10)
    assert est.value == pytest.approx(top, rel=1e-4)


def test_chunked_products_give_the_hessian_of_the_mean_loss():
    model, x, y = _tiny()
    whole = top_hessian_eigenvalue(model, x, y, iterations=50, tol=0.0)
    chunked = top_hessian_eigenvalue(model, x, y, iterations=50, tol=0.0, chunk=7)
    assert chunked.value == pytest.approx(whole.value, rel=1e-9)
    assert whole.iterations == 50 and not whole.converged  # tol=0 never stops early


def test_mode_is_restored_and_empty_data_is_rejected():
    model, x, y = _tiny()
    model.train()
    top_hessian_eigenvalue(model, x, y, iterations=3)
    assert model.training
    with pytest.raises(ValueError, match="at least one sample"):
        top_hessian_eigenvalue(model, x[:0], y[:0])
