"""The trainer: wires the zoo, the data and an optimiser together, and writes everything export needs.

Per-epoch metrics go to `metrics.jsonl`, the resolved configuration to `config.json`, the checkpoint
(`checkpoint.pt`) holds the whole `Classifier` (input transform included), and the learning curves
are plotted to `curves.png` at the end.

Resuming is exact: the checkpoint carries the optimiser's momentum, the epoch, and every random
stream the run draws from (the shuffling/augmentation generator, torch's CPU and CUDA streams that
dropout uses, numpy's and Python's), so a run stopped and resumed trains the same weights as one
that never stopped (bit for bit on a CPU; on a GPU up to cuDNN's nondeterministic kernels).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from eluserve.export.checkpoint import keep_metrics, restore_rng_state, rng_state
from eluserve.export.config import TrainConfig
from eluserve.export.data import ImageDataset, load_dataset, split_train_val
from eluserve.export.preprocess import Classifier, build_input_transform, empty_input_transform
from eluserve.export.recipe import (
    LOOKAHEAD_EVERY,
    Lookahead,
    configure_batch_norm,
    dirac_init_,
    flip_schedule,
    param_groups,
    resolve_amp,
)
from eluserve.export.zoo import DEFAULT_CFGS, create_model

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """CUDA when present, else CPU; an explicit name wins."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's augmentation on a uint8 NHWC batch: reflect-pad 4, random crop back, h-flip (a
    coin per image, or the given `flip` mask).

    The random draws come from the CPU `generator` (the same on every device); the gathers run where
    the batch lives, on index views that are never materialised.
    """
    n, h, w, _ = images.shape
    device = images.device
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
    rows = (dy[:, None] + torch.arange(h, device=device)[None, :])[:, None, :, None]
    cropped = padded.gather(2, rows.expand(n, 3, h, w + 2 * pad))
    cols = (dx[:, None] + torch.arange(w, device=device)[None, :])[:, None, None, :]
    cropped = cropped.gather(3, cols.expand(n, 3, h, w))
    if flip is None:
        flip = torch.rand(n, generator=generator) < 0.5
    flip = flip.to(device)
    cropped = torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
    return cropped.permute(0, 2, 3, 1).to(torch.uint8)


PROGRESS_EVERY = 25  # steps between progress-bar loss updates (each one synchronises the device)
CHECKPOINT_EVERY_S = 60.0  # a 39 M-parameter checkpoint every epoch would cost a GPU run ~5 % of its time
BUDGET_MARGIN = 1.08  # epochs vary a little (and checkpoints cost a little): keep the budget safely


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images_all: torch.Tensor,
    labels_all: torch.Tensor,
    index: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    lr: float,
    flip: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the batch `index` (`flip`: its images' flips, None for a coin each); returns
    the loss and the hit count as device tensors.

    They stay on the device so the loop never waits for the GPU to finish a step before queueing the
    next one.
    """
    images = images_all[index]
    if config.augment:
        images = augment_batch(images, generator, pad=config.crop_pad, flip=flip)
    labels = labels_all[index]
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with _autocast(images.device, bool(config.amp)):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == labels).sum()


def time_epoch(
    model: nn.Module,
    images_all: torch.Tensor,
    labels_all: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    val_images: int,
) -> float:
    """Seconds one epoch (training + validation) will take (`seconds_per_image` on the first steps)."""
    per_image = seconds_per_image(model, images_all, labels_all, config, device)
    # validation is a forward pass: about a third of a training step per image
    return per_image * (len(labels_all) + val_images / 3)


def seconds_per_image(
    model: nn.Module,
    images_all: torch.Tensor,
    labels_all: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    warmup: int = 3,
    steps: int = 10,
    compile_model: bool = False,
) -> float:
    """Seconds of one training step per image, timed on a copy of the model with an optimiser of its
    own (`compile_model`: the copy through `torch.compile`, its compile inside the warm-up).

    The run itself stays untouched (weights, optimiser state, batch-norm statistics, random streams),
    so a run with the settled `--epochs` reproduces a budgeted one.
    """
    probe = copy.deepcopy(model)
    probe_optimizer = torch.optim.SGD(
        [p for p in probe.parameters() if p.requires_grad], lr=0.0, momentum=config.momentum
    )
    stepped = torch.compile(probe) if compile_model else probe
    generator = torch.Generator().manual_seed(config.seed)
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        probe.train()
        for step in range(warmup + steps):
            if step == warmup:
                _synchronize(device)
                started = time.perf_counter()
            index = torch.randint(len(labels_all), (config.batch_size,), generator=generator).to(device)
            train_step(stepped, probe_optimizer, images_all, labels_all, index, config, generator, 0.0)
        _synchronize(device)
    per_image = (time.perf_counter() - started) / (steps * config.batch_size)
    del probe, stepped, probe_optimizer
    return per_image


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """One-cycle (linear from `lr_start` up to the peak, linear down to `lr_end`, fractions of `lr`;
    0 and 0 by default) or the paper's step schedule."""
    if config.schedule == "onecycle":
        warmup = max(1, int(config.warmup_fraction * total_steps))
        if step < warmup:
            return config.lr * (config.lr_start + (1.0 - config.lr_start) * step / warmup)
        left = max(0.0, (total_steps - step) / (total_steps - warmup))
        return config.lr * (config.lr_end + (1.0 - config.lr_end) * left)
    if config.schedule == "step":
        steps_per_epoch = total_steps / config.epochs
        drops = sum(step >= m * steps_per_epoch for m in config.milestones)
        return config.lr * 0.1**drops
    raise ValueError(f"unknown schedule {config.schedule!r}; choose onecycle or step")


DATA_INIT_IMAGES = 5000  # training images a net's data-dependent initialisation sees (airbench's)


def build_classifier(config: TrainConfig, train_images: np.ndarray | None) -> Classifier:
    """The network plus its input transform: fitted on `train_images`, or empty for loading.

    A net with `init_from_data` (the airbench-style whitening stem) gets normalised training images,
    spread evenly over the split: the split is in class order, so a prefix would be airplanes only.
    """
    normalization = config.normalization or DEFAULT_CFGS[config.model]["normalization"]
    net = create_model(
        config.model,
        num_classes=config.num_classes,
        input_size=config.input_size,
        activation=config.activation,
    )
    if train_images is None:
        transform = empty_input_transform(normalization, config.input_size)
    else:
        transform = build_input_transform(normalization, train_images, config.input_size)
        if hasattr(net, "init_from_data"):
            pick = np.linspace(0, len(train_images) - 1, num=min(DATA_INIT_IMAGES, len(train_images)))
            with torch.no_grad():
                net.init_from_data(transform(torch.from_numpy(train_images[pick.astype(np.int64)])))
    return Classifier(transform, net)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ImageDataset, device: torch.device, batch_size: int = 1000, amp: bool = False
) -> dict[str, Any]:
    """Single-crop accuracy, mean loss and the confusion matrix on `data`."""
    model.eval()
    num_classes = len(data.classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    total_loss = 0.0
    for start in range(0, len(data), batch_size):
        images = torch.from_numpy(data.images[start : start + batch_size]).to(device)
        labels = torch.from_numpy(data.labels[start : start + batch_size]).to(device)
        with _autocast(device, amp):
            logits = model(images).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(1).cpu().numpy()
        np.add.at(confusion, (data.labels[start : start + batch_size], predicted), 1)
    return {
        "accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "loss": total_loss / max(1, len(data)),
        "confusion": confusion.tolist(),
    }


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast (`recipe.resolve_amp` decides where: native bf16 only)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train(config: TrainConfig, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Train per `config`; resumes from `out/checkpoint.pt` when it exists.

    Returns the final metrics with `finished` true, or, when `segment_min` stopped the run early,
    `finished` false with the epoch it reached (the checkpoint then resumes it). `clock` times the
    budget and the segments (tests pass a fake one, so no decision depends on the machine's speed).
    """
    started_at = clock()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once

    dataset = load_dataset(config.data, config.input_size, config.num_classes)
    train_set, val_set = split_train_val(dataset, config.val_per_class)
    if config.train_limit:
        keep = np.random.default_rng(config.seed).permutation(len(train_set))[: config.train_limit]
        train_set = train_set.subset(np.sort(keep))
    log.info("train %d images, validation %d images, device %s", len(train_set), len(val_set), device)

    checkpoint_path = out / "checkpoint.pt"
    resume = torch.load(checkpoint_path, map_location="cpu") if checkpoint_path.exists() else None
    model = build_classifier(config, None if resume else train_set.images)
    if config.dirac_init and not resume:
        dirac_init_(model.net, skip=getattr(model.net, "whiten", None))
    configure_batch_norm(model.net, config.bn_momentum, config.freeze_bn_weights)
    if resume:
        model.load_state_dict(resume["model"])
    model.to(device)
    if config.channels_last is None:
        config = dataclasses.replace(config, channels_last=DEFAULT_CFGS[config.model]["channels_last"])
    if config.channels_last:
        model.net.to(memory_format=torch.channels_last)
    whiten_bias = _whiten_bias(model, config)
    optimizer = torch.optim.SGD(
        param_groups(
            model, config.lr, config.weight_decay, config.bias_lr_scale, config.decoupled_weight_decay
        ),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    lookahead = Lookahead(model) if config.lookahead else None
    start_epoch = 0
    if resume:
        if "optimizer" not in resume:
            raise ValueError(f"{checkpoint_path} holds weights only (a packed run): it cannot resume")
        optimizer.load_state_dict(resume["optimizer"])
        if lookahead is not None:
            lookahead.load_state_dict(resume["lookahead"])
        start_epoch = resume["epoch"]
        log.info("resumed from %s at epoch %d", checkpoint_path, start_epoch)

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    # The whole training split lives on the device: on a GPU, per-batch host copies and CPU-side
    # augmentation would otherwise cap the step rate (CIFAR-10 is 135 MB as uint8).
    images_all = torch.from_numpy(train_set.images).to(device)
    labels_all = torch.from_numpy(train_set.labels).to(device)

    def epoch_time(amp: bool) -> float:
        return time_epoch(model, images_all, labels_all, dataclasses.replace(config, amp=amp), device, 0)

    config = dataclasses.replace(config, amp=resolve_amp(config.amp, device, measure=epoch_time))
    log.info("bf16 autocast %s, channels_last %s", config.amp, config.channels_last)
    if config.time_budget_min is not None and not resume:
        seconds_left = 60 * config.time_budget_min - (clock() - started_at)
        epoch_seconds = time_epoch(model, images_all, labels_all, config, device, len(val_set))
        epochs = max(1, int(seconds_left / (BUDGET_MARGIN * epoch_seconds)))
        log.info("time budget: %.1f s/epoch, %.0f s left → %d epochs", epoch_seconds, seconds_left, epochs)
        config = dataclasses.replace(config, epochs=epochs, time_budget_min=None)
    write_json(out / "config.json", {**dataclasses.asdict(config), "classes": dataset.classes})
    total_steps = steps_per_epoch * config.epochs
    generator = torch.Generator().manual_seed(config.seed)
    flips = flip_schedule(len(train_set), config.seed) if config.flip == "alternating" else None
    if config.flip not in ("random", "alternating"):
        raise ValueError(f"unknown flip {config.flip!r}; choose random or alternating")
    if resume and "rng" in resume:
        restore_rng_state(resume["rng"], generator)
    elif resume:  # a checkpoint from before the streams were saved: replay the shuffles at least
        for _ in range(start_epoch):
            torch.randperm(len(train_set), generator=generator)
    if resume:
        keep_metrics(out / "metrics.jsonl", start_epoch)
    metrics: dict[str, Any] = {}
    saved_at = clock()
    epoch_seconds = 0.0
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = clock()
        if whiten_bias is not None:
            whiten_bias.requires_grad_(epoch < config.whiten_bias_epochs)
        order = torch.randperm(len(train_set), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step")
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            done = epoch * steps_per_epoch + step
            lr = learning_rate(config, done, total_steps)
            flip = None if flips is None else flips[index.cpu()] ^ bool(epoch % 2)
            loss, hits = train_step(
                model, optimizer, images_all, labels_all, index, config, generator, lr, flip
            )
            loss_sum += loss * len(index)
            correct += hits
            if lookahead is not None and (done + 1) % LOOKAHEAD_EVERY == 0:
                lookahead.update(model, Lookahead.decay(done + 1, total_steps))
            if step % PROGRESS_EVERY == PROGRESS_EVERY - 1:  # reading the loss waits for the device
                seen = min(len(train_set), (step + 1) * config.batch_size)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", lr=f"{lr:.3f}")
        last = epoch + 1 == config.epochs
        if last and lookahead is not None:
            lookahead.update(model, 1.0)  # the run ends on the average
        val = evaluate(model, val_set, device, amp=config.amp)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / len(train_set),
            "train_accuracy": correct.item() / len(train_set),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": lr,
            "seconds": clock() - started,
        }
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        with (out / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        epoch_seconds = max(epoch_seconds, metrics["seconds"])
        segment_over = config.segment_min is not None and (
            clock() - started_at + BUDGET_MARGIN * epoch_seconds > 60 * config.segment_min
        )
        if last or segment_over or clock() - saved_at >= CHECKPOINT_EVERY_S:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "rng": rng_state(generator),
            }
            if lookahead is not None:
                state["lookahead"] = lookahead.state_dict()
            torch.save(state, checkpoint_path)
            saved_at = clock()
        if segment_over and not last:
            log.info("segment over after epoch %d of %d: run again to resume", epoch + 1, config.epochs)
            return {**metrics, "finished": False, "epochs": config.epochs}
    final = evaluate(model, val_set, device, amp=False)
    summary = {
        **metrics,
        "finished": True,
        "val_accuracy_fp32": final["accuracy"],
        "confusion": final["confusion"],
        "classes": dataset.classes,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "skipped_images": len(dataset.skipped),
        "device": str(device),
    }
    write_json(out / "summary.json", summary)
    plot_curves(out / "metrics.jsonl", out / "curves.png", title=f"{config.model} ({config.activation})")
    return summary


def _whiten_bias(model: Classifier, config: TrainConfig) -> nn.Parameter | None:
    """The whitening stem's bias when `whiten_bias_epochs` limits its training; None otherwise."""
    if config.whiten_bias_epochs is None:
        return None
    whiten = getattr(model.net, "whiten", None)
    if whiten is None or whiten.bias is None:
        raise ValueError(f"whiten_bias_epochs needs a net with a whitening stem; {config.model} has none")
    return whiten.bias


def load_trained(out: str | Path) -> tuple[Classifier, TrainConfig, dict[str, Any]]:
    """Rebuild the trained classifier from a run folder (config.json + checkpoint.pt + summary.json)."""
    out = Path(out)
    raw = json.loads((out / "config.json").read_text())
    raw.pop("classes", None)
    raw["milestones"] = tuple(raw.get("milestones", ()))
    config = TrainConfig(**raw)
    model = build_classifier(config, None)
    state = torch.load(out / "checkpoint.pt", map_location="cpu")
    model.load_state_dict(state["model"])
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return model.eval(), config, summary


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_metrics(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, png: Path, title: str) -> None:
    """Training loss and validation error per epoch, the paper's two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], label="train")
    left.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    left.legend()
    right.plot(epochs, [100 * (1 - r["val_accuracy"]) for r in rows], color="C3")
    right.set(xlabel="epoch", ylabel="validation error (%)", title="validation error")
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
