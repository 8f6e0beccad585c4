"""The in-graph input transforms: mean/std folding and GCN + ZCA whitening."""

from __future__ import annotations

import numpy as np
import torch

from eluserve.export.preprocess import GcnZcaInput, MeanStdInput, fit_gcn_zca, fit_mean_std, gcn


def test_mean_std_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    mean, std = fit_mean_std(images)
    out = MeanStdInput(mean, std)(torch.from_numpy(images)).numpy()
    expected = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zca_whitens_the_training_data() -> None:
    """Whitened training data has (near) identity covariance up to the ZCA bias, and ZCA is symmetric."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4000, 4)) @ rng.normal(size=(4, 48))  # strongly correlated pixels
    images = np.clip(128 + 20 * base, 0, 255).astype(np.uint8).reshape(-1, 4, 4, 3)
    mean, whitening = fit_gcn_zca(images)
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-8)
    white = (
        GcnZcaInput(mean, whitening, 4)(torch.from_numpy(images)).reshape(len(images), -1).double().numpy()
    )
    np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-3)
    cov = np.cov(white, rowvar=False)
    eig = np.linalg.eigvalsh(cov)
    assert eig.max() < 1.0 + 1e-3  # every direction's variance shrinks to at most 1
    flat = gcn(torch.from_numpy(images).permute(0, 3, 1, 2).reshape(len(images), -1).float()).double().numpy()
    assert np.linalg.eigvalsh(np.cov(flat, rowvar=False)).max() > 10 * eig.max()


def test_gcn_normalises_each_image() -> None:
    x = torch.tensor([[0.0, 10.0, 20.0, 30.0], [5.0, 5.0, 5.0, 6.0]])
    out = gcn(x)
    np.testing.assert_allclose(out.mean(1).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(torch.sqrt((out**2).mean(1)).numpy(), 55.0, rtol=1e-4)
