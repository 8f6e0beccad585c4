"""The model contract between export and serving (docs/model-format.md), in one place.

The exporter writes these tensor names and metadata keys; serving, the folder CLI and the benchmarks
read them through `ModelMetadata`. Nothing here creates an inference session, so reading a model's
contract costs only the protobuf parse.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from eluserve.core.errors import ModelFormatError
from eluserve.core.preprocessing import PreprocessingRule

#: The graph's one input: uint8 RGB crops [N, H, W, 3].
INPUT_NAME = "image"
#: The output serving reads: softmax rows [N, classes].
OUTPUT_NAME = "probabilities"
#: The pre-softmax output the export checks compare against torch.
LOGITS_NAME = "logits"
#: Every output an exported graph has, in order.
OUTPUT_NAMES = (LOGITS_NAME, OUTPUT_NAME)
#: The file name of a model inside its folder.
MODEL_FILE = "model.onnx"
#: The card beside it, for tools (mirrored into the `model_card` metadata key).
MODEL_CARD_JSON = "model_card.json"
#: The card beside it, for people.
MODEL_CARD_MD = "MODEL_CARD.md"
#: The input layout every exported graph has.
INPUT_LAYOUT = "NHWC uint8 RGB"
#: The `outputs` metadata value: the outputs in words, for people reading the file's metadata.
OUTPUTS_DESCRIPTION = "logits [N, C] float32; probabilities [N, C] float32 (softmax of logits)"
#: Largest |ORT - torch| logit difference an export may show: 1e-4 plus 1e-5 × the largest |logit|
#: (fp32 reassociation grows with the logit scale); also the bar for an engine against ORT fp32.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5


class MetadataKey:
    """The `metadata_props` keys of an exported model (docs/model-format.md)."""

    NAME = "name"
    VERSION = "version"
    LABELS = "labels"
    INPUT_SIZE = "input_size"
    INPUT_LAYOUT = "input_layout"
    PREPROCESSING = "preprocessing"
    OUTPUTS = "outputs"
    VAL_ACCURACY = "val_accuracy"
    ARCHITECTURE = "architecture"
    ACTIVATION = "activation"
    DATASET = "dataset"
    CUSTOM_DOMAIN = "custom_domain"
    CHECKPOINT_SHA256 = "checkpoint_sha256"
    EXPORTED_AT = "exported_at"
    MODEL_CARD = "model_card"


REQUIRED_METADATA = (
    MetadataKey.NAME,
    MetadataKey.VERSION,
    MetadataKey.LABELS,
    MetadataKey.INPUT_SIZE,
    MetadataKey.PREPROCESSING,
)


def parity_tolerance(max_abs_logit: float) -> float:
    """The logit difference two runs of one model may show (see `PARITY_ATOL`)."""
    return PARITY_ATOL + PARITY_RTOL * max_abs_logit


#: ONNX domains that are not a custom op domain.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"})


@dataclass(frozen=True)
class ModelMetadata:
    """What `metadata_props` and the graph say about a model, plus where it runs."""

    name: str
    version: str
    labels: tuple[str, ...]
    #: (height, width) of the graph input.
    input_size: tuple[int, int]
    preprocessing: PreprocessingRule
    path: str
    input_layout: str = INPUT_LAYOUT
    val_accuracy: float | None = None
    architecture: str | None = None
    activation: str | None = None
    dataset: str | None = None
    custom_domain: str | None = None
    #: Version of the default ONNX domain the graph imports.
    opset: int | None = None
    checkpoint_sha256: str | None = None
    exported_at: str | None = None
    model_card: Mapping[str, Any] | None = None
    #: Where the graph runs: the ONNX Runtime execution provider, or the OpenVINO device; None until
    #: a session exists.
    provider: str | None = None
    #: The inference engine (`onnxruntime`, `openvino`); None until a session exists.
    engine: str | None = None
    #: The precision it computes in (fp32, bf16); None until a session exists.
    precision: str | None = None

    @property
    def tag(self) -> str:
        """`name:version`, the model's identity in responses."""
        return f"{self.name}:{self.version}"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_engine(self, engine: str, provider: str, precision: str) -> ModelMetadata:
        return dataclasses.replace(self, engine=engine, provider=provider, precision=precision)

    def to_dict(self) -> dict[str, Any]:
        """The `GET /model` document."""
        return {
            "model": self.tag,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "input_layout": self.input_layout,
            "preprocessing": self.preprocessing.to_dict(),
            "val_accuracy": self.val_accuracy,
            "architecture": self.architecture,
            "activation": self.activation,
            "dataset": self.dataset,
            "engine": self.engine,
            "execution_provider": self.provider,
            "precision": self.precision,
            "opset": self.opset,
            "custom_domain": self.custom_domain,
            "checkpoint_sha256": self.checkpoint_sha256,
            "exported_at": self.exported_at,
            "model_card": dict(self.model_card) if self.model_card is not None else None,
        }

    def to_metadata_props(self) -> dict[str, str]:
        """The `metadata_props` that `from_onnx` reads back as this object (the exporter writes these).

        Optional fields that are None are left out; `path`, `opset` and `provider` describe a file and
        a session, not the export, so they are not metadata. `val_accuracy` is written as its shortest
        round-tripping repr, so what is read back equals what was written.
        """
        props = {
            MetadataKey.NAME: self.name,
            MetadataKey.VERSION: self.version,
            MetadataKey.LABELS: json.dumps(list(self.labels)),
            MetadataKey.INPUT_SIZE: json.dumps(list(self.input_size)),
            MetadataKey.INPUT_LAYOUT: self.input_layout,
            MetadataKey.PREPROCESSING: json.dumps(self.preprocessing.to_dict()),
            MetadataKey.OUTPUTS: OUTPUTS_DESCRIPTION,
            MetadataKey.VAL_ACCURACY: None if self.val_accuracy is None else repr(self.val_accuracy),
            MetadataKey.ARCHITECTURE: self.architecture,
            MetadataKey.ACTIVATION: self.activation,
            MetadataKey.DATASET: self.dataset,
            MetadataKey.CUSTOM_DOMAIN: self.custom_domain,
            MetadataKey.CHECKPOINT_SHA256: self.checkpoint_sha256,
            MetadataKey.EXPORTED_AT: self.exported_at,
            MetadataKey.MODEL_CARD: None
            if self.model_card is None
            else json.dumps(dict(self.model_card), separators=(",", ":")),
        }
        return {key: value for key, value in props.items() if value is not None}

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, path: str | Path) -> ModelMetadata:
        """Read and check the contract: graph interface and required metadata.

        Raises:
            ModelFormatError: naming the first thing that does not follow docs/model-format.md.
        """
        where = str(path)
        meta = {prop.key: prop.value for prop in model.metadata_props}
        missing = [key for key in REQUIRED_METADATA if key not in meta]
        if missing:
            raise ModelFormatError(
                f"{where}: metadata_props lacks {missing}; export it with the exporter in export/ "
                "(docs/model-format.md lists the keys)"
            )
        labels = _json_metadata(meta, MetadataKey.LABELS, where)
        if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
            raise ModelFormatError(f"{where}: metadata 'labels' must be a non-empty JSON list of strings")
        input_size = _json_metadata(meta, MetadataKey.INPUT_SIZE, where)
        if not (
            isinstance(input_size, list)
            and len(input_size) == 2
            and all(isinstance(v, int) and v > 0 for v in input_size)
        ):
            raise ModelFormatError(f"{where}: metadata 'input_size' must be JSON [height, width]")
        rule = PreprocessingRule.from_metadata(meta[MetadataKey.PREPROCESSING])
        if rule.crop != tuple(input_size):
            raise ModelFormatError(
                f"{where}: preprocessing crop {list(rule.crop)} differs from input_size {input_size}"
            )
        _check_graph(model.graph, (input_size[0], input_size[1]), len(labels), where)
        opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
        custom = meta.get(MetadataKey.CUSTOM_DOMAIN) or next(
            (entry.domain for entry in model.opset_import if entry.domain not in STANDARD_DOMAINS), None
        )
        card = _json_metadata(meta, MetadataKey.MODEL_CARD, where) if MetadataKey.MODEL_CARD in meta else None
        return cls(
            name=meta[MetadataKey.NAME],
            version=meta[MetadataKey.VERSION],
            labels=tuple(labels),
            input_size=(input_size[0], input_size[1]),
            preprocessing=rule,
            path=where,
            input_layout=meta.get(MetadataKey.INPUT_LAYOUT, INPUT_LAYOUT),
            val_accuracy=_float_or_none(meta.get(MetadataKey.VAL_ACCURACY)),
            architecture=meta.get(MetadataKey.ARCHITECTURE),
            activation=meta.get(MetadataKey.ACTIVATION),
            dataset=meta.get(MetadataKey.DATASET),
            custom_domain=custom,
            opset=opset,
            checkpoint_sha256=meta.get(MetadataKey.CHECKPOINT_SHA256),
            exported_at=meta.get(MetadataKey.EXPORTED_AT),
            model_card=card if isinstance(card, dict) else None,
        )


def _json_metadata(meta: Mapping[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError as exc:
        raise ModelFormatError(f"{where}: metadata {key!r} is not valid JSON: {meta[key]!r}") from exc


def _float_or_none(value: str | None) -> float | None:
    """A finite float, else None: JSON has no NaN, and `GET /model` must stay valid JSON."""
    try:
        number = None if value is None else float(value)
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _check_graph(graph: onnx.GraphProto, input_size: tuple[int, int], num_classes: int, where: str) -> None:
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if [value.name for value in inputs] != [INPUT_NAME]:
        raise ModelFormatError(
            f"{where}: the graph must have exactly one input named {INPUT_NAME!r}, "
            f"has {[value.name for value in inputs]}"
        )
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.UINT8:
        raise ModelFormatError(f"{where}: input {INPUT_NAME!r} must be uint8 (raw RGB pixels)")
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    expected = [None, input_size[0], input_size[1], 3]
    if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims[1:], expected[1:], strict=True)):
        raise ModelFormatError(
            f"{where}: input {INPUT_NAME!r} has shape {dims}, expected [N, {input_size[0]}, "
            f"{input_size[1]}, 3] (NHWC)"
        )
    outputs = {value.name: value for value in graph.output}
    if OUTPUT_NAME not in outputs:
        raise ModelFormatError(f"{where}: the graph has no output named {OUTPUT_NAME!r}")
    out_dims = outputs[OUTPUT_NAME].type.tensor_type.shape.dim
    if len(out_dims) == 2 and out_dims[1].HasField("dim_value") and out_dims[1].dim_value != num_classes:
        raise ModelFormatError(
            f"{where}: output {OUTPUT_NAME!r} has {out_dims[1].dim_value} classes but 'labels' lists "
            f"{num_classes}"
        )


def resolve_model_file(path: str | Path) -> Path:
    """Accept a model folder (`models/<name>/`) or the .onnx file itself."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / MODEL_FILE
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no model at {candidate}; pass an .onnx file or a folder holding {MODEL_FILE}"
        )
    return candidate


def read_model_info(path: str | Path) -> ModelMetadata:
    """Read a model's contract metadata without creating an inference session."""
    model_file = resolve_model_file(path)
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except DecodeError as exc:
        raise ModelFormatError(
            f"{model_file} is not an ONNX model ({exc}); the file is corrupt or cut short, export it again"
        ) from exc
    return ModelMetadata.from_onnx(model, model_file)
