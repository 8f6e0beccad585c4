"""Baseline for `eluserve bench`: the same ONNX model behind Triton Inference Server via PyTriton.

    LD_LIBRARY_PATH=$(python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))") \
        PYTHONPATH=. .cache/triton-venv/bin/python -m load_tests.triton_server \
        --model models/elufast-cifar10/model.onnx --http-port 8000 --grpc-port 8001 --metrics-port 8002

Not a product path: it exists so the benchmark can hold the service against Triton's dynamic batcher
on the same model, the same decoder and the same ONNX Runtime session options. Clients send the
encoded image as a BYTES tensor (KServe v2 `POST /v2/models/eluserve/infer`, binary extension) so
that decoding happens server-side here too, inside the inference callable, with
`eluserve.core.preprocessing.load_image`; the callable answers each image's class probabilities.

nvidia-pytriton pins numpy<2 while the project runs numpy 2, so this module runs in an environment of
its own (`load_tests/requirements-triton.txt`) and imports nothing from the project but the inference
core. Triton's Python backend stub links libpython dynamically: `LD_LIBRARY_PATH` must lead to *this*
interpreter's libpython, or the stub picks up the system's, a different build.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from eluserve.core.contract import INPUT_NAME, OUTPUT_NAME
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession

#: The Triton model's name; its input and output tensors carry the contract's names.
MODEL_NAME = "eluserve"


def build_infer(classifier: ModelSession, limits: Limits) -> Callable[..., dict[str, np.ndarray]]:
    """The inference callable: encoded images [N, 1] (bytes) → probabilities [N, classes].

    One callable instance serves one batch at a time, as Triton's Python backend does by default; the
    batch's images are decoded one after the other, then run as one ONNX Runtime batch.
    """
    rule = classifier.info.preprocessing

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        crops = [load_image(bytes(row[0]), rule, limits) for row in inputs[INPUT_NAME]]
        return {OUTPUT_NAME: classifier.predict(np.stack(crops))}

    return infer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help=".onnx file or model folder")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=0,
        help="dynamic batcher wait for more requests (Triton's default 0: batch what is queued)",
    )
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--workspace",
        help="a folder to create for PyTriton's sockets and model store (default: a temporary one)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    classifier = ModelSession.from_path(
        args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads
    )
    classifier.warm_up(batch_sizes=sorted({1, args.max_batch_size}), rounds=2)
    num_classes = classifier.info.num_classes
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        log_verbose=0,
        # Triton waits this long for open connections at shutdown (default 30 s).
        exit_timeout_secs=5,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=build_infer(classifier, Limits()),
            inputs=[Tensor(name=INPUT_NAME, dtype=bytes, shape=(1,))],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(num_classes,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
