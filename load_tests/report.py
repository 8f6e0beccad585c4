"""The benchmark's one table, its ratios against the goals, and its plot.

The ratios are the ones issue #6 sets as goals, each computed from figures of the same run:
- service ÷ raw session at the highest concurrency: ≥ 0.85, with the service's p99 ≤ 250 ms there;
- service ÷ naive server at the highest concurrency: ≥ 2;
- service ÷ PyTriton at equal p99: the best throughput each reaches over the measured concurrencies
  while its p99 stays within the same budget (250 ms): ≥ 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eluserve.core.throughput import Throughput
from load_tests.loadgen import LevelResult
from load_tests.wrk import WrkResult

#: Display names, in table order.
SERVER_NAMES: Mapping[str, str] = {
    "service": "eluserve (BentoML)",
    "naive": "naive Starlette + ORT",
    "triton": "PyTriton (Triton + ORT)",
}


@dataclass
class ServerRun:
    """Everything measured for one server, or why it was not."""

    key: str
    levels: list[LevelResult] = field(default_factory=list)
    cold_start_s: float | None = None
    #: Why there are no (or partial) figures: unavailable here, or failed.
    problem: str | None = None
    #: True when `problem` is a failure rather than "cannot run here".
    failed: bool = False
    #: py-spy's collapsed stacks of the highest concurrency level, when profiled.
    profile: Path | None = None
    #: wrk runs (native client): /classify and /classify_batch at each connection count.
    wrk: list[WrkResult] = field(default_factory=list)
    #: What `GET /model` says runs the model: engine, execution provider, precision.
    served_by: str | None = None

    @property
    def name(self) -> str:
        return SERVER_NAMES.get(self.key, self.key)

    def at(self, concurrency: int) -> LevelResult | None:
        return next((level for level in self.levels if level.concurrency == concurrency), None)

    def best_within(self, p99_budget_ms: float) -> LevelResult | None:
        """The level with the highest throughput whose p99 is within the budget."""
        fitting = [level for level in self.levels if level.percentile_ms(99) <= p99_budget_ms]
        return max(fitting, key=lambda level: level.images_per_second, default=None)


@dataclass(frozen=True)
class RawPoint:
    """One batch size of the raw session: its throughput, and the CPU time it took per image (the
    figure to hold the servers' "server CPU ms/img" against when other work shares the machine)."""

    throughput: Throughput
    cpu_ms_per_image: float
    engine: str = "onnxruntime"
    precision: str = "fp32"
    #: Sessions run at once, sharing the cores (one thread each when several).
    sessions: int = 1

    @property
    def name(self) -> str:
        return f"{self.engine} {self.precision}{shape_label(self.sessions)}"


def shape_label(sessions: int) -> str:
    """How a raw engine's name says that `sessions` one-thread sessions ran at once ("" for one)."""
    return f" ×{sessions} sessions" if sessions > 1 else ""


@dataclass(frozen=True)
class Ratio:
    label: str
    value: float | None
    goal: str
    met: bool | None
    detail: str


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratios(
    runs: Mapping[str, ServerRun],
    raw_best: Throughput | None,
    top: int,
    p99_budget_ms: float,
    limit_name: str = "onnxruntime fp32",
) -> list[Ratio]:
    """The three goal ratios; a ratio whose inputs are missing has value None and says why."""
    service = runs.get("service")
    service_top = service.at(top) if service else None
    result = []

    if service_top and raw_best:
        value = service_top.images_per_second / raw_best.images_per_second
        p99 = service_top.percentile_ms(99)
        result.append(
            Ratio(
                f"service ÷ raw session @ c={top}",
                value,
                f"≥ 0.85 with p99 ≤ {p99_budget_ms:.0f} ms",
                value >= 0.85 and p99 <= p99_budget_ms,
                f"{_fmt(service_top.images_per_second)} ÷ {_fmt(raw_best.images_per_second)} img/s "
                f"(raw {limit_name} at batch {raw_best.batch_size}); service p99 {_fmt(p99)} ms",
            )
        )
    else:
        result.append(Ratio(f"service ÷ raw session @ c={top}", None, "≥ 0.85", None, "not measured"))

    naive = runs.get("naive")
    naive_top = naive.at(top) if naive else None
    if service_top and naive_top and naive_top.images_per_second > 0:
        value = service_top.images_per_second / naive_top.images_per_second
        result.append(
            Ratio(
                f"service ÷ naive @ c={top}",
                value,
                "≥ 2",
                value >= 2.0,
                f"{_fmt(service_top.images_per_second)} ÷ {_fmt(naive_top.images_per_second)} img/s",
            )
        )
    else:
        why = naive.problem if naive and naive.problem else "not measured"
        result.append(Ratio(f"service ÷ naive @ c={top}", None, "≥ 2", None, why))

    triton = runs.get("triton")
    label = f"service ÷ PyTriton @ equal p99 (≤ {p99_budget_ms:.0f} ms)"
    if service and triton and triton.levels and not triton.problem:
        ours, theirs = service.best_within(p99_budget_ms), triton.best_within(p99_budget_ms)
        if ours and theirs and theirs.images_per_second > 0:
            value = ours.images_per_second / theirs.images_per_second
            result.append(
                Ratio(
                    label,
                    value,
                    "≥ 1.0",
                    value >= 1.0,
                    f"{_fmt(ours.images_per_second)} img/s (c={ours.concurrency}, p99 "
                    f"{_fmt(ours.percentile_ms(99))} ms) ÷ {_fmt(theirs.images_per_second)} img/s "
                    f"(c={theirs.concurrency}, p99 {_fmt(theirs.percentile_ms(99))} ms)",
                )
            )
        else:
            who = "the service" if not ours else "PyTriton"
            result.append(Ratio(label, None, "≥ 1.0", None, f"{who} has no level within the budget"))
    else:
        why = triton.problem if triton and triton.problem else "not measured"
        result.append(Ratio(label, None, "≥ 1.0", None, f"unavailable: {why}"))
    return result


def table(runs: Sequence[ServerRun], raw: Sequence[RawPoint]) -> str:
    """Server × concurrency → img/s, p50/p95/p99, errors; the fastest raw point of `raw` (the engines
    at the service's precision) as the limit."""
    lines = [
        "| server | concurrency | img/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms/img "
        "| client CPU | server CPU | other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        if not run.levels:
            lines.append(f"| {run.name} | — | — | — | — | — | — | — | — | — | {run.problem or 'not run'} |")
            continue
        for level in run.levels:
            errors = ", ".join(f"{k}×{v}" for k, v in level.errors.most_common()) or "0"
            server_cores = sum(level.server_cores.values())
            per_image = 1000 * server_cores / level.images_per_second if level.images_per_second else math.nan
            lines.append(
                f"| {run.name} | {level.concurrency} | {_fmt(level.images_per_second)} | "
                f"{_fmt(level.percentile_ms(50))} | {_fmt(level.percentile_ms(95))} | "
                f"{_fmt(level.percentile_ms(99))} | {errors} | {_fmt(per_image, 2)} | "
                f"{level.client_cores:.2f} | {server_cores:.2f} | {level.other_cores:.2f} |"
            )
    if raw:
        point = max(raw, key=lambda p: p.throughput.images_per_second)
        best = point.throughput
        lines.append(
            f"| raw {point.name}, in-process (limit) | batch {best.batch_size} | "
            f"{_fmt(best.images_per_second)} | {_fmt(best.batch_latency_seconds * 1000)} (per batch) "
            f"| — | — | 0 | {_fmt(point.cpu_ms_per_image, 2)} | — | — | — |"
        )
    return "\n".join(lines)


def raw_table(raw: Sequence[RawPoint]) -> str:
    lines = [
        "| engine | batch size | img/s | ms per batch | CPU ms/img |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for point in raw:
        t = point.throughput
        lines.append(
            f"| {point.name} | {t.batch_size} | {_fmt(t.images_per_second)} | "
            f"{_fmt(t.batch_latency_seconds * 1000, 2)} | {_fmt(point.cpu_ms_per_image, 2)} |"
        )
    return "\n".join(lines)


def wrk_table(results: Sequence[WrkResult], limit: Throughput | None) -> str:
    """wrk runs: served images/s (2xx only) against the limit, latency, and every non-2xx by status."""
    lines = [
        "| endpoint | images/request | connections | served img/s | ÷ limit | p50 ms | p99 ms | 2xx "
        "| non-2xx by status | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        ratio = r.images_per_s / limit.images_per_second if limit and limit.images_per_second else None
        refused = ", ".join(
            f"{status}×{n}" for status, n in sorted(r.statuses.items()) if not 200 <= status < 300
        )
        errors = ", ".join(f"{kind} {n}" for kind, n in r.socket_errors.items()) or "0"
        endpoint = r.url.rsplit("/", 1)[-1]
        lines.append(
            f"| /{endpoint} | {r.images_per_request} | {r.connections} | {_fmt(r.images_per_s)} | "
            f"{_fmt(ratio, 2)} | {_fmt(r.latency_ms.get(50.0))} | {_fmt(r.latency_ms.get(99.0))} | {r.ok} | "
            f"{refused or '0'} | {errors} |"
        )
    return "\n".join(lines)


def ratio_table(items: Sequence[Ratio]) -> str:
    lines = ["| ratio | measured | goal | met | from |", "| --- | ---: | --- | --- | --- |"]
    for item in items:
        met = "—" if item.met is None else ("yes" if item.met else "**no**")
        value = "n/a" if item.value is None else f"{item.value:.2f}"
        lines.append(f"| {item.label} | {value} | {item.goal} | {met} | {item.detail} |")
    return "\n".join(lines)


def cpu_table(runs: Sequence[ServerRun], top: int) -> str:
    """Where the server's CPU went at the highest concurrency, by process."""
    lines = [f"| server | process | cores used @ c={top} |", "| --- | --- | ---: |"]
    for run in runs:
        level = run.at(top)
        if level is None:
            continue
        for label, cores in sorted(level.server_cores.items(), key=lambda item: -item[1]):
            lines.append(f"| {run.name} | {label} | {cores:.2f} |")
        lines.append(f"| {run.name} | load generator (this process) | {level.client_cores:.2f} |")
    return "\n".join(lines)


def plot(runs: Sequence[ServerRun], raw_best: Throughput | None, p99_budget_ms: float, path: Path) -> bool:
    """Throughput and p99 against concurrency, one line per server. False where matplotlib is absent
    (it comes with the train extra, not with the serving install)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        if not run.levels:
            continue
        xs = [level.concurrency for level in run.levels]
        left.plot(xs, [level.images_per_second for level in run.levels], marker="o", label=run.name)
        right.plot(xs, [level.percentile_ms(99) for level in run.levels], marker="o", label=run.name)
    if raw_best:
        left.axhline(
            raw_best.images_per_second,
            color="grey",
            linestyle="--",
            label=f"raw limit (batch {raw_best.batch_size})",
        )
    right.axhline(p99_budget_ms, color="grey", linestyle="--", label=f"p99 budget {p99_budget_ms:.0f} ms")
    levels = sorted({level.concurrency for run in runs for level in run.levels})
    for axis, ylabel in ((left, "images / s"), (right, "p99 latency, ms (log)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.minorticks_off()
        axis.set_xlabel("concurrent requests (closed loop)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    right.set_title("tail latency")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
