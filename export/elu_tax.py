"""The ELU tax: what ELU costs on ONNX Runtime CPU and on OpenVINO against a ReLU twin of the same
architecture.

Four exports of one architecture, measured side by side in one run (rounds interleaved so drift in
the machine's speed hits them all alike), median images/s per variant:

- `relu`: the ReLU twin (ORT fuses Conv+ReLU into one kernel: the floor to beat);
- `elu_plain`: the ELU net as torch exports it (Conv → Elu → MaxPool);
- `elu_fused_no_reorder`: fused ConvElu ops, pooling still after the ELU;
- `elu_fused`: the shipped form (fused ops, pool before ELU).

All four run with ORT's default float handling, as the service runs; `relu` and `elu_fused` are also
measured with denormals flushed to zero (`*_daz`), since denormals are part of ELU's cost.
ORT's profiler then splits each variant's time by operator, which says where the time goes.
`relu`, `elu_plain` and `elu_fused` also run on OpenVINO (`*_openvino`), which reads the fused file as
serving gives it to OpenVINO: functions inlined, `Selu(gamma=1)` written as `Elu`
(`eluserve.core.openvino_graph`), so Conv+Elu fuse as Conv+ReLU do.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from eluserve.core.contract import INPUT_NAME
from eluserve.core.engines import OpenVinoEngine, measure_engine
from eluserve.core.session import available_cores
from eluserve.core.throughput import cpu_session, measure_session
from eluserve.export.exporter import finalize, to_onnx
from eluserve.export.fusion import RULES, FuseConvElu, FuseConvMaxPoolElu, StripDropout, fuse_elu
from eluserve.export.untrained import untrained_classifier

VARIANTS = ("relu", "elu_plain", "elu_fused_no_reorder", "elu_fused")
ORT = "onnxruntime"
OPENVINO = "openvino"
# (row label, variant, engine, flush denormals to zero (ORT only))
ROWS = (
    *((name, name, ORT, False) for name in VARIANTS),
    ("relu_daz", "relu", ORT, True),
    ("elu_fused_daz", "elu_fused", ORT, True),
    *((f"{name}_openvino", name, OPENVINO, False) for name in ("relu", "elu_plain", "elu_fused")),
)


def build_variants(model: str, directory: Path, seed: int = 0) -> dict[str, Path]:
    """Export the four variants with identical weights (only the activation differs)."""
    paths = {}
    relu = finalize(to_onnx(untrained_classifier(model, "relu", seed), 32))
    elu = finalize(to_onnx(untrained_classifier(model, "elu", seed), 32))
    no_reorder = onnx.ModelProto()
    no_reorder.CopyFrom(elu)
    fuse_elu(no_reorder, (StripDropout(), FuseConvMaxPoolElu(), FuseConvElu()))
    fused = onnx.ModelProto()
    fused.CopyFrom(elu)
    fuse_elu(fused, RULES)
    for name, proto in zip(VARIANTS, (relu, elu, finalize(no_reorder), finalize(fused)), strict=True):
        paths[name] = directory / f"{name}.onnx"
        onnx.save(proto, paths[name])
    return paths


def profile_ops(path: Path, batch: np.ndarray, runs: int = 20) -> dict[str, float]:
    """Share of kernel time per operator type, from ORT's own profiler."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {INPUT_NAME: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def measure(
    model: str = "elufast", batch_size: int = 64, rounds: int = 7, seconds: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """Build, measure interleaved, profile; returns the report with the two ratios the goal names."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_variants(model, Path(tmp), seed)
        runners = {label: _runner(paths[variant], engine, daz) for label, variant, engine, daz in ROWS}
        samples: dict[str, list[float]] = {label: [] for label in runners}
        for _ in tqdm(range(rounds), desc="ELU tax rounds", unit="round"):
            for label, runner in runners.items():
                samples[label].append(runner(batch, seconds))
        profiles = {name: profile_ops(paths[name], batch) for name in VARIANTS}
    median = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "model": model,
        "batch_size": batch_size,
        "rounds": rounds,
        "images_per_second": median,
        "samples": samples,
        "fused_over_relu": median["elu_fused"] / median["relu"],
        "fused_over_plain": median["elu_fused"] / median["elu_plain"],
        "plain_over_relu": median["elu_plain"] / median["relu"],
        "fused_over_relu_daz": median["elu_fused_daz"] / median["relu_daz"],
        "fused_over_relu_openvino": median["elu_fused_openvino"] / median["relu_openvino"],
        "plain_over_relu_openvino": median["elu_plain_openvino"] / median["relu_openvino"],
        "op_time_share": profiles,
        "onnxruntime_version": ort.__version__,
        "openvino_version": _openvino_version(),
    }


def _runner(path: Path, engine: str, denormal_as_zero: bool) -> Callable[[np.ndarray, float], float]:
    """images/s of one variant on one engine: `runner(batch, seconds)`."""
    if engine == OPENVINO:
        openvino = OpenVinoEngine.create(path, available_cores())
        return lambda batch, seconds: measure_engine(openvino, batch, seconds)
    session = cpu_session(str(path), denormal_as_zero=denormal_as_zero)
    return lambda batch, seconds: measure_session(session, batch, seconds).images_per_second


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"ELU tax: {report['model']}, batch {report['batch_size']}, ORT {report['onnxruntime_version']} CPU "
        f"and OpenVINO {report['openvino_version']} CPU, median of {report['rounds']} interleaved rounds",
        "",
        f"{'variant':<22}{'img/s':>10}{'÷ relu':>9}   top operators (share of kernel time)",
    ]
    relu = report["images_per_second"]["relu"]
    relu_ov = report["images_per_second"]["relu_openvino"]
    for label, variant, engine, _ in ROWS:
        ips = report["images_per_second"][label]
        shares = list(report["op_time_share"][variant].items())[:4] if label == variant else []
        ops = ", ".join(f"{op} {100 * share:.0f}%" for op, share in shares)
        twin = relu_ov if engine == OPENVINO else relu
        lines.append(f"{label:<22}{ips:>10.0f}{ips / twin:>9.3f}   {ops}")
    lines += [
        "",
        f"fused ELU ÷ ReLU twin:   {report['fused_over_relu']:.3f}  (goal ≥ 0.97)",
        f"fused ELU ÷ plain ELU:   {report['fused_over_plain']:.3f}",
        f"plain ELU ÷ ReLU twin:   {report['plain_over_relu']:.3f}",
        f"with denormals flushed to zero, fused ÷ ReLU: {report['fused_over_relu_daz']:.3f}",
        f"OpenVINO, fused ELU ÷ ReLU twin: {report['fused_over_relu_openvino']:.3f}  (goal ≥ 0.97)",
        f"OpenVINO, plain ELU ÷ ReLU twin: {report['plain_over_relu_openvino']:.3f}",
    ]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [label for label, _, _, _ in ROWS]
    values = [report["images_per_second"][label] for label in labels]
    ax.barh(labels, values, color=["C0", "C3", "C1", "C2", "C7", "C7", "C4", "C4", "C4"])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.0f}", va="center")
    ax.set_xlabel("images/s (ORT CPU; *_openvino: OpenVINO CPU)")
    ax.set_title(f"ELU tax, {report['model']}, batch {report['batch_size']}")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
