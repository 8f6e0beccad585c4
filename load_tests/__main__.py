"""`python -m load_tests COMMAND`: the benchmarks, run from a checkout (they are not installed).

    .venv/bin/python -m load_tests bench            # the service against its peers and the raw limit
    .venv/bin/python -m load_tests bench-classify   # folder classification against the raw limit

`eluserve bench` and `eluserve bench-classify` run these when eluserve is installed from a checkout.
"""

from __future__ import annotations

import argparse
import os
import sys

from load_tests import bench, bench_classify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load_tests", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench.register(subparsers)
    bench_classify.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
