"""`eluserve train | export | pack | elu-tax | compare-activations | zoo | validate-precision`: the
training/export commands.

Registered into the single `eluserve` entry point by `eluserve.cli`. This module imports no torch: each
command imports its stage when it runs, so the serving install (no torch) still answers `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from eluserve.core.contract import MODEL_FILE
from eluserve.export.config import RECIPES, TrainConfig

VAL_PER_CLASS = TrainConfig.val_per_class
OPTIONAL_TYPES = {
    "train_limit": int,
    "threads": int,
    "time_budget_min": float,
    "grad_clip": float,
    "segment_min": float,
    "bn_momentum": float,
    "whiten_bias_epochs": int,
    "normalization": str,
}
#: Fields whose `None` means "decide from the hardware or the architecture": flags --X / --no-X.
AUTO_BOOLS = ("amp", "channels_last")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the config, the CLI and the model card's command agree.

    Every flag defaults to None ("not given"), so `--recipe` can supply values that explicit flags
    still override; `train_config` fills in the rest from TrainConfig's own defaults.
    """
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="start from a named set of hyper-parameters (export/config.py: RECIPES); flags override it",
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        if field.name in ("data", "out"):
            parser.add_argument(flag, required=True, help=f"{field.name} (required)")
        elif isinstance(default, bool) or field.name in AUTO_BOOLS:
            help_text = "default: auto" if default is None else f"default: {default}"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(
                flag,
                type=lambda text: tuple(int(v) for v in text.split(",") if v),
                default=None,
                help="comma-separated epochs",
            )
        else:
            kind = type(default) if default is not None else OPTIONAL_TYPES.get(field.name, str)
            parser.add_argument(flag, type=kind, default=None, help=f"default: {default}")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, then the `--recipe`'s values, then every flag given."""
    values: dict[str, Any] = dict(RECIPES[args.recipe]) if args.recipe else {}
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name)
        if given is not None:
            values[field.name] = given
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from eluserve.export.train import train

    configure_logging()
    summary = train(train_config(args))
    if not summary["finished"]:
        print(f"segment ended after epoch {summary['epoch']} of {summary['epochs']}: run again to resume")
        return 0
    print(f"validation accuracy {100 * summary['val_accuracy_fp32']:.2f} % → {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from eluserve.export.exporter import export_and_verify

    configure_logging()
    out = Path(args.out or f"models/{args.name}")
    card = export_and_verify(
        Path(args.run), out, args.name, args.version, sample=args.sample, fp16_storage=args.fp16_storage
    )
    print(
        f"exported {out / MODEL_FILE}: validation accuracy {100 * card['validation']['accuracy']:.2f} %, "
        f"verification {'passed' if card['export']['verification_passed'] else 'FAILED'}"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from eluserve.export.calibration import calibrate_model_folder

    configure_logging()
    card = calibrate_model_folder(Path(args.model_dir), data=args.data, sample=args.sample)
    report = card["calibration"]
    print(
        f"{args.model_dir}: ECE {100 * report['ece']:.2f} % ({report['bins']} bins, "
        f"{report['images']} images), accuracy {100 * report['accuracy']:.2f} %"
    )
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from eluserve.export.pack import pack_run

    run = Path(args.run)
    out = Path(args.out or f"{run.name}.tar")
    if args.resumable and args.fp16:
        raise SystemExit("--resumable keeps the fp32 checkpoint as it is: it cannot go with --fp16")
    sizes = pack_run(run, out, fp16=args.fp16, resumable=args.resumable)
    print(f"packed {run} → {out} ({sum(sizes.values()) / 1e6:.1f} MB: {', '.join(sorted(sizes))})")
    return 0


def served_architecture() -> str:
    """The architecture of the model `eluserve` serves by default, from its card: the ELU tax is a
    goal for the served model, and the zoo's `elufast` (no residuals) pays a larger share for its ELUs
    than the default's `elufast_res` (0.942 against 0.977 on OpenVINO, measured side by side)."""
    from eluserve.core.contract import read_model_info
    from eluserve.core.paths import default_model_file

    architecture = read_model_info(default_model_file()).architecture
    if architecture is None:
        raise SystemExit("the default model's card names no architecture: pass --model")
    return architecture


def cmd_elu_tax(args: argparse.Namespace) -> int:
    from eluserve.export.elu_tax import format_report, measure, plot_report

    report = measure(args.model or served_architecture(), args.batch_size, args.rounds, args.seconds)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_report(report, Path(args.plot))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from eluserve.export.compare import plot, run_comparison, summarize, write_report

    configure_logging()
    base = TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        epochs=args.epochs,
        lr=args.lr,
        train_limit=args.train_limit,
        label_smoothing=args.label_smoothing,
    )
    seeds = tuple(range(args.seeds))
    result = run_comparison(base, tuple(args.activations.split(",")), seeds)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    png = report.with_suffix(".png")
    plot(result, png)
    command = (
        f"eluserve compare-activations --data {args.data} --out {args.out} --model {args.model} "
        f"--epochs {args.epochs} --lr {args.lr} --seeds {args.seeds} --train-limit {args.train_limit} "
        f"--label-smoothing {args.label_smoothing} --report {args.report}"
    )
    write_report(result, report, png, command)
    for row in summarize(result):
        print(f"{row['activation']:<14} final validation error {row['final_val_error_mean']:.2f} %")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from eluserve.export.ablation import parse_until, run_ablation

    configure_logging()
    report = run_ablation(
        args.data,
        Path(args.out),
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        variants=args.variants.split(",") if args.variants else None,
        until=parse_until(args.until),
    )
    print((Path(args.out) / "ablation.md").read_text(), end="")
    return 0 if report["rows"] else 1


def cmd_train_speed(args: argparse.Namespace) -> int:
    from eluserve.export.train_speed import SETUPS, format_table, run, write_report

    setups = [name for name in SETUPS if not args.skip_bf16 or "bf16" not in name]
    report = run(args.model, setups, rounds=args.rounds, steps=args.steps)
    write_report(report, Path(args.out))
    print(format_table(report), end="")
    return 0


def cmd_validate_precision(args: argparse.Namespace) -> int:
    """Measure a lower precision on the validation split and record it in the model's card."""
    from datetime import UTC, datetime

    from eluserve.core.contract import read_model_info, resolve_model_file
    from eluserve.export.data import load_dataset, split_train_val
    from eluserve.export.model_card import record_precision
    from eluserve.export.verify import measure_precision

    configure_logging()
    model_file = resolve_model_file(args.model)
    info = read_model_info(model_file)
    _, val = split_train_val(
        load_dataset(args.data, info.input_size[0], info.num_classes), args.val_per_class
    )
    record = measure_precision(model_file, val, args.precision)
    record["command"] = (
        f"eluserve validate-precision {args.model} --precision {args.precision} --data {args.data}"
        + (f" --val-per-class {args.val_per_class}" if args.val_per_class != VAL_PER_CLASS else "")
    )
    record["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record_precision(model_file.parent, args.precision, record)
    print(
        f"{info.tag} {args.precision} on {record['engine']}: top-1 agreement "
        f"{100 * record['top1_agreement']:.2f} %, accuracy {100 * record['accuracy']:.2f} % "
        f"(fp32 {100 * record['fp32_accuracy']:.2f} %) on {record['images']} images: "
        f"{'allowed' if record['passed'] else 'refused'}; recorded in {model_file.parent}"
    )
    return 0 if record["passed"] else 1


def cmd_throughput_ratio(args: argparse.Namespace) -> int:
    from eluserve.export.throughput_ratio import format_report, run

    batch_sizes = tuple(int(v) for v in args.batch_sizes.split(","))
    candidate = Path(args.model) if args.model.endswith(".onnx") else args.model
    report = run(candidate, Path(args.baseline), batch_sizes, args.rounds, args.seconds)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_zoo(_: argparse.Namespace) -> int:
    from eluserve.export.zoo import DEFAULT_CFGS, list_models

    for name in list_models():
        print(f"{name:<16}{json.dumps(DEFAULT_CFGS[name])}")
    return 0


def register(subparsers: Any) -> None:
    """Add this stage's subcommands to the `eluserve` parser."""
    train = subparsers.add_parser("train", help="train a zoo model on an image dataset")
    _add_config_arguments(train)
    train.set_defaults(func=cmd_train)

    export = subparsers.add_parser(
        "export", help="export a run to fused-ELU ONNX, verify, write the model card"
    )
    export.add_argument("run", help="training run folder (config.json, checkpoint.pt)")
    export.add_argument("--name", required=True, help="model name, e.g. elufast-cifar10")
    export.add_argument("--out", help="output folder (default: models/NAME)")
    export.add_argument("--version", default="1")
    export.add_argument(
        "--sample",
        type=int,
        default=None,
        help="validation images for the checks, spread evenly over the classes (default: all)",
    )
    export.add_argument(
        "--fp16-storage",
        action="store_true",
        help="store weights as fp16 (half the file; compute stays fp32): keeps the paper nets under 100 MB",
    )
    export.set_defaults(func=cmd_export)

    pack = subparsers.add_parser(
        "pack", help="a run as one small tar (weights only) to carry to the machine that exports it"
    )
    pack.add_argument("run", help="training run folder (config.json, checkpoint.pt)")
    pack.add_argument("--out", help="tar file to write (default: RUN_NAME.tar)")
    pack.add_argument(
        "--fp16", action="store_true", help="store weights as fp16, as `export --fp16-storage` will"
    )
    pack.add_argument(
        "--resumable",
        action="store_true",
        help="keep the whole checkpoint (optimiser, epoch, random streams) so training resumes elsewhere",
    )
    pack.set_defaults(func=cmd_pack)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="add calibration (ECE, reliability diagram) and per-class recall to an exported model folder",
    )
    calibrate.add_argument("model_dir", help="exported folder (model.onnx, model_card.json)")
    calibrate.add_argument("--data", help="dataset (default: the source its card names)")
    calibrate.add_argument("--sample", type=int, default=None, help="validation images (default: all)")
    calibrate.set_defaults(func=cmd_calibrate)

    tax = subparsers.add_parser(
        "elu-tax", help="benchmark: fused ELU vs ReLU twin vs plain ELU on ORT CPU and OpenVINO"
    )
    tax.add_argument("--model", help="a zoo architecture (default: the served default model's)")
    tax.add_argument("--batch-size", type=int, default=64)
    tax.add_argument("--rounds", type=int, default=7)
    tax.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    tax.add_argument("--json", help="also write the report as JSON here")
    tax.add_argument("--plot", help="also write a PNG bar chart here")
    tax.set_defaults(func=cmd_elu_tax)

    compare = subparsers.add_parser(
        "compare-activations", help="train one recipe with ELU, ReLU, leaky ReLU, shifted ReLU; plot + table"
    )
    compare.add_argument("--data", required=True)
    compare.add_argument("--out", default="runs/compare")
    compare.add_argument("--model", default="elufast_small_nonorm")
    compare.add_argument("--activations", default="elu,relu,leaky_relu,shifted_relu")
    compare.add_argument("--epochs", type=int, default=10)
    compare.add_argument("--lr", type=float, default=0.05)
    compare.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per activation")
    compare.add_argument("--train-limit", type=int, default=None)
    compare.add_argument("--label-smoothing", type=float, default=0.0, help="0: the loss is the paper's")
    compare.add_argument("--report", default="docs/elu-vs-relu.md")
    compare.set_defaults(func=cmd_compare)

    ablate = subparsers.add_parser(
        "ablate",
        help="train the airbench recipe with one ingredient off at a time; table + plot (resumable)",
    )
    ablate.add_argument("--data", required=True)
    ablate.add_argument("--out", required=True, help="one run folder per variant goes here")
    ablate.add_argument("--model", default="elubench94")
    ablate.add_argument("--epochs", type=int, default=3)
    ablate.add_argument("--seed", type=int, default=0)
    ablate.add_argument("--variants", help="comma-separated subset (default: all, in order)")
    ablate.add_argument(
        "--until", metavar="HH:MM", help="stop on a checkpoint before this time; run again to go on"
    )
    ablate.set_defaults(func=cmd_ablate)

    speed = subparsers.add_parser(
        "train-speed", help="training img/s and minutes per epoch, before/after set-ups side by side"
    )
    speed.add_argument("--model", default="elubench94")
    speed.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the median is shown)")
    speed.add_argument("--steps", type=int, default=4, help="timed steps per set-up and round")
    speed.add_argument("--skip-bf16", action="store_true", help="leave out the (emulated, slow) bf16 set-up")
    speed.add_argument("--out", default="runs/train-speed", help="writes OUT.json and OUT.md")
    speed.set_defaults(func=cmd_train_speed)

    precision = subparsers.add_parser(
        "validate-precision",
        help="measure a lower precision (bf16 on OpenVINO CPU) against fp32 and record it in the model card",
    )
    precision.add_argument("model", help="model folder (its card, MODEL_CARD.md and model.onnx are updated)")
    precision.add_argument("--precision", choices=("bf16",), default="bf16")
    precision.add_argument(
        "--data", required=True, help="the training data (zip or folder) the model was split from"
    )
    precision.add_argument(
        "--val-per-class",
        type=int,
        default=VAL_PER_CLASS,
        help="the validation split: last N images per class",
    )
    precision.set_defaults(func=cmd_validate_precision)

    ratio = subparsers.add_parser(
        "throughput-ratio",
        help="an untrained zoo model's ORT CPU throughput against a shipped model's, side by side",
    )
    ratio.add_argument(
        "--model", required=True, help="zoo architecture (exported untrained), or an exported .onnx file"
    )
    ratio.add_argument("--baseline", default="models/elufast-cifar10/model.onnx")
    ratio.add_argument("--batch-sizes", default="1,32,128")
    ratio.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    ratio.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ratio.add_argument("--json", help="also write the report as JSON here")
    ratio.set_defaults(func=cmd_throughput_ratio)

    zoo = subparsers.add_parser("zoo", help="list the registered architectures (the model zoo)")
    zoo.set_defaults(func=cmd_zoo)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
