"""GPU check: serve on ONNX Runtime's CUDA provider and print provider, parity with CPU and images/s.

One command on a machine with an NVIDIA GPU (prepared for the lent H200, see ../shared/GPU.md):

    bash load_tests/gpu_check.sh          # installs onnxruntime-gpu from .whl/ pieces if needed
    python -m load_tests.gpu_check        # when onnxruntime-gpu is already installed

Steps, each printed: the providers ORT offers; a CUDA session on the default model and the providers
it really uses; parity of CUDA vs CPU logits on shared CIFAR-10 images (max |diff| against the
contract's `parity_tolerance`, top-1 agreement); raw CUDA session images/s at a few batch sizes beside
the CPU's; then a real `bentoml serve` with `ELUSERVE_PROVIDERS=CUDAExecutionProvider`, whose
`/model` must report CUDA, under concurrent `/classify_batch` load. Exits non-zero when CUDA is not
really used or parity fails. Runs in well under 5 minutes; CI never runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from eluserve.core.contract import INPUT_NAME, LOGITS_NAME, parity_tolerance, resolve_model_file
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import CPU, CUDA, ModelSession
from eluserve.core.throughput import measure_session
from load_tests.fixtures import CIFAR_ZIP, cifar_jpegs
from load_tests.servers import REPO_ROOT, start_service

#: TF32 rounding may flip a near-tie between two classes; 1 image in 100 would be a real fault.
TF32_MIN_AGREEMENT = 0.99


async def _serve_load(url: str, files: list[bytes], requests: int, concurrency: int) -> float:
    """Images/s of `requests` concurrent /classify_batch calls of len(files) images each."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                form = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
                response = await client.post("/classify_batch", files=form)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests * len(files) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_file())
    parser.add_argument("--images", type=int, default=512, help="shared CIFAR-10 images for parity")
    parser.add_argument(
        "--zip",
        type=Path,
        default=CIFAR_ZIP if CIFAR_ZIP.exists() else REPO_ROOT / ".data" / "train.zip",
        help="the shared CIFAR-10 zip (on the device: copied into .data/ and carried)",
    )
    args = parser.parse_args(argv)

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # makes the CUDA/cuDNN libraries of the nvidia-* wheels visible
    print(f"onnxruntime {ort.__version__}, available providers: {ort.get_available_providers()}")
    if CUDA not in ort.get_available_providers():
        print("FAIL: CUDAExecutionProvider is not available (install onnxruntime-gpu)", file=sys.stderr)
        return 1

    gpu = ModelSession.from_path(args.model, providers=[CUDA, CPU])
    cpu = ModelSession.from_path(args.model, providers=[CPU])
    used = gpu.session.get_providers()
    print(f"CUDA session providers in use: {used}")
    if used[0] != CUDA:
        print("FAIL: the session fell back from CUDA", file=sys.stderr)
        return 1
    # The service runs CUDA with ORT's defaults, which on Ampere and newer compute convolutions in
    # TF32 (10-bit mantissa): measured on an H200, probabilities then differ from the CPU's by up to
    # 6e-4 at 3× the throughput. So parity is checked on a full-fp32 CUDA session (use_tf32=0: the same
    # graph must compute the same numbers), and the served TF32 path must agree on the top-1 class.
    exact_session = ort.InferenceSession(
        str(resolve_model_file(args.model)), providers=[(CUDA, {"use_tf32": "0"}), CPU]
    )
    exact = ModelSession(exact_session, gpu.info)

    uploads = cifar_jpegs(args.images, args.zip)
    rule = gpu.info.preprocessing
    batch = np.stack([load_image(u.data, rule, Limits()) for u in uploads])
    cpu_logits = cpu.session.run([LOGITS_NAME], {INPUT_NAME: batch})[0]
    # The export's bar for two runs of one model (eluserve.core.contract.parity_tolerance).
    tolerance = parity_tolerance(float(np.abs(cpu_logits).max()))
    results = {}
    for name, classifier in (("fp32", exact), ("TF32 (served)", gpu)):
        logits = classifier.session.run([LOGITS_NAME], {INPUT_NAME: batch})[0]
        results[name] = (
            float(np.abs(logits - cpu_logits).max()),
            float((logits.argmax(1) == cpu_logits.argmax(1)).mean()),
        )
        print(
            f"parity CUDA {name} vs CPU on {len(batch)} images: max |logit diff| {results[name][0]:.2e} "
            f"(tolerance {tolerance:.2e}), top-1 agreement {results[name][1]:.4f}"
        )

    for batch_size in (64, 256, 1024):
        images = np.resize(batch, (batch_size, *batch.shape[1:]))
        g = measure_session(gpu.session, images, seconds=2.0)
        e = measure_session(exact.session, images, seconds=2.0)
        c = measure_session(cpu.session, images, seconds=1.0)
        print(
            f"raw session batch {batch_size:>5}: CUDA TF32 {g.images_per_second:>9.0f} img/s "
            f"({1000 * g.batch_latency_seconds:.2f} ms/batch), CUDA fp32 {e.images_per_second:>9.0f} img/s, "
            f"CPU {c.images_per_second:>7.0f} img/s"
        )

    with tempfile.TemporaryDirectory() as logs:
        server = start_service(args.model, Path(logs), env={"ELUSERVE_PROVIDERS": f"{CUDA},{CPU}"})
        try:
            cold = server.wait_ready(timeout=180)
            provider = httpx.get(f"{server.url}/model", timeout=10).json()["execution_provider"]
            print(f"service ready in {cold:.1f} s, /model execution_provider: {provider}")
            files = [u.data for u in uploads[:64]]
            rate = asyncio.run(_serve_load(server.url, files, requests=64, concurrency=16))
            print(f"service /classify_batch (64 images, 16 concurrent): {rate:.0f} img/s")
        finally:
            server.stop()
    ok = (
        results["fp32"][0] <= tolerance
        and results["fp32"][1] == 1.0
        and results["TF32 (served)"][1] >= TF32_MIN_AGREEMENT
        and provider == CUDA
    )
    print("GPU check " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
