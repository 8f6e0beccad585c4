"""`eluserve`: the single command-line entry point.

Serving-side commands live beside the service; the training/export commands (`train`, `export`,
`elu-tax`, `models`) are registered from `export.cli` when torch is installed (the `train` extra), so
the lean serving install still runs everything else.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

TRAIN_COMMANDS = ("train", "export", "elu-tax", "models")


def _missing_train_extra(args: argparse.Namespace) -> int:
    print(
        f"eluserve {args.command}: needs the training stage (torch); install it with "
        "`pip install -e '.[cpu,train]'` (or `make setup`)",
        file=sys.stderr,
    )
    return 2


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

    if importlib.util.find_spec("torch") is not None:
        from export.cli import configure_logging, register

        configure_logging()
        register(subparsers)
    else:
        for name in TRAIN_COMMANDS:
            missing = subparsers.add_parser(name, help="(needs the train extra)")
            missing.set_defaults(func=_missing_train_extra)

    info = subparsers.add_parser("info", help="print a model's metadata (labels, preprocessing, accuracy)")
    info.add_argument("model", nargs="?", default="models/elufast-cifar10/model.onnx")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
