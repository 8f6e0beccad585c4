"""`eluserve`: the single command-line entry point, on top of every other package.

    eluserve serve [--port P]        the BentoML service with the default model (or --model)
    eluserve classify PATH...        folder classification (`eluserve.classify`)
    eluserve models | info [MODEL]   the packaged models; one model's metadata
    eluserve train | export | ...    the training/export stage (`eluserve.export`, needs the train extra)
    eluserve bench | bench-classify  the benchmarks, from a source checkout (`load_tests/`)

Each command imports its stage only when it runs, so `eluserve classify` starts fast and the serving
install (no torch) answers everything else with what to install for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

from eluserve.core.paths import default_model_file, packaged_models_dir, source_checkout

TRAIN_EXTRA_MODULES = ("torch", "onnxscript", "matplotlib")
#: The BentoML service `eluserve serve` starts, as `bentoml serve` takes it.
SERVICE_IMPORT = "eluserve.service.app:EluClassifier"
BENCH_COMMANDS = ("bench", "bench-classify")


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with `bentoml serve` of the packaged service (signals reach it directly)."""
    if args.model:
        os.environ["ELUSERVE_MODEL"] = args.model
    if args.workers:
        os.environ["ELUSERVE_WORKERS"] = str(args.workers)
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", args.host, "--port"]
    os.execv(sys.executable, [*command, str(args.port)])
    return 0  # not reached: execv does not return


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's metadata as the service would report it."""
    from eluserve.core.contract import read_model_info

    print(json.dumps(read_model_info(args.model).to_dict(), indent=2))
    return 0


def cmd_models(_: argparse.Namespace) -> int:
    """List the packaged models: name, version, validation accuracy, and which one is the default."""
    from eluserve.core.contract import MODEL_FILE, read_model_info
    from eluserve.core.errors import ModelFormatError

    default = default_model_file()
    for model_file in sorted(packaged_models_dir().glob(f"*/{MODEL_FILE}")):
        try:
            info = read_model_info(model_file)
        except ModelFormatError as exc:
            print(f"{model_file.parent.name:<24} unreadable: {exc}")
            continue
        accuracy = f"{info.val_accuracy:.2%}" if info.val_accuracy is not None else "-"
        marker = "  (default)" if model_file == default else ""
        print(f"{info.name:<24}{info.version:<8}{accuracy:>8}  {model_file.parent}{marker}")
    return 0


def run_benchmark(command: str, arguments: Sequence[str]) -> int:
    """Run a benchmark of `load_tests/` in the checkout this package is installed from.

    Its arguments go through untouched (they are the benchmark's, not ours), so this runs before our
    parser sees them.
    """
    root = source_checkout()
    if root is None:
        print(
            f"eluserve {command}: the benchmarks are not installed; run it from a source checkout "
            f"(`make setup`, then `.venv/bin/eluserve {command}`)",
            file=sys.stderr,
        )
        return 2
    argv = [sys.executable, "-m", "load_tests", command, *arguments]
    return subprocess.run(argv, cwd=root, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eluserve", description="Train, export and serve ELU image classifiers."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = subparsers.add_parser("serve", help="serve the packaged BentoML service (default model included)")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    serve.add_argument("--model", help="an .onnx file, a model folder or a BentoML tag (ELUSERVE_MODEL)")
    serve.add_argument("--workers", type=int, help="worker processes (ELUSERVE_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    from eluserve.classify.cli import register as register_classify

    register_classify(subparsers)

    models = subparsers.add_parser("models", help="list the packaged models and the default")
    models.set_defaults(func=cmd_models)
    info = subparsers.add_parser("info", help="print a model's metadata (labels, preprocessing, accuracy)")
    info.add_argument("model", nargs="?", default=str(default_model_file()))
    info.set_defaults(func=cmd_info)

    from eluserve.export.cli import register as register_export

    register_export(subparsers)

    for name in BENCH_COMMANDS:  # listed for --help; `main` hands them to the benchmark unparsed
        subparsers.add_parser(name, help=f"benchmark, from a source checkout (`eluserve {name} --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BENCH_COMMANDS:
        return run_benchmark(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"eluserve {args.command}: needs the training stage ({exc.name} is not installed); "
            "install it with `pip install 'eluserve[train]'` (or `make setup` in a checkout)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
