"""Export orchestration: trained run folder → plain ONNX → fused-ELU ONNX with metadata → verification.

run/ (config.json, checkpoint.pt, summary.json)
  └─ torch: fold BN into conv, add the softmax output
       └─ torch.onnx (dynamo) → plain.onnx            (kept in the run folder for comparisons)
            └─ fusion.fuse_elu → model.onnx            (custom domain + model-local functions)
                 └─ verify → verification.json / .md
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from eluserve.core.contract import INPUT_LAYOUT, INPUT_NAME, MODEL_FILE, OUTPUT_NAMES, ModelMetadata
from eluserve.core.preprocessing import PreprocessingRule
from eluserve.export.fusion import DOMAIN, default_opset, fuse_elu
from eluserve.export.pack import FP16_MIN_ELEMENTS, to_fp16_storage
from eluserve.export.preprocess import Classifier, GcnZcaInput

log = logging.getLogger(__name__)

OPSET = 18


class ExportModule(nn.Module):
    """What the ONNX file computes: uint8 NHWC pixels → (logits, probabilities)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(image)
        return logits, torch.softmax(logits, dim=1)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into that conv (eval only).

    Done in torch, not left to an exporter's optimiser, so the ONNX graph is Conv → Elu whatever
    exporter version runs, and the fusion rules can match it.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                module[i + 1] = nn.Identity()
    return module


def to_onnx(classifier: Classifier, input_size: int, opset: int = OPSET) -> onnx.ModelProto:
    """The plain export: BN folded, dynamic batch axis, no fusion or rewrites."""
    module = ExportModule(fold_batchnorm(copy.deepcopy(classifier).eval().float()))
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]  # stack traces with local paths: noise in a shipped file
    del model.metadata_props[:]
    return model


@dataclass
class ExportResult:
    model_path: Path
    plain_path: Path
    rewrites: dict[str, int]
    #: What the exporter wrote into `model_path`'s metadata_props; `read_model_info` reads it back.
    metadata: ModelMetadata


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def build_metadata(
    name: str,
    version: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    checkpoint: Path,
    classifier: Classifier,
    model_path: Path,
) -> ModelMetadata:
    """The contract per docs/model-format.md: everything the service must not re-guess.

    Built as the `ModelMetadata` that serving reads, and written with its `to_metadata_props`, so that
    what export writes and what serving reads cannot drift apart.
    """
    input_size = int(config["input_size"])
    normalization = "gcn_zca" if isinstance(classifier.input_transform, GcnZcaInput) else "mean_std"
    val_per_class = config.get("val_per_class")
    accuracy = summary.get("val_accuracy_fp32", summary.get("val_accuracy"))
    return ModelMetadata(
        name=name,
        version=version,
        labels=tuple(summary.get("classes") or config.get("classes") or ()),
        input_size=(input_size, input_size),
        preprocessing=PreprocessingRule(
            resize_shorter_side=input_size,
            crop=(input_size, input_size),
            interpolation="bicubic",
            normalization=normalization,
        ),
        path=str(model_path),
        input_layout=INPUT_LAYOUT,
        val_accuracy=None if accuracy is None else round(float(accuracy), 4),
        architecture=config["model"],
        activation=config["activation"],
        dataset=f"{Path(config['data']).name} (train minus the last {val_per_class} images per class)",
        custom_domain=DOMAIN,
        checkpoint_sha256=file_sha256(checkpoint),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference, then the full checker: the shipped file must pass both."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    return inferred


def export_run(
    classifier: Classifier,
    config: dict[str, Any],
    summary: dict[str, Any],
    checkpoint: Path,
    out_dir: Path,
    name: str,
    version: str = "1",
    plain_dir: Path | None = None,
    fp16_storage: bool = False,
) -> ExportResult:
    """Write `out_dir/model.onnx` (fused) and `plain_dir/plain.onnx` (unfused, for comparisons only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = to_onnx(classifier, int(config["input_size"]))
    plain_path = (plain_dir or out_dir) / "plain.onnx"
    onnx.save(finalize(plain), plain_path)

    model_path = out_dir / MODEL_FILE
    fused = copy.deepcopy(plain)
    rewrites = fuse_elu(fused)
    metadata = build_metadata(name, version, config, summary, checkpoint, classifier, model_path)
    set_metadata(fused, metadata.to_metadata_props())
    fused.producer_name = "eluserve"
    fused.doc_string = f"{name}: {config['model']} ({config['activation']}), fused ELU ops in {DOMAIN}"
    fused = finalize(storage_fp16(fused) if fp16_storage else fused)
    onnx.save(fused, model_path)
    log.info("exported %s: rewrites %s, opset %d", model_path, dict(rewrites), default_opset(fused))
    return ExportResult(model_path, plain_path, dict(rewrites), metadata)


@torch.no_grad()
def round_to_fp16(classifier: nn.Module) -> None:
    """Round the float weights to fp16 values in place, so torch computes with what the file stores.

    Verification then compares like with like; the rounding's own effect on accuracy shows up in the
    ORT sample accuracy that the report carries.
    """
    for tensor in [*classifier.parameters(), *classifier.buffers()]:
        stored = to_fp16_storage(tensor)
        if stored.dtype != tensor.dtype:
            tensor.copy_(stored)


def storage_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store float32 initializers as float16 and cast them back at load: half the file, fp32 compute.

    This is what keeps the paper's 18-layer network (39 M parameters) under 100 MB; ORT constant-folds
    the Casts at session start, so the running graph is fp32 as before.
    """
    result = copy.deepcopy(model)
    graph = result.graph
    casts = []
    for tensor in graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or int(np.prod(tensor.dims)) < FP16_MIN_ELEMENTS:
            continue
        array = onnx.numpy_helper.to_array(tensor).astype(np.float16)
        stored = onnx.numpy_helper.from_array(array, f"{tensor.name}_fp16")
        casts.append(onnx.helper.make_node("Cast", [stored.name], [tensor.name], to=onnx.TensorProto.FLOAT))
        tensor.CopyFrom(stored)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return result


def export_and_verify(
    run_dir: Path,
    out_dir: Path,
    name: str,
    version: str = "1",
    sample: int | None = None,
    throughput_seconds: float = 1.0,
    fp16_storage: bool = False,
) -> dict[str, Any]:
    """The whole export stage for a run folder: ONNX files, verification, model card. Returns the card."""
    from eluserve.export.data import load_dataset, split_train_val
    from eluserve.export.model_card import build_card, write_card
    from eluserve.export.train import load_trained
    from eluserve.export.verify import verify_export, write_report

    classifier, config, summary = load_trained(run_dir)
    if fp16_storage:
        round_to_fp16(classifier)
    config_dict = dataclasses.asdict(config)
    result = export_run(
        classifier,
        config_dict,
        summary,
        run_dir / "checkpoint.pt",
        out_dir,
        name,
        version,
        plain_dir=run_dir,
        fp16_storage=fp16_storage,
    )
    dataset = load_dataset(config.data, config.input_size, config.num_classes)
    _, val = split_train_val(dataset, config.val_per_class)
    report = verify_export(
        classifier,
        result.model_path,
        result.plain_path,
        val,
        sample=sample,
        throughput_seconds=throughput_seconds,
    )
    report["rewrites"] = result.rewrites
    write_report(report, out_dir)
    command = (
        f"eluserve export {run_dir} --out {out_dir} --name {name} --version {version}"
        + (f" --sample {sample}" if sample is not None else "")
        + (" --fp16-storage" if fp16_storage else "")
    )
    card = build_card(name, classifier, config, summary, report, result.metadata.to_metadata_props(), command)
    write_card(card, out_dir, run_dir)
    proto = onnx.load(str(result.model_path))
    set_metadata(proto, dataclasses.replace(result.metadata, model_card=card).to_metadata_props())
    onnx.save(proto, result.model_path)
    if not report["passed"]:
        raise ExportVerificationError(f"export verification failed, see {out_dir / 'verification.md'}")
    return card


class ExportVerificationError(RuntimeError):
    """The exported file does not compute what the checkpoint computes."""
