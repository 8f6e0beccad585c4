"""`eluserve classify`: classify every image under files and folders, one output row per file.

    eluserve classify photos/ more.jpg --output results.csv          # in-process, ONNX Runtime
    eluserve classify photos/ --server http://127.0.0.1:3000 -o r.jsonl  # a running eluserve service
    eluserve classify data/val --evaluate --confusion-png confusion.png   # ImageFolder layout
    eluserve classify s3://bucket/photos/ -o rows.parquet --runner ray --ray-address auto  # a Ray cluster
    eluserve bench-classify                                           # img/s vs raw ONNX Runtime

Every runner produces the same rows because they run the same code: the in-process runner decodes with
`eluserve.core.preprocessing.load_image` and infers with `eluserve.core.session.ModelSession`, exactly
what the service does behind `POST /classify_batch`, which the server runner calls. `--runner ray`
(`eluserve.classify.ray_runner`) runs the same two in Ray Data tasks and actors, on one machine or many.
`--engine` picks the inference engine (ONNX Runtime, OpenVINO) wherever the model runs.

Everything streams so that memory stays flat at any number of files: folders are walked lazily, files
are decoded in a thread pool with a bounded window of futures in flight (Pillow and ONNX Runtime release
the GIL, so decoding overlaps inference), rows are written and flushed one by one in input order, and
the only per-file state kept is the set of paths already done when resuming. Bad files become rows with
an error instead of stopping the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from eluserve.classify.evaluation import Evaluation, require_matplotlib
from eluserve.classify.files import DEFAULT_EXTENSIONS, UsageError, iter_image_files, parse_extensions
from eluserve.classify.rows import (
    FORMATS,
    ParquetRowWriter,
    RowSink,
    RowWriter,
    format_of,
    open_text,
    read_parquet_output,
    resume,
)
from eluserve.classify.run import Summary, classify_files
from eluserve.classify.runners import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    LocalRunner,
    Runner,
    ServerFailed,
    ServerRunner,
    quiet_http_log,
)
from eluserve.core.engines import AUTO, ENGINES
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import DECODABLE_FORMATS
from eluserve.core.results import DEFAULT_TOP_K


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",")]


def cmd_classify(args: argparse.Namespace) -> int:
    """`eluserve classify`: exit 0 when every file was classified, 1 when some failed, 2 on usage errors."""
    try:
        return _classify(args)
    except UsageError as exc:
        print(f"eluserve classify: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, like other tools
        return 1


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _ray_runner(args: argparse.Namespace, stack: contextlib.ExitStack) -> Runner:
    """`--runner ray`, joined to its cluster; the stack shuts down a Ray it started, failures included.

    Imported here: Ray is an extra, and importing it costs seconds.
    """
    from eluserve.classify.ray_plan import RayResources
    from eluserve.classify.ray_runner import RayRunner

    resources = RayResources(actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor)
    runner = RayRunner.load(
        args.model, args.top_k, batch_size=args.batch_size, resources=resources, engine=args.engine
    )
    return stack.enter_context(runner).connect(args.ray_address)


def _check_runner_options(args: argparse.Namespace) -> None:
    ray_options = [
        flag
        for flag, value in (
            ("--ray-address", args.ray_address),
            ("--ray-actors", args.ray_actors),
            ("--ray-gpus-per-actor", args.ray_gpus_per_actor),
        )
        if value is not None
    ]
    if args.runner == "ray" and args.server:
        raise UsageError(
            "--runner ray runs the model on a Ray cluster; --server sends files to a service: pick one"
        )
    if args.runner != "ray" and ray_options:
        raise UsageError(f"{', '.join(ray_options)} need --runner ray")
    uris = [path for path in args.paths if "://" in path]
    if uris and args.runner != "ray":
        raise UsageError(f"{', '.join(uris)}: URIs are read by --runner ray (pyarrow's file systems)")


def _classify(args: argparse.Namespace) -> int:
    _check_runner_options(args)
    missing = [path for path in args.paths if "://" not in path and not os.path.lexists(path)]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    extensions = parse_extensions(args.extensions)
    fmt = format_of(args.output, args.format)
    if args.resume and not args.output:
        raise UsageError("--resume needs --output: the file to continue")
    if args.confusion_png:
        require_matplotlib()
    quiet_http_log()
    evaluate = args.evaluate or bool(args.confusion_png)
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    with contextlib.ExitStack() as stack:
        runner: Runner
        if args.server:
            runner = stack.enter_context(
                ServerRunner(
                    args.server, args.top_k, batch_size=args.batch_size, concurrency=args.concurrency
                )
            )
        elif args.runner == "ray":
            runner = _ray_runner(args, stack)
        else:
            runner = LocalRunner.load(
                args.model, args.top_k, batch_size=args.batch_size, threads=args.threads, engine=args.engine
            )
        evaluation = Evaluation(runner.labels) if evaluate else None
        done = resume(Path(args.output), fmt, evaluation) if args.resume else set()
        writer: RowSink
        if fmt == "parquet":
            output = Path(args.output)
            previous = read_parquet_output(output) if args.resume and output.exists() else None
            writer = stack.enter_context(ParquetRowWriter(output, previous))
        else:
            if args.output:
                stream = stack.enter_context(open_text(args.output, "a" if args.resume else "w"))
            else:
                stream = stack.enter_context(open_text(sys.stdout.fileno(), "w"))
            writer = RowWriter(stream, fmt, header=not args.resume or stream.tell() == 0)
        if args.runner == "ray":
            from eluserve.classify.uris import list_files

            files = list_files(args.paths, extensions, recursive=args.recursive)
        else:
            files = iter_image_files(args.paths, extensions, recursive=args.recursive)
        summary = Summary()
        try:
            classify_files(
                files, runner, writer, skip=done, evaluation=evaluation, progress=progress, summary=summary
            )
        except (ServerFailed, KeyboardInterrupt) as exc:
            reason = str(exc) if isinstance(exc, ServerFailed) else "interrupted"
            print(
                f"eluserve classify: {reason}; the rows so far are written, --resume continues",
                file=sys.stderr,
            )
            print(summary.format(), file=sys.stderr)
            return 1 if isinstance(exc, ServerFailed) else 130

    where = ""
    if isinstance(runner, LocalRunner):
        where = f" on {runner.session.engine} {runner.session.provider}"
    elif args.runner == "ray":
        from eluserve.classify.ray_runner import RayRunner

        if isinstance(runner, RayRunner) and runner.runs_on:
            where = f" on {', '.join(sorted(runner.runs_on))} (Ray actors)"
    print(f"eluserve classify: model {runner.model}{where}", file=sys.stderr)
    print(summary.format(), file=sys.stderr)
    if done and not summary.skipped:
        print(
            f"eluserve classify: --resume matched none of the {len(done)} rows already in {args.output}; "
            "paths are matched as written, so run from the same folder with the same PATH spelling",
            file=sys.stderr,
        )
    if summary.files == 0:
        print(
            f"no image files ({', '.join(sorted(extensions))}) under {', '.join(args.paths)}", file=sys.stderr
        )
    if evaluation is not None:
        print(evaluation.report(), file=sys.stderr)
        if args.confusion_png:
            evaluation.save_png(args.confusion_png, runner.model)
            print(f"confusion matrix → {args.confusion_png}", file=sys.stderr)
    return 1 if summary.failed else 0


def register(subparsers: Any) -> None:
    """Add `classify` to the `eluserve` parser."""
    parser = subparsers.add_parser(
        "classify",
        help="classify image files and folders to CSV/JSONL/Parquet (in-process, on Ray, or via a service)",
        description="Classify every image under PATHs; one row per file (path, label, probability, top_k, "
        "error). Exit status: 0 all classified, 1 some files failed, 2 usage error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default=str(default_model_file()), help="model .onnx or folder (in-process runner)"
    )
    source.add_argument("--server", metavar="URL", help="classify through a running eluserve service")
    parser.add_argument(
        "--runner",
        choices=("local", "ray"),
        default="local",
        help="where --model runs: this process, or a Ray cluster through Ray Data (docs/distributed.md; "
        "pip install 'eluserve[distributed]'); PATHs may then be URIs such as s3://bucket/photos/",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=AUTO,
        help="inference engine, as ELUSERVE_ENGINE for the service (default auto: the fastest that passes "
        "parity with onnxruntime, timed at start; the Ray actors of a node make one such choice)",
    )
    ray = parser.add_argument_group("--runner ray")
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help='Ray cluster to join ("auto", ray://head:10001); default: a local Ray',
    )
    ray.add_argument(
        "--ray-actors",
        metavar="N",
        type=positive_int,
        help="inference actors (default: one per GPU, else as many as fit)",
    )
    ray.add_argument(
        "--ray-gpus-per-actor",
        metavar="G",
        type=non_negative_float,
        help="GPUs per inference actor (default: 1 where the cluster has GPUs, else 0: CPU actors)",
    )
    parser.add_argument(
        "-o", "--output", help="output file, .csv, .jsonl or .parquet (default: JSONL on stdout)"
    )
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from --output's suffix)")
    parser.add_argument(
        "--resume", action="store_true", help="skip files already in --output, append the rest"
    )
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help="comma-separated extensions of the files to classify in folders "
        f"(the decoder reads {', '.join(DECODABLE_FORMATS)})",
    )
    parser.add_argument("--top-k", type=positive_int, help=f"classes per row (default {DEFAULT_TOP_K})")
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per batch/request"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="cores to use: one one-thread model session each, and as many reading and decoding threads "
        "(default: available cores)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY, help="requests in flight (--server)"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="folder names are true labels: print accuracy etc."
    )
    parser.add_argument(
        "--confusion-png", metavar="FILE", help="save the confusion matrix (implies --evaluate)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a tty)",
    )
    parser.set_defaults(func=cmd_classify)
