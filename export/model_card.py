"""Model cards: MODEL_CARD.md for people, model_card.json for tools, mirrored into the ONNX metadata.

Every figure in a card is read from files the pipeline wrote (config.json, summary.json,
verification.json, metrics.jsonl) or computed here from the model; none is typed in by hand.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eluserve.core.contract import MODEL_CARD_JSON, MODEL_CARD_MD, MetadataKey
from eluserve.export.calibration import plot_reliability
from eluserve.export.config import TrainConfig

LIMITATIONS = [
    "Inputs are 32×32: a photo is downscaled so its shorter side is 32 pixels and centre-cropped, "
    "so small objects and fine detail are lost.",
    "Trained on CIFAR-10 re-encoded as JPEG quality 75: accuracy on lossless CIFAR-10 arrays or on "
    "other JPEG qualities can differ.",
    "Ten CIFAR-10 classes only: every image is assigned one of them, whatever it shows; "
    "use the top-1 probability to reject out-of-domain inputs.",
    "Validation accuracy is on a split held out from the training set (the official test set was "
    "not available), measured single crop, single model, no test-time augmentation.",
]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates per image of every Conv2d and Linear, counted with forward hooks."""
    total = 0

    def conv_hook(module: nn.Conv2d, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = int(np.prod(module.kernel_size)) * module.in_channels // module.groups
        total += output[0].numel() * kernel

    def linear_hook(module: nn.Linear, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    model.eval()(torch.zeros(1, input_size, input_size, 3, dtype=torch.uint8))
    for handle in handles:
        handle.remove()
    return total


def train_command(config: TrainConfig) -> str:
    """The `eluserve train` command line that reproduces `config` (defaults left out)."""
    defaults = TrainConfig(data=config.data, out=config.out)
    parts = ["eluserve train", f"--data {config.data}", f"--out {config.out}"]
    for field in fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name in ("data", "out") or value == getattr(defaults, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{field.name.replace('_', '-')}")
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def plot_confusion(confusion: np.ndarray, classes: list[str], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = confusion.max() / 2
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(
            col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black"
        )
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def build_card(
    name: str,
    model: nn.Module,
    config: TrainConfig,
    summary: dict[str, Any],
    verification: dict[str, Any],
    metadata: dict[str, str],
    export_command: str,
) -> dict[str, Any]:
    """The machine-readable card."""
    preprocessing = json.loads(metadata[MetadataKey.PREPROCESSING])
    return {
        "name": name,
        "version": metadata[MetadataKey.VERSION],
        "architecture": config.model,
        "activation": config.activation,
        "parameters": count_parameters(model),
        "macs_per_image": count_macs(model, config.input_size),
        "input": {
            "shape": ["N", config.input_size, config.input_size, 3],
            "dtype": "uint8",
            "layout": "NHWC RGB",
        },
        "outputs": metadata[MetadataKey.OUTPUTS],
        "labels": json.loads(metadata[MetadataKey.LABELS]),
        "data": {
            "source": config.data,
            "dataset": metadata[MetadataKey.DATASET],
            "train_images": summary.get("train_images"),
            "validation_images": summary.get("val_images"),
            "validation_split": f"last {config.val_per_class} images of each class, in file order",
            "skipped_images": summary.get("skipped_images"),
        },
        "preprocessing": preprocessing,
        "training": {
            "command": train_command(config),
            "export_command": export_command,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "optimizer": f"SGD, Nesterov momentum {config.momentum}, weight decay {config.weight_decay}"
            + (f", gradient norm clipped at {config.grad_clip}" if config.grad_clip is not None else ""),
            "schedule": config.schedule,
            "peak_lr": config.lr,
            "label_smoothing": config.label_smoothing,
            "augmentation": f"reflect-pad {config.crop_pad} + random 32×32 crop + horizontal flip"
            if config.augment
            else "none",
            "mixed_precision": "bf16 autocast" if config.amp else "fp32",
            "device": summary.get("device"),
            "seed": config.seed,
        },
        "validation": {
            "accuracy": summary.get("val_accuracy_fp32"),
            "loss": summary.get("val_loss"),
            "confusion_matrix": summary.get("confusion"),
            "protocol": "single crop, single model, no test-time augmentation, fp32",
            # the shipped file itself (fp16-stored weights, if so) in ONNX Runtime, on `images` of
            # the split spread over the classes (all by default): what the service will score
            "onnx": {
                "accuracy": verification["sample_accuracy_ort"],
                "images": verification["sample_images"],
            },
        },
        "export": {
            "checkpoint_sha256": metadata[MetadataKey.CHECKPOINT_SHA256],
            "exported_at": metadata[MetadataKey.EXPORTED_AT],
            "custom_domain": metadata[MetadataKey.CUSTOM_DOMAIN],
            "verification_passed": verification["passed"],
            "parity_max_abs_logit_diff": verification["parity_max_abs_logit_diff"],
            "top1_agreement_torch_vs_ort": verification["top1_agreement_torch_vs_ort"],
            "custom_ops": verification["custom_ops"],
            "model_bytes": verification["model_bytes"],
        },
        "ort_cpu_throughput": verification["ort_cpu_throughput"],
        "calibration": verification["calibration"],
        "per_class_recall": verification["per_class_recall"],
        "limitations": LIMITATIONS,
    }


def render_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md from the card."""
    val = card["validation"]
    train = card["training"]
    throughput = "\n".join(
        f"| {bs} | {v['images_per_second']:.0f} | {v['batch_latency_ms']:.2f} |"
        for bs, v in card["ort_cpu_throughput"].items()
    )
    classes = card["labels"]
    per_class = recall_table(card)
    calibration = calibration_section(card)
    accuracy = f"{100 * val['accuracy']:.2f} %" if val["accuracy"] is not None else "n/a"
    pre = card["preprocessing"]
    data = card["data"]
    exp = card["export"]
    ops = ", ".join(f"{k} × {v}" for k, v in exp["custom_ops"].items())
    limitations = "\n".join("- " + item for item in card["limitations"])
    return f"""# Model card: {card["name"]}

{card["architecture"]} with {card["activation"].upper()} activations, {card["parameters"]:,} parameters,
{card["macs_per_image"] / 1e6:.1f} M multiply-accumulates per image.

**Validation accuracy: {accuracy}** ({val["protocol"]}; {data["validation_images"]} images held out
from the training split — {data["validation_split"]}). The exported file in ONNX Runtime:
{100 * val["onnx"]["accuracy"]:.2f} % on {val["onnx"]["images"]} of them.

## Interface
- Input `image`: uint8 {card["input"]["shape"]}, {card["input"]["layout"]}; the single-crop rule:
  shorter side to {pre["resize_shorter_side"]} px ({pre["interpolation"]}), centre crop {pre["crop"]};
  normalisation `{pre["normalization"]}` happens inside the graph.
- Outputs: {card["outputs"]}.
- Labels (index order): {", ".join(classes)}.
- Custom ops ({exp["custom_domain"]}): {ops}, defined by model-local ONNX functions.

## Data
{data["dataset"]}: {data["train_images"]} training images, {data["validation_images"]} validation images,
{data["skipped_images"]} unreadable images skipped.

## Training
- Command: `{train["command"]}`
- Export: `{train["export_command"]}`
- {train["epochs"]} epochs, batch {train["batch_size"]}, {train["optimizer"]}, {train["schedule"]}
  schedule with peak learning rate {train["peak_lr"]}, label smoothing {train["label_smoothing"]},
  {train["augmentation"]}, {train["mixed_precision"]}, seed {train["seed"]}, on {train["device"]}.

![training curves](curves.png)

## Validation
{per_class}

![confusion matrix](confusion.png)
{calibration}
## Export verification
Passed: {exp["verification_passed"]}; max |logit diff| torch vs ORT {exp["parity_max_abs_logit_diff"]:.2e};
top-1 agreement {100 * exp["top1_agreement_torch_vs_ort"]:.2f} %; file {exp["model_bytes"] / 1e6:.2f} MB;
checkpoint sha256 `{exp["checkpoint_sha256"][:16]}…`. Details: `verification.md`.

## ONNX Runtime CPU throughput (2-core machine, measured at export)
| batch | images/s | batch latency (ms) |
| --- | --- | --- |
{throughput}

{_precision_section(card.get("precision", {}))}## Limitations
{limitations}
"""


def _precision_section(records: dict[str, Any]) -> str:
    """The lower precisions measured by `eluserve validate-precision`, and whether they may serve."""
    if not records:
        return ""
    rows = "\n".join(
        f"| {name} | {r['engine']} {r['device']} | {r['images']} | {100 * r['top1_agreement']:.2f} % | "
        f"{100 * r['accuracy']:.2f} % | {100 * r['fp32_accuracy']:.2f} % | "
        f"{'allowed' if r['passed'] else 'refused'} |"
        for name, r in sorted(records.items())
    )
    commands = "\n".join(
        f"- {name}: `{r['command']}` ({r['measured_at']})" for name, r in sorted(records.items())
    )
    return f"""## Lower precision
A precision below fp32 may serve this model (`ELUSERVE_PRECISION`) only where top-1 agreement with fp32
is at least 99.5 % and accuracy is within 0.2 points of fp32 on the validation split.

| precision | engine | images | top-1 agreement | accuracy | fp32 accuracy | serving |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

{commands}

"""


def record_precision(model_dir: Path, precision: str, record: dict[str, Any]) -> dict[str, Any]:
    """Add a precision validation record to the card: model_card.json, MODEL_CARD.md and the ONNX
    metadata (which serving reads). Only the metadata of model.onnx changes, not its graph."""
    import onnx

    from eluserve.core.contract import MODEL_CARD_JSON, MODEL_CARD_MD, MODEL_FILE, MetadataKey
    from eluserve.export.exporter import set_metadata

    card = json.loads((model_dir / MODEL_CARD_JSON).read_text())
    card.setdefault("precision", {})[precision] = record
    (model_dir / MODEL_CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (model_dir / MODEL_CARD_MD).write_text(render_markdown(card))
    proto = onnx.load(str(model_dir / MODEL_FILE))
    set_metadata(proto, {MetadataKey.MODEL_CARD: json.dumps(card, separators=(",", ":"))})
    onnx.save(proto, str(model_dir / MODEL_FILE))
    return card


def recall_table(card: dict[str, Any]) -> str:
    """Per-class recall: of the checkpoint in torch (the confusion matrix) and, where the card has it,
    of the exported file in ONNX Runtime (what calibration is measured on)."""
    classes = card["labels"]
    matrix = card["validation"]["confusion_matrix"]
    columns: list[tuple[str, list[float]]] = []
    if matrix:
        confusion = np.array(matrix)
        columns.append(("recall (torch, fp32)", list(confusion.diagonal() / confusion.sum(1).clip(min=1))))
    if card.get("per_class_recall"):
        images = card["calibration"]["images"]
        columns.append((f"recall (ONNX, {images} images)", [card["per_class_recall"][c] for c in classes]))
    if not columns:
        return ""
    lines = [
        "| class | " + " | ".join(name for name, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for row, name in enumerate(classes):
        cells = " | ".join(f"{100 * values[row]:.1f} %" for _, values in columns)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def calibration_section(card: dict[str, Any]) -> str:
    """The calibration paragraph and its reliability diagram, where the card has them."""
    report = card.get("calibration")
    if not report:
        return ""
    return f"""
## Calibration
Expected calibration error **{100 * report["ece"]:.2f} %** ({report["bins"]} equal-width confidence
bins; the exported file in ONNX Runtime on {report["images"]} validation images): mean top-1
confidence {100 * report["mean_confidence"]:.2f} % against accuracy {100 * report["accuracy"]:.2f} %
({"under" if report["mean_confidence"] < report["accuracy"] else "over"}-confident on average).

![reliability diagram](reliability.png)
"""


def write_card(card: dict[str, Any], out_dir: Path, run_dir: Path) -> None:
    """Write the card files and the plots beside the model."""
    (out_dir / MODEL_CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / MODEL_CARD_MD).write_text(render_markdown(card))
    if (run_dir / "curves.png").exists():
        shutil.copyfile(run_dir / "curves.png", out_dir / "curves.png")
    if card["validation"]["confusion_matrix"]:
        plot_confusion(
            np.array(card["validation"]["confusion_matrix"]),
            card["labels"],
            out_dir / "confusion.png",
            f"{card['name']}: validation confusion matrix",
        )
    plot_reliability(card["calibration"], out_dir / "reliability.png", f"{card['name']} v{card['version']}")
