"""GPU check: serve on ONNX Runtime's CUDA provider and print provider, parity with CPU and images/s.

One command on a machine with an NVIDIA GPU (prepared for a lent H200):

    bash load_tests/gpu_check.sh          # installs onnxruntime-gpu from .whl/ pieces if needed
    python -m load_tests.gpu_check        # when onnxruntime-gpu is already installed

Steps, each printed: the providers ORT offers; a CUDA session on the default model and the providers
it really uses; parity of CUDA vs CPU logits on shared CIFAR-10 images (max |diff| against the
contract's `parity_tolerance`, top-1 agreement); raw CUDA session images/s at a few batch sizes beside
the CPU's; then a real `bentoml serve` with `ELUSERVE_PROVIDERS=CUDAExecutionProvider`, whose
`/model` must report CUDA, under concurrent `/classify_batch` load, once per worker count (`--workers`,
default 2 and the cores the client leaves: on a GPU host the CPU work of HTTP, multipart and decoding,
not the device, bounds a few workers), and at each worker count once per device batching
mode (`--device-batching`, default both): `worker`, each worker batching its own requests on a CUDA
session of its own, and `shared`, one device host per server batching every worker's crops on one
session (`eluserve.service.device.host`). The load comes from several client processes
(`--client-processes`), since one Python client process tops out far below a GPU host. Each level
prints images/s, its ratio to the raw CUDA session's best, and the mean batch size and workers per
device batch read from the server's /metrics; a table at the end puts the modes side by side. Exits
non-zero when CUDA is not really used or parity fails. Runs in about 5 minutes (4 server levels of
2 000 64-image requests); CI never runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from eluserve.classify.cli import positive_int, positive_ints
from eluserve.core.contract import INPUT_NAME, LOGITS_NAME, parity_tolerance, resolve_model_file
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import CPU, CUDA, ModelSession, available_cores
from eluserve.core.throughput import measure_session
from eluserve.service.config import DEVICE_BATCHING, SHARED, WORKER
from load_tests.fixtures import CIFAR_ZIP, cifar_jpegs
from load_tests.servers import REPO_ROOT, start_service

#: TF32 rounding may flip a near-tie between two classes; 1 image in 100 would be a real fault.
TF32_MIN_AGREEMENT = 0.99


async def _serve_load(url: str, files: list[bytes], requests: int, concurrency: int) -> int:
    """Send `requests` /classify_batch calls of len(files) images each, `concurrency` at a time; the
    images classified."""
    limits = httpx.Limits(max_connections=concurrency)
    form = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                response = await client.post("/classify_batch", files=form)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests * len(files)


def _client_process(url: str, files: list[bytes], requests: int, concurrency: int, start: Any) -> int:
    start.wait()  # every client process begins with the clock, after its start-up and imports
    return asyncio.run(_serve_load(url, files, requests, concurrency))


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def serve_load(url: str, files: list[bytes], requests: int, concurrency: int, processes: int) -> float:
    """Images/s of /classify_batch from `processes` client processes sharing `requests` and
    `concurrency`: one Python client process tops out at a few thousand images/s, far below what a GPU
    host serves, so the client is spread over processes as the service is over workers."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        shares = [
            (share, clients)
            for share, clients in zip(split(requests, processes), split(concurrency, processes), strict=True)
            if share
        ]
        start = manager.Barrier(len(shares) + 1)
        futures = [pool.submit(_client_process, url, files, n, max(1, c), start) for n, c in shares]
        start.wait()
        began = time.perf_counter()
        images = sum(future.result() for future in futures)
        return images / (time.perf_counter() - began)


def batch_shape(url: str) -> tuple[float, float]:
    """Mean images per device batch and mean workers per device batch (shared mode; 0 otherwise), from
    the server's /metrics since it started."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("eluserve_batch_size_", "eluserve_device_batch_workers_")):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value

    def mean(metric: str) -> float:
        count = totals.get(f"{metric}_count", 0.0)
        return totals.get(f"{metric}_sum", 0.0) / count if count else 0.0

    return mean("eluserve_batch_size"), mean("eluserve_device_batch_workers")


def device_modes(value: str) -> list[str]:
    """`--device-batching`: comma-separated `worker` and/or `shared`."""
    modes = [mode.strip() for mode in value.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in DEVICE_BATCHING]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"use worker and/or shared, comma-separated; got {value!r}")
    return modes


def print_table(
    rates: dict[tuple[int, str], float], workers: list[int], modes: list[str], raw: float
) -> None:
    """The served images/s per worker count and device batching mode, side by side."""
    print(f"\n{'workers':>7} " + " ".join(f"{mode + ' img/s':>14} {'÷ raw':>6}" for mode in modes))
    for count in workers:
        cells = [f"{rates[count, mode]:>14.0f} {rates[count, mode] / raw:>6.3f}" for mode in modes]
        ratio = ""
        if (count, WORKER) in rates and (count, SHARED) in rates:
            ratio = f"   shared ÷ worker {rates[count, SHARED] / rates[count, WORKER]:.2f}"
        print(f"{count:>7} " + " ".join(cells) + ratio)


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
    parser.add_argument(
        "--workers",
        type=positive_ints,
        default=None,
        help="comma-separated service worker counts to measure (default: 2 and the cores left after the "
        "client processes: on a GPU host each worker decodes and feeds the one device)",
    )
    parser.add_argument(
        "--client-processes",
        type=positive_int,
        default=max(1, available_cores() // 4),
        help="load-generating processes (default: a quarter of the cores)",
    )
    parser.add_argument(
        "--device-batching",
        type=device_modes,
        default=[WORKER, SHARED],
        help="ELUSERVE_DEVICE_BATCHING modes measured at each worker count (default: worker,shared)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=None,
        help="ELUSERVE_MAX_BATCH_SIZE of the served levels (default: the service's, 64); a shared device "
        "host's batches hold up to this × workers images (ELUSERVE_DEVICE_MAX_BATCH_SIZE's default)",
    )
    parser.add_argument("--concurrency", type=positive_int, default=64, help="requests in flight in all")
    parser.add_argument("--requests", type=positive_int, default=2000, help="64-image requests per level")
    args = parser.parse_args(argv)
    workers = args.workers or sorted({2, max(2, available_cores() - args.client_processes)})

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

    raw_best = 0.0
    for batch_size in (64, 256, 1024):
        images = np.resize(batch, (batch_size, *batch.shape[1:]))
        g = measure_session(gpu.session, images, seconds=2.0)
        raw_best = max(raw_best, g.images_per_second)
        e = measure_session(exact.session, images, seconds=2.0)
        c = measure_session(cpu.session, images, seconds=1.0)
        print(
            f"raw session batch {batch_size:>5}: CUDA TF32 {g.images_per_second:>9.0f} img/s "
            f"({1000 * g.batch_latency_seconds:.2f} ms/batch), CUDA fp32 {e.images_per_second:>9.0f} img/s, "
            f"CPU {c.images_per_second:>7.0f} img/s"
        )

    files = [u.data for u in uploads[:64]]
    providers = set()
    rates: dict[tuple[int, str], float] = {}
    for count in workers:
        for mode in args.device_batching:
            level = f"service, {count} workers, {mode} device batching"
            with tempfile.TemporaryDirectory() as logs:
                env = {
                    "ELUSERVE_PROVIDERS": f"{CUDA},{CPU}",
                    "ELUSERVE_WORKERS": str(count),
                    "ELUSERVE_DEVICE_BATCHING": mode,
                }
                if args.max_batch_size:
                    env["ELUSERVE_MAX_BATCH_SIZE"] = str(args.max_batch_size)
                server = start_service(args.model, Path(logs), env=env)
                try:
                    cold = server.wait_ready(timeout=240)
                    provider = httpx.get(f"{server.url}/model", timeout=10).json()["execution_provider"]
                    providers.add(provider)
                    print(f"{level}: ready in {cold:.1f} s, /model execution_provider: {provider}")
                    serve_load(
                        server.url, files, max(args.concurrency, args.requests // 10), args.concurrency, 1
                    )
                    rate = serve_load(
                        server.url, files, args.requests, args.concurrency, args.client_processes
                    )
                    rates[count, mode] = rate
                    batch, merged = batch_shape(server.url)
                    print(
                        f"{level}, /classify_batch (64 images, {args.concurrency} in flight from "
                        f"{args.client_processes} client processes): {rate:.0f} img/s, "
                        f"{rate / raw_best:.3f} of the raw CUDA session's best ({raw_best:.0f} img/s); "
                        f"mean device batch {batch:.1f} images"
                        + (f" from {merged:.2f} workers" if merged else "")
                        + "; goal 50 000 img/s"
                    )
                finally:
                    server.stop()
    print_table(rates, workers, args.device_batching, raw_best)
    ok = (
        results["fp32"][0] <= tolerance
        and results["fp32"][1] == 1.0
        and results["TF32 (served)"][1] >= TF32_MIN_AGREEMENT
        and providers == {CUDA}
    )
    print("GPU check " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
