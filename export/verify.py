"""Verification written next to every export: does the ONNX file compute what the checkpoint computes?

Checks (thresholds from the export contract):
- max |logit difference| torch vs ONNX Runtime ≤ 1e-4 + 1e-5 × the batch's largest |logit| on a
  sample batch (a fixed 1e-4 alone failed the 19-layer flagship at 1.6e-4 with logits up to 17:
  float32 rounding differences grow with the logits' scale and the depth, and are still ~1e-5 of it);
- top-1 agreement torch vs ORT = 100 % on a validation sample;
- fused export vs plain export: identical predictions;
- onnx.reference.ReferenceEvaluator runs the fused model with nothing registered and agrees with ORT;
plus the model size, ORT CPU throughput at a few batch sizes, OpenVINO fp32's parity with ORT
(recorded, not required: serving checks it again at start-up and falls back to ORT when it fails), and
the calibration (ECE, 15 bins) and per-class recall of the fused file's probabilities on the sample:
what the service will answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator

from eluserve.core.contract import INPUT_NAME, LOGITS_NAME, parity_tolerance
from eluserve.core.engines import BF16, CPU, FP32
from eluserve.core.session import available_cores
from eluserve.core.throughput import cpu_session, measure_session
from eluserve.export.calibration import calibration_report, per_class_recall
from eluserve.export.data import ImageDataset
from eluserve.export.fusion import DOMAIN

BATCH_SIZES = (1, 8, 32, 64, 128)


def _ort_logits(session: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [
            session.run([LOGITS_NAME], {INPUT_NAME: images[i : i + batch]})[0]
            for i in range(0, len(images), batch)
        ]
    )


def ort_probabilities(session: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The `probabilities` output, as the service returns it."""
    return np.concatenate(
        [
            session.run(["probabilities"], {"image": images[i : i + batch]})[0]
            for i in range(0, len(images), batch)
        ]
    )


@torch.no_grad()
def _torch_logits(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [model(torch.from_numpy(images[i : i + batch])).float().numpy() for i in range(0, len(images), batch)]
    )


def sample_index(size: int, sample: int | None) -> np.ndarray:
    """Indices of `sample` items spread evenly over `size` (all of them when sample is None)."""
    if sample is None or sample >= size:
        return np.arange(size)
    return np.linspace(0, size - 1, num=sample).round().astype(np.int64)


def verify_export(
    model: torch.nn.Module,
    fused_path: Path,
    plain_path: Path,
    val: ImageDataset,
    sample: int | None = None,
    parity_batch: int = 64,
    reference_images: int = 4,
    throughput_seconds: float = 1.0,
) -> dict[str, Any]:
    """Run every check; returns the report (also what verification.json holds).

    `sample` limits the checks to that many validation images, spread evenly over the split: the
    split is ordered by class, so its first images would all be airplanes, cars and birds.
    """
    index = sample_index(len(val.labels), sample)
    images = val.images[index]
    labels = val.labels[index]
    fused = cpu_session(str(fused_path))
    plain = cpu_session(str(plain_path))

    torch_logits = _torch_logits(model, images)
    fused_logits = _ort_logits(fused, images)
    plain_logits = _ort_logits(plain, images)
    parity = float(np.abs(torch_logits[:parity_batch] - fused_logits[:parity_batch]).max())
    tolerance = parity_tolerance(float(np.abs(torch_logits[:parity_batch]).max()))
    agreement = float((torch_logits.argmax(1) == fused_logits.argmax(1)).mean())
    fused_vs_plain_identical = bool((fused_logits.argmax(1) == plain_logits.argmax(1)).all())
    fused_vs_plain_max_diff = float(np.abs(fused_logits - plain_logits).max())

    proto = onnx.load(str(fused_path))
    reference = ReferenceEvaluator(proto).run([LOGITS_NAME], {INPUT_NAME: images[:reference_images]})[0]
    reference_diff = float(np.abs(reference - fused_logits[:reference_images]).max())

    throughput = {}
    for batch_size in BATCH_SIZES:
        batch = np.resize(images, (batch_size, *images.shape[1:]))
        result = measure_session(fused, batch, seconds=throughput_seconds)
        throughput[str(batch_size)] = {
            "images_per_second": round(result.images_per_second, 1),
            "batch_latency_ms": round(1000 * result.batch_latency_seconds, 3),
        }
    probabilities = ort_probabilities(fused, images)
    confusion = np.zeros((len(val.classes),) * 2, dtype=np.int64)
    np.add.at(confusion, (labels, probabilities.argmax(1)), 1)
    custom_nodes = [n.op_type for n in proto.graph.node if n.domain == DOMAIN]
    report = {
        "parity_max_abs_logit_diff": parity,
        "parity_tolerance": tolerance,
        "parity_batch": min(parity_batch, len(images)),
        "top1_agreement_torch_vs_ort": agreement,
        "sample_images": len(images),
        "sample_accuracy_ort": float((fused_logits.argmax(1) == labels).mean()),
        "fused_vs_plain_identical_predictions": fused_vs_plain_identical,
        "fused_vs_plain_max_abs_logit_diff": fused_vs_plain_max_diff,
        "reference_evaluator_max_abs_diff_vs_ort": reference_diff,
        "custom_ops": {op: custom_nodes.count(op) for op in sorted(set(custom_nodes))},
        "model_bytes": fused_path.stat().st_size,
        "ort_cpu_throughput": throughput,
        "onnxruntime_version": ort.__version__,
        "openvino_parity": openvino_parity(fused_path, images[:parity_batch]),
        "calibration": calibration_report(probabilities, labels),
        "per_class_recall": per_class_recall(confusion, val.classes),
    }
    report["passed"] = bool(
        parity <= tolerance and agreement == 1.0 and fused_vs_plain_identical and reference_diff <= tolerance
    )
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """verification.json for tools, verification.md for people."""
    (out_dir / "verification.json").write_text(json.dumps(report, indent=2) + "\n")
    tol = f"≤ {report['parity_tolerance']:.1e} (1e-4 + 1e-5 × max abs logit)"
    checks = [
        (
            f"max abs logit diff, torch vs ORT ({report['parity_batch']} images)",
            f"{report['parity_max_abs_logit_diff']:.2e}",
            tol,
        ),
        (
            f"top-1 agreement torch vs ORT ({report['sample_images']} validation images)",
            f"{100 * report['top1_agreement_torch_vs_ort']:.2f} %",
            "100 %",
        ),
        (
            "fused vs plain export, identical predictions",
            f"{report['fused_vs_plain_identical_predictions']} "
            f"(max diff {report['fused_vs_plain_max_abs_logit_diff']:.2e})",
            "True",
        ),
        (
            "onnx.reference vs ORT, max abs diff",
            f"{report['reference_evaluator_max_abs_diff_vs_ort']:.2e}",
            tol,
        ),
    ]
    lines = [
        f"# Export verification: {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        "| check | result | required |",
        "| --- | --- | --- |",
        *(f"| {a} | {b} | {c} |" for a, b, c in checks),
        "",
        "Custom ops: " + ", ".join(f"{k} × {v}" for k, v in report["custom_ops"].items()) + ".",
        f"Model size: {report['model_bytes'] / 1e6:.2f} MB. "
        f"Sample accuracy (ORT): {100 * report['sample_accuracy_ort']:.2f} %. "
        f"Expected calibration error ({report['calibration']['bins']} bins): "
        f"{100 * report['calibration']['ece']:.2f} %.",
        "",
        _openvino_line(report.get("openvino_parity")),
        "",
        f"ONNX Runtime {report['onnxruntime_version']} CPU throughput (this machine, default threads):",
        "",
        "| batch | images/s | batch latency (ms) |",
        "| --- | --- | --- |",
        *(
            f"| {bs} | {v['images_per_second']:.0f} | {v['batch_latency_ms']:.2f} |"
            for bs, v in report["ort_cpu_throughput"].items()
        ),
    ]
    text = "\n".join(lines) + "\n"
    (out_dir / "verification.md").write_text(text)


def _openvino_line(parity: dict[str, Any] | None) -> str:
    if parity is None:
        return "OpenVINO parity: not measured (exported before the check existed)."
    return (
        f"{parity['engine']} {parity['precision']} vs ORT, {parity['images']} images: max abs logit diff "
        f"{parity['max_abs_logit_diff']:.2e} (≤ {parity['tolerance']:.1e}): "
        f"{'passed' if parity['passed'] else 'FAILED (serving falls back to ORT)'}."
    )


def openvino_parity(model_path: Path, images: np.ndarray, precision: str = FP32) -> dict[str, Any]:
    """OpenVINO (the graph as `eluserve.core.openvino_graph` rewrites it) against ORT fp32 on `images`."""
    from eluserve.core.engines import OpenVinoEngine, OrtEngine, check_parity

    reference = OrtEngine.create(model_path, [CPU], available_cores())
    candidate = OpenVinoEngine.create(model_path, available_cores(), precision)
    parity = check_parity(candidate, reference, images)
    return {
        "engine": f"openvino {_openvino_version()}",
        "precision": precision,
        "max_abs_logit_diff": parity.max_abs_logit_diff,
        "tolerance": parity.tolerance,
        "images": len(images),
        "passed": parity.passed,
    }


def measure_precision(
    model_path: Path, val: ImageDataset, precision: str, batch: int = 256
) -> dict[str, Any]:
    """Top-1 agreement and accuracy of `precision` against ORT fp32 on the validation split.

    The record this returns is what `eluserve.core.engines.require_precision` reads from the card:
    a lower precision may serve the model only with top-1 agreement ≥ 99.5 % and accuracy within
    0.2 points of fp32. The flagship shows why per-model: bf16 kept 100 % of the default's top-1
    but 62 % of the flagship's.
    """
    from eluserve.core.engines import (
        MAX_ACCURACY_DROP,
        MIN_TOP1_AGREEMENT,
        OpenVinoEngine,
        OrtEngine,
    )

    if precision != BF16:
        raise ValueError(f"only bf16 (OpenVINO CPU) can be validated here, not {precision}")
    reference = OrtEngine.create(model_path, [CPU], available_cores())
    candidate = OpenVinoEngine.create(model_path, available_cores(), precision)
    fp32 = np.concatenate(
        [reference.run(val.images[i : i + batch], "logits") for i in range(0, len(val), batch)]
    )
    low = np.concatenate(
        [candidate.run(val.images[i : i + batch], "logits") for i in range(0, len(val), batch)]
    )
    agreement = float((fp32.argmax(1) == low.argmax(1)).mean())
    fp32_accuracy = float((fp32.argmax(1) == val.labels).mean())
    accuracy = float((low.argmax(1) == val.labels).mean())
    return {
        "engine": f"openvino {_openvino_version()}",
        "device": candidate.device,
        "reference": f"onnxruntime {ort.__version__} fp32 CPU",
        "images": len(val),
        "top1_agreement": agreement,
        "accuracy": accuracy,
        "fp32_accuracy": fp32_accuracy,
        "max_abs_logit_diff": float(np.abs(fp32 - low).max()),
        "required": {"min_top1_agreement": MIN_TOP1_AGREEMENT, "max_accuracy_drop": MAX_ACCURACY_DROP},
        "passed": agreement >= MIN_TOP1_AGREEMENT and fp32_accuracy - accuracy <= MAX_ACCURACY_DROP,
    }


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]
