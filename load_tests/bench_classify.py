"""`python -m load_tests bench-classify`: folder classification in-process against the fastest raw engine.

    .venv/bin/python -m load_tests bench-classify --images 10000     # make bench-classify
    .venv/bin/python -m load_tests bench-classify --engine openvino
    .venv/bin/python -m load_tests bench-classify --images 10000 --rounds 1 --runner ray  # + Ray Data

Classifies CIFAR-10 JPEGs extracted from the shared zip with `eluserve classify`'s in-process runner
(walking, reading, decoding, batching and writing rows included) on the inference engine `--engine`
chooses (default auto, as `eluserve classify`), and measures every raw fp32 engine (ONNX Runtime,
OpenVINO) on the same crops, rounds interleaved, one run. The goal: classify ≥ 0.9 × the fastest raw
engine at its best batch. `--runner ray` adds `eluserve classify --runner ray` on a local Ray (or
`--ray-address`), set against the in-process runner at the same batch size twice: as whole commands
(the model's load, or Ray's start, to the last row: what a user waits for; the issue's goal is this
ratio ≥ 0.8 on 10 000 files) and as classification alone (Ray's actor pool start included).
`--ray-head` also starts one Ray head apart from the benchmark (`ray start --head`, as a cluster user's
Ray runs before their command) and times `--runner ray --ray-address` joining it beside the command that
starts its own Ray, both set against the in-process runner of the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from eluserve.classify.cli import positive_int, positive_ints
from eluserve.classify.files import UsageError, iter_image_files
from eluserve.classify.rows import Row, RowWriter, open_text
from eluserve.classify.run import classify_files
from eluserve.classify.runners import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    LocalRunner,
    Runner,
    ServerRunner,
    quiet_http_log,
)
from eluserve.core.contract import ModelMetadata
from eluserve.core.engines import (
    AUTO,
    ENGINES,
    FP32,
    ONNXRUNTIME,
    OPENVINO,
    Engine,
    measure_parallel,
)
from eluserve.core.paths import default_model_file
from eluserve.core.session import available_cores
from load_tests.bench import raw_engines
from load_tests.fixtures import CIFAR_ZIP
from load_tests.report import shape_label

#: The share of the fastest raw engine's best img/s that classification should reach.
GOAL = 0.9

#: Batch sizes the benchmark tries on the raw session to find its best.
BENCH_BATCH_SIZES = (32, 64, 128, 256, 512)


def extract_cifar(zip_path: Path, count: int, target: Path) -> int:
    """Write `count` JPEGs spread evenly over the zip (so over all classes) to `target/<class>/`."""
    with zipfile.ZipFile(zip_path) as archive:
        names = [name for name in archive.namelist() if name.lower().endswith(".jpg")]
        step = max(1, len(names) // count)
        chosen = names[::step][:count]
        for name in chosen:
            parts = name.split("/")
            folder = target / parts[-2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / parts[-1]).write_bytes(archive.read(name))
    return len(chosen)


class FirstRowTimer:
    """A runner whose first row is timed: how long Ray takes to start its actor pool, in particular."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.first_row = 0.0

    @property
    def model(self) -> str:
        return self.runner.model

    @property
    def labels(self) -> Sequence[str]:
        return self.runner.labels

    def classify(self, paths: Iterable[str]) -> Iterator[Row]:
        started = time.perf_counter()
        rows = self.runner.classify(paths)
        for row in rows:
            self.first_row = time.perf_counter() - started
            yield row
            break
        yield from rows


def cmd_bench(args: argparse.Namespace) -> int:
    """`eluserve bench-classify`: classify img/s next to the raw session's best img/s, one run."""
    try:
        print(bench(args))
    except UsageError as exc:
        print(f"eluserve bench-classify: {exc}", file=sys.stderr)
        return 2
    return 0


def bench(args: argparse.Namespace) -> str:
    """Measure; rounds are interleaved so that drift in the machine's speed hits every figure alike.

    The raw figures are each fp32 engine alone (`eluserve.core.engines`, as the serving path creates
    them) on the same model, every core (one session of every core's threads, and one one-thread
    session per core at once), on real crops, at several batch sizes. The classify figures
    include walking, reading, decoding, batching and writing the rows. Each is set against the fastest
    raw engine's best batch (the goal) and against the raw figure of the engine classification runs on
    at the same batch size (the pipeline's own overhead), because on small inputs batch size alone
    moves img/s by tens of percent.
    """
    quiet_http_log()
    if args.ray_head and args.runner != "ray":
        raise UsageError("--ray-head times --runner ray joining a running Ray: add --runner ray")
    zip_path = Path(args.data)
    if not zip_path.is_file():
        raise UsageError(f"no CIFAR-10 JPEG zip at {zip_path}; pass --data")
    local = LocalRunner.load(args.model, threads=args.threads, engine=args.engine)
    raw_shapes = fp32_engines(Path(local.session.info.path), local.session.info)
    sizes = sorted({*BENCH_BATCH_SIZES, *args.batch_sizes})
    raw: dict[tuple[str, int], list[float]] = {(name, size): [] for name in raw_shapes for size in sizes}
    with contextlib.ExitStack() as stack:
        runners: dict[tuple[str, int], Runner] = {
            ("classify in-process", size): LocalRunner(
                local.session, local.top_k, size, args.threads, more_sessions=local.sessions[1:]
            )
            for size in args.batch_sizes
        }
        if args.server:
            server = ServerRunner(args.server, batch_size=DEFAULT_BATCH_SIZE, concurrency=args.concurrency)
            runners["classify --server", DEFAULT_BATCH_SIZE] = stack.enter_context(server)
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="eluserve-bench-"))
        sink = stack.enter_context(open_text(os.devnull, "w"))
        count = extract_cifar(zip_path, args.images, Path(folder))
        sample = itertools.islice(iter_image_files([folder], {"jpg"}), max(sizes))
        crops = np.stack([local.prepare(path)[1] for path in sample])
        batches = {size: np.resize(crops, (size, *crops.shape[1:])) for size in sizes}
        head = stack.enter_context(ray_head(available_cores())) if args.ray_head else None
        ray_keys = [RAY_KEY, *([JOINED_KEY] if head else [])] if args.runner == "ray" else []
        keys = [*runners, *ray_keys]
        runs: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
        first_rows: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
        steady: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
        commands: dict[tuple[str, int] | None, list[Command]] = {None: [], **{key: [] for key in ray_keys}}

        def classify(key: tuple[str, int], runner: Runner) -> None:
            files = iter_image_files([folder], {"jpg"})
            timed = FirstRowTimer(runner)
            summary = classify_files(files, timed, RowWriter(sink, "jsonl"))
            runs[key].append(summary.images_per_second)
            first_rows[key].append(timed.first_row)
            steady[key].append((summary.files - 1) / max(summary.seconds - timed.first_row, 1e-9))

        for _ in range(args.rounds):
            for (name, size), values in raw.items():
                values.append(measure_parallel(raw_shapes[name], batches[size], seconds=args.seconds))
            for key, runner in runners.items():
                classify(key, runner)
            if args.runner == "ray":
                commands[None].append(local_command(args, folder, sink))
                commands[RAY_KEY].append(ray_command(args, args.ray_address, RAY_KEY, folder, sink, classify))
                if head:
                    commands[JOINED_KEY].append(ray_command(args, head, JOINED_KEY, folder, sink, classify))
    median = {key: statistics.median(values) for key, values in raw.items()}
    best = max(median, key=median.__getitem__)
    # The raw figure of the engine and shape the in-process runner runs on (its sessions at once).
    served = local.session.engine + shape_label(len(local.sessions))
    info = local.session.info
    lines = [
        f"bench-classify: {count} CIFAR-10 JPEGs, model {info.tag} ({info.path}), classify on "
        f"{local.session.engine} {local.session.provider}, {len(local.sessions)} session(s) (--engine "
        f"{args.engine}), {available_cores()} cores, median of "
        f"{args.rounds} rounds",
        *(
            f"  raw {name} img/s by batch size: "
            + ", ".join(f"{size}: {median[name, size]:.0f}" for size in sizes)
            for name in raw_shapes
        ),
        f"  {f'fastest raw engine: {best[0]}, batch {best[1]}':<48} {median[best]:8.1f} img/s",
    ]
    for (name, size), values in runs.items():
        ips = statistics.median(values)
        same = median.get((served, size))
        lines.append(
            f"  {f'{name}, batch {size}':<48} {ips:8.1f} img/s   {ips / median[best]:.3f} of raw best "
            f"(goal ≥ {GOAL})" + (f", {ips / same:.3f} of raw {served} at batch {size}" if same else "")
        )
    local_key = ("classify in-process", DEFAULT_BATCH_SIZE)
    if ray_keys and local_key in runs:
        lines += ray_lines(ray_keys, commands, runs, first_rows, steady, local_key, args.ray_address)
    return "\n".join(lines)


#: The Ray runner's figures, at the CLI's default batch size: starting its own Ray (or joining
#: --ray-address), and joining the head that --ray-head started.
RAY_KEY = ("classify --runner ray", DEFAULT_BATCH_SIZE)
JOINED_KEY = ("classify --runner ray, running Ray", DEFAULT_BATCH_SIZE)


def ray_lines(
    keys: Sequence[tuple[str, int]],
    commands: dict[tuple[str, int] | None, list[Command]],
    runs: dict[tuple[str, int], list[float]],
    first_rows: dict[tuple[str, int], list[float]],
    steady: dict[tuple[str, int], list[float]],
    local_key: tuple[str, int],
    address: str | None,
) -> list[str]:
    """The Ray runner's figures, each Ray command set against the in-process runner of the same rounds."""
    local_seconds = statistics.median(command.seconds for command in commands[None])
    names = {
        RAY_KEY: f"--ray-address {address}" if address else "starting its own local Ray",
        JOINED_KEY: "--ray-address of a running Ray (--ray-head)",
    }
    lines = [
        "  command start to last row (load the model, or start or join Ray, then classify), medians: "
        f"in-process {local_seconds:.1f} s"
    ]
    for key in keys:
        mine = commands[key]
        seconds = statistics.median(command.seconds for command in mine)
        lines += [
            f"    --runner ray, {names[key]}: {seconds:.1f} s (starting or joining Ray "
            f"{statistics.median(command.start for command in mine):.1f} s of it; first row "
            f"{statistics.median(first_rows[key]):.1f} s after classifying began; leaving or shutting down "
            f"Ray after the last row {statistics.median(command.stop for command in mine):.1f} s more): "
            f"Ray ÷ in-process end to end {local_seconds / seconds:.3f}",
            f"      classify only, at batch {DEFAULT_BATCH_SIZE}: Ray ÷ in-process "
            f"{statistics.median(runs[key]) / statistics.median(runs[local_key]):.3f} (the actor pool's "
            "start included; the in-process model is loaded); from each runner's first row on (steady "
            f"state) {statistics.median(steady[key]) / statistics.median(steady[local_key]):.3f}",
        ]
    lines += [
        f"  first row after: in-process {statistics.median(first_rows[local_key]):.1f} s",
        "  per round (in-process s, then per Ray command: s, of which starting or joining Ray s): "
        + ", ".join(
            "("
            + ", ".join([f"{local.seconds:.1f}", *(f"{ray.seconds:.1f} ({ray.start:.1f})" for ray in others)])
            + ")"
            for local, *others in zip(commands[None], *(commands[key] for key in keys), strict=True)
        ),
    ]
    return lines


@dataclass(frozen=True)
class Command:
    """One `eluserve classify` as a user sees it, less the imports (done once in the benchmark)."""

    #: From the command's start to its last row.
    seconds: float
    #: Of which starting or joining Ray (0 in-process).
    start: float = 0.0
    #: Shutting down the Ray it started, or leaving the one it joined, after the last row.
    stop: float = 0.0


def local_command(args: argparse.Namespace, folder: str, sink: TextIO) -> Command:
    """The in-process command: load the model (the `--engine` choice included), classify."""
    started = time.perf_counter()
    runner = LocalRunner.load(args.model, threads=args.threads, engine=args.engine)
    classify_files(iter_image_files([folder], {"jpg"}), runner, RowWriter(sink, "jsonl"))
    return Command(time.perf_counter() - started)


def ray_command(
    args: argparse.Namespace,
    address: str | None,
    key: tuple[str, int],
    folder: str,
    sink: TextIO,
    classify: Callable[[tuple[str, int], Runner], None],
) -> Command:
    """`--runner ray`: start Ray (address None) or join it, classify, shut down or leave; the classify
    part is also recorded as `key`'s run (`classify`), set against the in-process runner's with its model
    loaded."""
    from eluserve.classify.ray_runner import RayRunner

    started = time.perf_counter()
    runner = RayRunner.load(args.model, batch_size=DEFAULT_BATCH_SIZE, engine=args.engine)
    try:
        runner.connect(address)
        connected = time.perf_counter()
        classify(key, runner)
        finished = time.perf_counter()
    finally:
        runner.close()
    return Command(finished - started, connected - started, time.perf_counter() - finished)


#: How long a Ray head may take to start on a busy machine before the benchmark gives up.
RAY_HEAD_START_SECONDS = 120.0


def free_port() -> int:
    """A TCP port nothing listens on now, for a Ray head beside any other Ray on the machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def ray_head(cpus: int) -> Iterator[str]:
    """A Ray head of `cpus` CPUs running apart from the benchmark, as a cluster user's Ray runs before
    their command; yields its address and stops it (only it) at the end.

    `ray start --head --block` in its own temporary directory, on free ports: it writes its address
    there, not in /tmp/ray where a plain `ray.init()` (the command that starts its own Ray) would find it
    and join it, and it shares no port with another Ray on the machine. Terminating the blocking
    `ray start` stops the processes it started and no others (`ray stop` would stop every Ray here).
    """
    ray_script = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_script is None:
        raise UsageError("--ray-head needs Ray's `ray` command: pip install 'eluserve[distributed]'")
    # Ray 2.60's `ray start` turns on token authentication, and a driver given an explicit address uses
    # the token only when RAY_AUTH_MODE says so: what a user of such a cluster exports too.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Without a drain timeout of 0, a terminated head waits up to 30 s for work to drain: there is none.
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    # A short path: Ray's Unix sockets live below it, and socket paths are limited to about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="ray-head-", dir="/tmp"))
    log = folder / "ray-start.log"
    command = [
        ray_script,
        "start",
        "--head",
        "--block",
        "--port=0",
        f"--num-cpus={cpus}",
        f"--temp-dir={folder}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    address_file = folder / "ray_current_cluster"
    with open(log, "wb") as output:
        head = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + RAY_HEAD_START_SECONDS
        while not (address_file.is_file() and address_file.read_text().strip()):
            if head.poll() is not None or time.monotonic() > deadline:
                raise UsageError(f"--ray-head: `ray start --head` did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield address_file.read_text().strip()
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def fp32_engines(model_file: Path, info: ModelMetadata) -> dict[str, list[Engine]]:
    """Every fp32 engine that loads here, in both shapes that use every core
    (`load_tests.bench.raw_engines`): one session of a thread per core (`onnxruntime`), and one
    one-thread session per core run at once (`onnxruntime ×2 sessions`, as the service's workers and
    the in-process runner run it). The limits classification is held to: the fastest of them,
    whichever shape."""
    loaded, skipped = raw_engines(model_file, info, engines=((ONNXRUNTIME, FP32), (OPENVINO, FP32)))
    for name, why in skipped.items():  # reported; the limit is then the other engine's
        print(f"bench-classify: raw {name} not measured: {why}", file=sys.stderr)
    return {engine + shape_label(sessions): shape for (engine, _, sessions), shape in loaded.items()}


def register(subparsers: Any) -> None:
    """Add `bench-classify` to the benchmarks' parser."""
    bench_parser = subparsers.add_parser(
        "bench-classify", help="benchmark: classify img/s against the fastest raw engine, side by side"
    )
    bench_parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=AUTO,
        help="the inference engine classification runs on (default auto)",
    )
    bench_parser.add_argument("--model", default=str(default_model_file()))
    bench_parser.add_argument("--data", default=str(CIFAR_ZIP), help="CIFAR-10 JPEG zip")
    bench_parser.add_argument("--images", type=positive_int, default=2000)
    bench_parser.add_argument("--rounds", type=positive_int, default=3)
    bench_parser.add_argument("--seconds", type=float, default=1.0, help="per raw-session measurement")
    bench_parser.add_argument(
        "--batch-sizes",
        type=positive_ints,
        default=[DEFAULT_BATCH_SIZE, 256],
        help="classify batch sizes to measure in-process (default: 64,256)",
    )
    bench_parser.add_argument("--threads", type=positive_int, help="the in-process runner's --threads")
    bench_parser.add_argument("--server", metavar="URL", help="also measure a running service")
    bench_parser.add_argument(
        "--runner",
        choices=("local", "ray"),
        default="local",
        help="ray: also measure `eluserve classify --runner ray` (needs eluserve[distributed])",
    )
    bench_parser.add_argument("--ray-address", help="Ray cluster for --runner ray (default: a local Ray)")
    bench_parser.add_argument(
        "--ray-head",
        action="store_true",
        help="with --runner ray: also start a Ray head before the rounds and time --runner ray joining it "
        "(a cluster user's case) beside the command that starts its own Ray",
    )
    bench_parser.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY)
    bench_parser.set_defaults(func=cmd_bench)
