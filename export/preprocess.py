"""Input transforms that live inside the model, so training and serving cannot drift.

The exported graph takes raw uint8 RGB pixels (NHWC); these modules turn them into the network's
float input. Their statistics are fitted on the training split only and stored as buffers, so the
checkpoint and the ONNX file carry them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GCN_SCALE = 55.0  # pylearn2's global contrast normalisation scale, as used by Goodfellow et al.
GCN_EPS = 1e-8
ZCA_BIAS = 0.1  # pylearn2's filter_bias: regularises the smallest eigenvalues


class MeanStdInput(nn.Module):
    """uint8 NHWC → float NCHW, (x/255 − mean)/std folded into one multiply-add per pixel."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float64))
        shift = -np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale + self.shift


class GcnZcaInput(nn.Module):
    """Global contrast normalisation per image, then ZCA whitening fitted on the training set."""

    def __init__(self, mean: np.ndarray, whitening: np.ndarray, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1))
        self.register_buffer("whitening", torch.tensor(whitening, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.permute(0, 3, 1, 2).reshape(n, -1).to(torch.float32)
        flat = gcn(flat)
        white = (flat - self.mean) @ self.whitening
        return white.reshape(n, 3, self.input_size, self.input_size)


def gcn(flat: torch.Tensor) -> torch.Tensor:
    """Per-image global contrast normalisation (subtract mean, scale to a fixed norm)."""
    centred = flat - flat.mean(dim=1, keepdim=True)
    norm = torch.sqrt(GCN_EPS + (centred * centred).mean(dim=1, keepdim=True))
    return GCN_SCALE * centred / norm


def fit_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units."""
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(axis=0), pixels.std(axis=0)


def fit_gcn_zca(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Fit ZCA on GCN-normalised images: returns (mean, whitening matrix W) with white = (x−mean)·W.

    The covariance is accumulated in float64 chunks so 50 000 × 3072 never sits in memory as float.
    """
    n = images.shape[0]
    dim = int(np.prod(images.shape[1:]))
    total = np.zeros(dim)
    outer = np.zeros((dim, dim))
    for start in range(0, n, chunk):
        batch = torch.from_numpy(images[start : start + chunk])
        flat = gcn(batch.permute(0, 3, 1, 2).reshape(batch.shape[0], -1).float()).double().numpy()
        total += flat.sum(axis=0)
        outer += flat.T @ flat
    mean = total / n
    cov = outer / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    whitening = (eigvec / np.sqrt(np.clip(eigval, 0.0, None) + ZCA_BIAS)) @ eigvec.T
    return mean, whitening


def build_input_transform(kind: str, train_images: np.ndarray, input_size: int) -> nn.Module:
    """Fit the named input transform on the training images."""
    if kind == "mean_std":
        return MeanStdInput(*fit_mean_std(train_images))
    if kind == "gcn_zca":
        mean, whitening = fit_gcn_zca(train_images)
        return GcnZcaInput(mean, whitening, input_size)
    raise ValueError(f"unknown normalization {kind!r}; choose mean_std or gcn_zca")


def empty_input_transform(kind: str, input_size: int) -> nn.Module:
    """A transform of the right shape to load a checkpoint's fitted buffers into."""
    if kind == "mean_std":
        return MeanStdInput(np.zeros(3), np.ones(3))
    dim = 3 * input_size * input_size
    return GcnZcaInput(np.zeros(dim), np.eye(dim), input_size)


class Classifier(nn.Module):
    """Raw uint8 pixels in, logits out: the input transform followed by a zoo network."""

    def __init__(self, input_transform: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.input_transform = input_transform
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_transform(images))
