"""`eluserve bench`: the service against a naive server, PyTriton and the fastest raw engine (the limit).

    .venv/bin/eluserve bench                      # ≈ 10 min on 2 cores: loadgen levels, then wrk
    .venv/bin/eluserve bench --quick              # smoke run: seconds per server
    .venv/bin/eluserve bench --servers service --client wrk --wrk-concurrency 16,64,256
    .venv/bin/eluserve bench --servers service --client wrk --wrk-concurrency 16,32 --repeat 3
    .venv/bin/eluserve bench --servers service --profile --service-env ELUSERVE_MAX_LATENCY_MS=50

Everything runs on 127.0.0.1 on free ports and is stopped afterwards. Each server gets the same
closed-loop load (`load_tests.loadgen`) at each concurrency (default 1, 8, 32, 64; 3 s warm-up, then
15 s measured), every request one 32×32 CIFAR-10 JPEG from the shared zip, the same bytes for every
server, decoded server-side by all of them with `eluserve.core.preprocessing`:
- service: `bentoml serve .` with the configured settings (plus `--service-env`), `POST /classify`;
- naive: `load_tests.naive_server`, one inference per request, no batching, `POST /classify`;
- triton: `load_tests.triton_server`, PyTriton with Triton's dynamic batcher; the JPEG travels as a
  BYTES tensor and is decoded in the inference callable;
- the limit: the fastest raw in-process engine (`eluserve.core.engines`: ONNX Runtime fp32, OpenVINO fp32,
  and OpenVINO bf16 where the CPU and the model card allow it) at its best batch size, among the
  engines at the service's precision, fed already-decoded crops, measured while no server runs; each
  engine in both shapes that use every core, one session of every core's threads and one one-thread
  session per core at once (the service's workers run the second).

The service is also driven by wrk (`load_tests.wrk`, the native client: about 0.1 core where the Python
load generator takes most of one of the two cores it measures on), for both request kinds: `/classify`
with one image and `/classify_batch` with 16, at 1, 16, 64 and 256 connections, `--repeat` times over
(default once). Only 2xx answers count as served images; every other answer is reported by status, 429s
included. Each wrk run is held against the limit measured again, in the configuration the initial sweep
chose (engine, precision, shape, batch) for `--bracket-seconds` (default 2), right before and right
after it while the server is idle: this host's speed drifts by 10-15 % within minutes, and the served
figure moves with it, so a ratio to the sweep's figure from minutes earlier would measure the drift as
much as the service. Over the repeated runs the report gives min / median / max and the spread of both
the served figure and that ratio.

Writes `bench.md` (the table, the goal ratios, cold starts, CPU by process), `bench.json` and
`bench.png` to `--out` (default runs/bench/), and server logs under `logs/`. With `--profile`, py-spy
samples the service during its highest concurrency level (`profile-service.svg` and a digest).
The client shares the machine's cores with the server; the table reports the CPU both used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy modules load only when the command runs, not for `eluserve --help`
    import numpy as np
    import psutil

    from eluserve.core.engines import Engine
    from load_tests.fixtures import Attachment
    from load_tests.loadgen import Workload
    from load_tests.report import RawPoint, ServerRun
    from load_tests.servers import ServerProcess

SERVERS = ("service", "naive", "triton")
CLIENTS = ("loadgen", "wrk")
DEFAULT_OUT = Path("runs/bench")
#: The raw engines measured for the limit: (engine, precision).
RAW_ENGINES = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; the defaults are the full run (≈ 5 minutes on 2 cores)."""

    #: .onnx file or model folder; None: the model the service's settings name.
    model: Path | None = None
    out: Path = DEFAULT_OUT
    servers: tuple[str, ...] = SERVERS
    concurrencies: tuple[int, ...] = (1, 8, 32, 64)
    #: Measured seconds per level, after `warmup` unmeasured seconds at the same concurrency.
    seconds: float = 15.0
    warmup: float = 3.0
    #: Distinct CIFAR JPEGs the clients cycle through.
    images: int = 64
    raw_batch_sizes: tuple[int, ...] = (1, 8, 16, 32, 64, 128)
    raw_seconds: float = 2.0
    p99_budget_ms: float = 250.0
    #: Extra environment for the service (ELUSERVE_* settings), for experiments.
    service_env: Mapping[str, str] = field(default_factory=dict)
    triton_python: str | None = None
    profile: bool = False
    ready_timeout_s: float = 300.0
    cifar_zip: Path | None = None
    #: Which clients drive the service: the Python closed-loop load generator and/or wrk.
    clients: tuple[str, ...] = CLIENTS
    #: wrk connection counts, per request kind; seconds per wrk run; images per /classify_batch.
    wrk_concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    wrk_seconds: float = 10.0
    wrk_batch_images: int = 16
    #: Seconds the limit is measured for right before and right after each wrk run.
    bracket_seconds: float = 2.0
    #: Passes over the wrk levels against the same server, for their spread.
    repeat: int = 1

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """Seconds per server: a smoke run of the tooling, not a measurement."""
        values: dict[str, Any] = {
            "concurrencies": (1, 4),
            "seconds": 1.0,
            "warmup": 0.3,
            "images": 8,
            "raw_batch_sizes": (1, 16),
            "raw_seconds": 0.2,
            "wrk_concurrencies": (1, 4),
            "wrk_seconds": 1.0,
            "bracket_seconds": 0.2,
        }
        return cls(**{**values, **overrides})


@dataclass
class BenchResult:
    config: BenchConfig
    runs: dict[str, ServerRun]
    raw: list[RawPoint]
    markdown: str

    @property
    def failed(self) -> bool:
        return any(run.failed for run in self.runs.values())


def raw_engines(
    model_file: Path, info: Any, engines: Sequence[tuple[str, str]] = RAW_ENGINES
) -> tuple[dict[tuple[str, str, int], list[Engine]], dict[str, str]]:
    """The raw `engines` (engine, precision) that load here, keyed (engine, precision, sessions), each in
    both shapes that use every core: one session of every core's threads, and one one-thread session
    per core run at once (the service's workers run the second); and why the others do not load."""
    from eluserve.core.engines import OpenVinoEngine, OrtEngine, require_precision
    from eluserve.core.session import CPU, available_cores

    cores = available_cores()
    shapes = [(1, cores), *([(cores, 1)] if cores > 1 else [])]
    loaded: dict[tuple[str, str, int], list[Engine]] = {}
    skipped: dict[str, str] = {}
    for engine, precision in engines:
        try:
            require_precision(info, precision)
            for sessions, threads in shapes:
                loaded[engine, precision, sessions] = [
                    OrtEngine.create(model_file, [CPU], threads)
                    if engine == "onnxruntime"
                    else OpenVinoEngine.create(model_file, threads, precision)
                    for _ in range(sessions)
                ]
        except Exception as exc:  # an engine that cannot run here is reported, the others measured
            skipped[f"{engine} {precision}"] = f"{type(exc).__name__}: {exc}"
    return loaded, skipped


def measure_raw(
    loaded: Mapping[tuple[str, str, int], Sequence[Engine]],
    crops: np.ndarray,
    batch_sizes: Sequence[int],
    seconds: float,
) -> list[RawPoint]:
    """The in-process limits: each engine and shape on every core, real crops tiled to each batch size."""
    from eluserve.core.engines import measure_parallel
    from eluserve.core.throughput import Throughput
    from load_tests.report import RawPoint

    points = []
    for (engine, precision, sessions), shape in loaded.items():
        for size in batch_sizes:
            wall, cpu = time.perf_counter(), time.process_time()
            images_per_second = measure_parallel(shape, tiled(crops, size), seconds)
            cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
            throughput = Throughput(size, images_per_second, size / images_per_second)
            points.append(RawPoint(throughput, 1000 * cores / images_per_second, engine, precision, sessions))
    return points


def tiled(crops: np.ndarray, size: int) -> np.ndarray:
    """A batch of `size` real crops, cycling through them."""
    import numpy as np

    return crops[np.arange(size) % len(crops)]


def limit_point(raw: Sequence[RawPoint], precision: str) -> RawPoint | None:
    """The fastest raw engine at its best batch, among those at the precision the service runs."""
    return max(
        (point for point in raw if point.precision == precision),
        key=lambda point: point.throughput.images_per_second,
        default=None,
    )


@dataclass(frozen=True)
class LimitProbe:
    """The limit's configuration (engine, precision, shape, batch) kept loaded after the sweep, to be
    measured again around each wrk run: the host's speed drifts within minutes, so each run is held
    against the limit of its own minutes. Idle sessions use no CPU while the servers run."""

    engines: Sequence[Engine]
    batch: np.ndarray
    seconds: float

    def __call__(self) -> float:
        """The limit's images/s now, over about `seconds`."""
        from eluserve.core.engines import measure_parallel

        return measure_parallel(self.engines, self.batch, self.seconds)


def _run_wrk(
    config: BenchConfig,
    url: str,
    uploads: Sequence[Attachment],
    run: ServerRun,
    probe: Callable[[], float] | None,
    server_processes: Callable[[], Sequence[psutil.Process]],
) -> None:
    """wrk against /classify (one image) and /classify_batch (`wrk_batch_images`), each count, `repeat`
    passes over them, with the limit measured (`probe`) between runs once the server is quiet. One
    measurement lies right after one run and right before the next, so it brackets both: the runs
    are not stretched apart by twice the probe's seconds, which would give the host more time to move."""
    from load_tests.fixtures import multipart
    from load_tests.report import WrkLevel
    from load_tests.wrk import run_wrk, wait_quiet

    def limit_now() -> float | None:
        if probe is None:
            return None
        wait_quiet(server_processes())
        return probe()

    batch = [uploads[i % len(uploads)] for i in range(config.wrk_batch_images)]
    kinds = (
        (url + "/classify", multipart("image", uploads[:1]), 1),
        (url + "/classify_batch", multipart("images", batch), len(batch)),
    )
    before = limit_now()
    for repetition in range(1, config.repeat + 1):
        for target, (body, content_type), images in kinds:
            for connections in config.wrk_concurrencies:
                result = run_wrk(
                    target,
                    body,
                    content_type,
                    connections=connections,
                    duration_s=config.wrk_seconds,
                    images_per_request=images,
                    timeout_s=30.0,
                )
                after = limit_now()
                level = WrkLevel(result, before, after, repetition)
                run.wrk.append(level)
                before = after
                refused = {status: n for status, n in result.statuses.items() if not 200 <= status < 300}
                bracket = (
                    ""
                    if level.ratio is None
                    else f", limit {level.limit_before:.0f} → {level.limit_after:.0f} (÷ {level.ratio:.3f})"
                )
                _progress(
                    f"{run.name}: wrk {level.endpoint} c={connections} run {repetition}/{config.repeat}: "
                    f"{result.images_per_s:.1f} img/s served{bracket}, "
                    f"p99 {result.latency_ms.get(99.0, 0):.1f} ms, non-2xx {refused or 0}"
                )


def _served_by(url: str) -> str:
    """Engine, execution provider and precision, as the service's `GET /model` reports them."""
    import httpx

    document = httpx.get(url + "/model", timeout=30.0).json()
    return f"{document.get('engine')} {document.get('execution_provider')} {document.get('precision')}"


def _classify_workload(url: str, uploads: Sequence[Attachment]) -> Workload:
    from load_tests.fixtures import multipart
    from load_tests.loadgen import Request, Workload

    requests = []
    for upload in uploads:
        body, content_type = multipart("image", [upload])
        requests.append(Request(body, {"Content-Type": content_type}))
    return Workload(url + "/classify", requests)


def triton_request(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 inference request carrying `data` as a BYTES tensor [1, 1] (binary extension),
    asking for the probabilities as JSON, the same text format the service answers in."""
    from eluserve.core.contract import INPUT_NAME, OUTPUT_NAME

    blob = len(data).to_bytes(4, "little") + data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": False}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + blob, headers


def _triton_workload(url: str, uploads: Sequence[Attachment]) -> Workload:
    from load_tests.loadgen import Request, Workload
    from load_tests.servers import TRITON_MODEL_PATH

    return Workload(
        url + TRITON_MODEL_PATH + "/infer", [Request(*triton_request(upload.data)) for upload in uploads]
    )


def _answered_label(key: str, workload: Workload, labels: Sequence[str]) -> str:
    """Send the workload's first request once; the top-1 label the server answers."""
    import httpx

    request = workload.requests[0]
    response = httpx.post(workload.url, content=request.body, headers=dict(request.headers), timeout=60.0)
    if response.status_code != 200:
        raise RuntimeError(f"{key} answered {response.status_code} to a valid image: {response.text[:300]}")
    answer = response.json()
    if key == "triton":
        probabilities = answer["outputs"][0]["data"]
        return labels[max(range(len(probabilities)), key=probabilities.__getitem__)]
    return str(answer["label"])


def _bench_server(
    key: str,
    config: BenchConfig,
    model_file: Path,
    uploads: Sequence[Attachment],
    expected_label: str,
    labels: Sequence[str],
    max_batch_size: int,
    probe: Callable[[], float] | None,
) -> ServerRun:
    from load_tests import profiling, servers
    from load_tests.loadgen import run_level
    from load_tests.report import ServerRun

    run = ServerRun(key)
    logs = config.out / "logs"
    server: ServerProcess
    try:
        if key == "service":
            server = servers.start_service(model_file, logs, config.service_env)
        elif key == "naive":
            server = servers.start_naive(model_file, logs)
        else:
            python = servers.triton_python(config.triton_python)
            server = servers.start_triton(model_file, logs, python, max_batch_size)
    except servers.ServerUnavailable as exc:
        run.problem = str(exc)
        _progress(f"{run.name}: unavailable: {exc}")
        return run
    try:
        run.cold_start_s = server.wait_ready(config.ready_timeout_s)
        _progress(f"{run.name}: ready after {run.cold_start_s:.1f} s")
        if key == "service":
            run.served_by = _served_by(server.url)
        if key == "triton":
            workload = _triton_workload(server.url, uploads)
        else:
            workload = _classify_workload(server.url, uploads)
        answered = _answered_label(key, workload, labels)
        if answered != expected_label:
            raise RuntimeError(
                f"{key} classifies the first payload as {answered!r}, the in-process session as "
                f"{expected_label!r}: the servers do not run the same model and preprocessing"
            )
        top = max(config.concurrencies)
        for concurrency in config.concurrencies if "loadgen" in config.clients or key != "service" else ():
            recording = None
            if config.profile and key == "service" and concurrency == top:
                recording = profiling.record(
                    server.process.pid, config.warmup + config.seconds, config.out, key
                )
            level = run_level(workload, concurrency, config.seconds, config.warmup, server.processes())
            if recording is not None:
                recording.wait(timeout=config.warmup + config.seconds + 60)
                run.profile = recording.raw
            run.levels.append(level)
            _progress(
                f"{run.name}: c={concurrency}: {level.images_per_second:.1f} img/s, "
                f"p99 {level.percentile_ms(99):.1f} ms, {level.error_count} errors"
            )
        if key == "service" and "wrk" in config.clients:
            _run_wrk(config, server.url, uploads, run, probe, server.processes)
    except Exception as exc:  # one failing server is reported; the others are still measured
        run.problem = f"{type(exc).__name__}: {exc}"
        run.failed = True
        _progress(f"{run.name}: failed: {run.problem}")
    finally:
        server.stop()
    return run


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_bench(config: BenchConfig) -> BenchResult:
    """Measure everything `config` names, one server at a time, and write the reports."""
    import numpy as np

    from eluserve.core.contract import read_model_info
    from eluserve.core.preprocessing import load_image
    from eluserve.core.session import CPU, ModelSession, available_cores
    from eluserve.service.config import load_settings
    from load_tests import fixtures, profiling, report
    from load_tests.loadgen import busy_seconds
    from load_tests.wrk import WrkError

    unknown = sorted(set(config.servers) - set(SERVERS))
    if unknown:
        raise ValueError(f"unknown servers {unknown}; choose from {list(SERVERS)}")
    settings = load_settings({**os.environ, **config.service_env})
    model_file = config.model or settings.model_file()
    info = read_model_info(model_file)
    uploads = fixtures.cifar_jpegs(config.images, config.cifar_zip or fixtures.CIFAR_ZIP)
    crops = np.stack([load_image(u.data, info.preprocessing, settings.limits()) for u in uploads])
    reference = ModelSession.from_path(model_file, providers=[CPU], intra_op_threads=available_cores())
    expected_label = reference.classify([crops[0]], top_k=1)[0]["label"]
    del reference  # its threads would compete with the servers
    config.out.mkdir(parents=True, exist_ok=True)

    _progress(f"raw engines on {info.tag}: batch sizes {list(config.raw_batch_sizes)}")
    loaded, raw_skipped = raw_engines(model_file, info)
    raw_started, raw_cpu, raw_machine = time.perf_counter(), time.process_time(), busy_seconds()
    raw = measure_raw(loaded, crops, config.raw_batch_sizes, config.raw_seconds)
    raw_wall = time.perf_counter() - raw_started
    raw_other = max(0.0, busy_seconds() - raw_machine - (time.process_time() - raw_cpu)) / raw_wall
    limit = limit_point(raw, settings.precision)
    raw_best = limit.throughput if limit else None
    probe = (
        None
        if limit is None
        else LimitProbe(
            loaded[limit.engine, limit.precision, limit.sessions],
            tiled(crops, limit.throughput.batch_size),
            config.bracket_seconds,
        )
    )
    del loaded  # only the limit's sessions are kept (in `probe`), idle while the servers run
    if limit is not None:
        _progress(
            f"raw limit: {limit.name}, {limit.throughput.images_per_second:.1f} img/s at batch "
            f"{limit.throughput.batch_size}"
        )
    if "wrk" in config.clients and "service" in config.servers:
        import shutil

        if shutil.which("wrk") is None:
            raise WrkError("wrk is not installed (apt-get install -y wrk), or run with --client loadgen")

    runs = {
        key: _bench_server(
            key, config, model_file, uploads, expected_label, info.labels, settings.max_batch_size, probe
        )
        for key in config.servers
    }
    ordered = [runs[key] for key in SERVERS if key in runs]
    top = max(config.concurrencies)
    goal_ratios = report.ratios(runs, raw_best, top, config.p99_budget_ms, limit.name if limit else "engine")
    service_run = runs.get("service")
    wrk_summary = report.summarize(service_run.wrk) if service_run else []
    plotted = report.plot(ordered, raw_best, config.p99_budget_ms, config.out / "bench.png", wrk_summary)

    # With `--client wrk` and only the service, the closed-loop load generator measured nothing: its
    # table, goals and CPU split would only say "not run" and "not measured".
    closed_loop_ran = any(run.levels for run in ordered)
    closed_loop = [
        f"Closed loop, {config.warmup:g} s warm-up + {config.seconds:g} s measured per level; each "
        f"request one 32×32 CIFAR-10 JPEG ({len(uploads)} distinct, ≈ "
        f"{sum(len(u.data) for u in uploads) / len(uploads):.0f} B), decoded server-side by every server. "
        f"Latency is client-side. Server CPU ms/img: CPU time all server processes spent per image, "
        "which other work on the machine disturbs least. CPU columns: cores busy, for the load "
        "generator, all server processes, and everything else on the machine (other work shares the "
        "cores and skews that level).",
        report.table(ordered, [limit] if limit else []),
        "## Goals",
        report.ratio_table(goal_ratios),
    ]
    sections = [
        f"# eluserve bench: {info.tag} on {available_cores()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        *(closed_loop if closed_loop_ran else []),
        "## Cold start (process start → ready)",
        "\n".join(
            f"- {run.name}: {run.cold_start_s:.1f} s" if run.cold_start_s is not None else f"- {run.name}: —"
            for run in ordered
        ),
        *(["## CPU by process", report.cpu_table(ordered, top)] if closed_loop_ran else []),
        "## Raw engines by batch size",
        f"Other work on the machine used {raw_other:.2f} cores meanwhile. The limit is the fastest engine "
        f"at the service's precision ({settings.precision})"
        + "".join(f"; {name} not measured: {why}" for name, why in raw_skipped.items())
        + ".\n\n"
        + report.raw_table(raw),
    ]
    if service_run is not None and service_run.wrk:
        limit_text = (
            "No limit was measured (no raw engine at the service's precision loaded)"
            if limit is None
            else f"Limit before / after: raw {limit.name} at batch {limit.throughput.batch_size}, the "
            f"sweep's limit, measured again for {config.bracket_seconds:g} s once the server is quiet, "
            "right before and right after each run (one measurement between two runs is the after of "
            "the first and the before of the second); ÷ limit: served ÷ the mean of the two; drift: "
            "after ÷ before. Bracketed because this host's speed drifts by 10-15 % within minutes and "
            "the served figure with it: against the sweep's figure from minutes earlier the ratio would "
            "measure the drift too. A drift far from 1 marks a run during which the host moved"
        )
        wrk_at = sections.index("## Cold start (process start → ready)")
        sections[wrk_at:wrk_at] = [
            f"## wrk (native client), service on {service_run.served_by}",
            f"-t1, {config.wrk_seconds:g} s per run, {config.repeat} pass(es) over the levels, keep-alive "
            "connections, one fixed multipart body per endpoint. Served img/s counts 2xx answers only; "
            f"every other answer is listed by status. {limit_text}.\n\n" + report.wrk_table(service_run.wrk),
            f"### Over {config.repeat} run(s)",
            "Spread: max ÷ min − 1, of the served figure and, separately, of the bracketed ratio (goal "
            f"≤ {100 * report.SPREAD_GOAL:g} %, judged from {report.SPREAD_RUNS} runs). The ratio goal is "
            "judged on the median.\n\n" + report.wrk_summary_table(wrk_summary),
        ]
    served_by = runs["service"].served_by if "service" in runs else "—"
    sections.insert(
        2 if closed_loop_ran else 1,
        f"Service settings: {settings.worker_count()} worker(s) × {settings.threads_per_worker()} inference "
        f"threads, engine {settings.engine} (served by {served_by}), "
        f"batches ≤ {settings.max_batch_size}, "
        f"max latency {settings.max_latency_ms} ms, max concurrency {settings.max_concurrency}"
        + "".join(f"; `{k}={v}`" for k, v in config.service_env.items()),
    )
    for run in ordered:
        if run.profile is not None and run.profile.is_file():
            sections += [f"## Where {run.name}'s time goes (py-spy, c={top})", profiling.digest(run.profile)]
    problems = [f"- {run.name}: {run.problem}" for run in ordered if run.problem]
    if problems:
        sections += ["## Problems", "\n".join(problems)]
    if not plotted:
        sections.append("(no plot: matplotlib is not installed; it comes with the train extra)")
    markdown = "\n\n".join(sections) + "\n"
    (config.out / "bench.md").write_text(markdown)
    (config.out / "bench.json").write_text(
        json.dumps(
            {
                "model": info.tag,
                "config": {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()},
                "raw": [
                    {
                        **dataclasses.asdict(p.throughput),
                        "cpu_ms_per_image": p.cpu_ms_per_image,
                        "engine": p.engine,
                        "precision": p.precision,
                        "sessions": p.sessions,
                    }
                    for p in raw
                ],
                "limit": None
                if limit is None
                else {"engine": limit.name, **dataclasses.asdict(limit.throughput)},
                "servers": {
                    key: {
                        "cold_start_s": run.cold_start_s,
                        "problem": run.problem,
                        "served_by": run.served_by,
                        "levels": [level.to_dict() for level in run.levels],
                        "wrk": [level.to_dict() for level in run.wrk],
                        "wrk_summary": [summary.to_dict() for summary in report.summarize(run.wrk)],
                    }
                    for key, run in runs.items()
                },
                "ratios": [dataclasses.asdict(r) for r in goal_ratios],
            },
            indent=2,
        )
        + "\n"
    )
    return BenchResult(config, runs, raw, markdown)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(names) - set(SERVERS))
    if not names or unknown:
        choices = ",".join(SERVERS)
        raise argparse.ArgumentTypeError(f"choose servers from {choices}, got {text!r}")
    return names


def _clients(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or set(names) - set(CLIENTS):
        raise argparse.ArgumentTypeError(f"choose clients from {','.join(CLIENTS)}, got {text!r}")
    return names


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; print the report. Exit 1 if a server failed (not merely unavailable)."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "model": Path(args.model) if args.model else None,
            "out": Path(args.out),
            "servers": args.servers,
            "concurrencies": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "images": args.images,
            "p99_budget_ms": args.p99_budget_ms,
            "service_env": dict(args.service_env),
            "triton_python": args.triton_python,
            "profile": args.profile,
            "cifar_zip": Path(args.cifar_zip) if args.cifar_zip else None,
            "clients": args.client,
            "wrk_concurrencies": args.wrk_concurrency,
            "wrk_seconds": args.wrk_seconds,
            "bracket_seconds": args.bracket_seconds,
            "repeat": args.repeat,
        }.items()
        if value is not None
    }
    config = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_bench(config)
    print(result.markdown)
    print(f"wrote {config.out / 'bench.md'}, bench.json, bench.png", file=sys.stderr)
    return 1 if result.failed else 0


def register(subparsers: Any) -> None:
    """Add `bench` to the `eluserve` parser (imports nothing heavy until it runs)."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the service vs a naive server, PyTriton and the raw ORT session",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    bench.add_argument("--model", help="an .onnx file or model folder (default: what the service serves)")
    bench.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: runs/bench)")
    bench.add_argument("--quick", action="store_true", help="seconds-long smoke run (c=1,4, 1 s levels)")
    bench.add_argument(
        "--servers",
        type=_names,
        help=f"comma-separated, of {','.join(SERVERS)} (default: all)",
    )
    bench.add_argument("--concurrency", type=_ints, help="comma-separated levels (default 1,8,32,64)")
    bench.add_argument("--seconds", type=float, help="measured seconds per level (default 15)")
    bench.add_argument("--warmup", type=float, help="unmeasured seconds before each level (default 3)")
    bench.add_argument("--images", type=int, help="distinct CIFAR JPEGs cycled (default 64)")
    bench.add_argument("--p99-budget-ms", type=float, help="p99 goal and Triton comparison budget (250)")
    bench.add_argument(
        "--service-env",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service, e.g. ELUSERVE_MAX_LATENCY_MS=50 (repeatable)",
    )
    bench.add_argument(
        "--triton-python", help="interpreter with nvidia-pytriton (default: .cache/triton-venv)"
    )
    bench.add_argument("--profile", action="store_true", help="py-spy the service at the top concurrency")
    bench.add_argument("--cifar-zip", help="the CIFAR-10 JPEG zip (default: ../shared/data/cifar10-jpeg)")
    bench.add_argument(
        "--client",
        type=_clients,
        help="comma-separated clients for the service: loadgen (Python), wrk (native) (default: both)",
    )
    bench.add_argument(
        "--wrk-concurrency", type=_ints, help="wrk connection counts per endpoint (default 1,16,64,256)"
    )
    bench.add_argument("--wrk-seconds", type=float, help="seconds per wrk run (default 10)")
    bench.add_argument(
        "--bracket-seconds",
        type=float,
        help="seconds the limit is measured for right before and after each wrk run (default 2)",
    )
    bench.add_argument(
        "--repeat",
        type=_positive,
        help="passes over the wrk levels against the same server, for their spread (default 1)",
    )
    bench.set_defaults(func=cmd_bench)
