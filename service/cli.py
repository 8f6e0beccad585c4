"""`eluserve`: the single command-line entry point.

Serving-side commands live beside the service; the training/export commands (`train`, `export`,
`elu-tax`, `compare-activations`, `models`) come from `export.cli`, which imports torch only when one
of them runs, so `eluserve classify` starts fast and the lean serving install (no torch) runs
everything else and says what to install for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

TRAIN_EXTRA_MODULES = ("torch", "onnxscript", "matplotlib")


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's metadata as the service would report it."""
    from service.inference import read_model_info

    print(json.dumps(read_model_info(args.model).to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eluserve", description="Train, export and serve ELU image classifiers."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from export.cli import register as register_export

    register_export(subparsers)

    from service.classify import register as register_classify

    register_classify(subparsers)

    from load_tests.bench import register as register_bench

    register_bench(subparsers)

    info = subparsers.add_parser("info", help="print a model's metadata (labels, preprocessing, accuracy)")
    info.add_argument("model", nargs="?", default="models/elufast-cifar10/model.onnx")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"eluserve {args.command}: needs the training stage ({exc.name} is not installed); "
            "install it with `pip install -e '.[cpu,train]'` (or `make setup`)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
