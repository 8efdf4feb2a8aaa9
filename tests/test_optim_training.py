"""NGD with its defaults on the ill-conditioned problems that crashed or diverged: digits MLPs, float32 and
float64, full batch and mini-batch (a small slice of scikit-learn's digits; the full size is a benchmark)."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.optim import NGD, CrossEntropy, NGDStepError

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _digits(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=dtype), torch.tensor(y[:n])


def _mlp(dtype: torch.dtype, width: int = 12) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(), torch.nn.Linear(width, 10)).to(
        dtype
    )


def _full_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _train(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, **settings
) -> list[float]:
    """Losses on all of (x, y) before and after each step, batches drawn with a fixed seed."""
    opt = NGD(model.parameters(), **settings)
    f = opt.functional(model)
    gen = torch.Generator().manual_seed(0)
    losses = [_full_loss(model, x, y)]
    for _ in range(steps):
        idx = torch.randperm(x.shape[0], generator=gen)[:batch]
        opt.step(lambda p, xb=x[idx]: f(p, xb), CrossEntropy(y[idx]))
        losses.append(_full_loss(model, x, y))
    return losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_full_batch_decrease_the_loss_monotonically(dtype: torch.dtype) -> None:
    """r = 864 weighted outputs against d = 910 parameters: K nearly square and ill-conditioned."""
    x, y = _digits(96, dtype)
    model = _mlp(dtype)
    losses = _train(model, x, y, batch=96, steps=8)
    assert _finite(model)
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_mini_batch_train_where_plain_steps_diverge(dtype: torch.dtype) -> None:
    """Batches of 32 from 256 digits: the plain Moore–Penrose step interpolates each batch and the loss on
    the data blows up (or the solve fails); the default safeguard trains."""
    x, y = _digits(256, dtype)
    plain = _mlp(dtype)
    try:
        plain_losses = _train(plain, x, y, batch=32, steps=6, safeguard=False)
        assert max(plain_losses[1:]) > plain_losses[0]
    except NGDStepError:
        pass
    model = _mlp(dtype)
    losses = _train(model, x, y, batch=32, steps=12)
    assert _finite(model)
    assert losses[-1] < 0.7 * losses[0]
    assert max(losses) < losses[0] * 1.5
    assert all(math.isfinite(v) for v in losses)
