"""The benchmark's one table, its ratios against the goals, and its plot.

The ratios are the service's goals, each computed from figures of the same run:
- service ÷ raw session at the highest concurrency: ≥ 0.85, with the service's p99 ≤ 250 ms there;
- service ÷ naive server at the highest concurrency: ≥ 2;
- service ÷ PyTriton at equal p99: the best throughput each reaches over the measured concurrencies
  while its p99 stays within the same budget (250 ms): ≥ 1.

Under wrk, the goals: `/classify` single images at 32 connections ≥ 0.85 of the limit,
`/classify_batch` 16-image requests at 8 to 32 connections ≥ 0.95, and the served figure within 10 %
over three runs. Each wrk level is held against the limit measured right before and right after it
(`WrkLevel`), not against the one measured minutes earlier, because this host's speed drifts by 10-15 %
within minutes and a ratio to a stale limit measures the drift as much as the service.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    #: wrk runs (native client): /classify and /classify_batch at each connection count, each with the
    #: limit measured around it; `repeat` times over.
    wrk: list[WrkLevel] = field(default_factory=list)
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
class WrkLevel:
    """One wrk run and the limit's configuration measured on the idle machine right before and right
    after it, so that its ratio compares the service with the limit at the same speed of the host.

    The limit is re-measured rather than taken from the initial sweep because this host's speed drifts
    by 10-15 % within minutes: the served figure moves with it, and a ratio to a limit from minutes
    earlier would mix the service's efficiency with the host's drift. `drift` shows when the host moved
    during the level itself, which no bracket corrects.
    """

    result: WrkResult
    #: The limit's images/s just before and just after the run; None where no limit was measured.
    limit_before: float | None
    limit_after: float | None
    #: Which pass over the levels (1-based) of `--repeat`.
    repetition: int = 1

    @property
    def endpoint(self) -> str:
        return self.result.url.rsplit("/", 1)[-1]

    @property
    def limit(self) -> float | None:
        """The limit during the run: the mean of the two brackets."""
        if self.limit_before is None or self.limit_after is None:
            return None
        return (self.limit_before + self.limit_after) / 2

    @property
    def ratio(self) -> float | None:
        """Served images/s ÷ the bracketed limit."""
        limit = self.limit
        return self.result.images_per_s / limit if limit else None

    @property
    def drift(self) -> float | None:
        """The limit after ÷ before: 1 when the host kept its speed through the run."""
        if not self.limit_before or self.limit_after is None:
            return None
        return self.limit_after / self.limit_before

    def to_dict(self) -> dict[str, object]:
        return {
            **self.result.to_dict(),
            "repetition": self.repetition,
            "limit_before": _rounded(self.limit_before, 1),
            "limit_after": _rounded(self.limit_after, 1),
            "limit": _rounded(self.limit, 1),
            "ratio": _rounded(self.ratio, 4),
            "drift": _rounded(self.drift, 4),
        }


#: The ratio goals under wrk: (endpoint, images per request) → (fewest and most connections the
#: goal holds at, least served ÷ limit).
WRK_RATIO_GOALS: Mapping[tuple[str, int], tuple[tuple[int, int], float]] = {
    ("classify", 1): ((32, 32), 0.85),
    ("classify_batch", 16): ((8, 32), 0.95),
}
#: The stability goal: the figure varies by at most this much (max ÷ min − 1) between three runs.
SPREAD_GOAL = 0.10
#: The runs the spread goal is stated over.
SPREAD_RUNS = 3


@dataclass(frozen=True)
class Stats:
    """Min, median and max of one figure over the repeated runs, and their spread."""

    low: float
    median: float
    high: float

    @property
    def spread(self) -> float | None:
        """max ÷ min − 1: how far apart the runs are (None when the lowest is 0)."""
        return self.high / self.low - 1 if self.low > 0 else None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats | None:
        return cls(min(values), statistics.median(values), max(values)) if values else None


@dataclass(frozen=True)
class WrkSummary:
    """One endpoint and connection count over the `--repeat` runs: the served figure and the bracketed
    ratio, each with its spread, since the spread goal is checked on both: the figure is what the issue
    states, the ratio what is left of it once the host's drift is divided out."""

    endpoint: str
    images_per_request: int
    connections: int
    served: tuple[float, ...]
    #: Bracketed ratios, one per run that had a limit measured around it.
    ratios: tuple[float, ...]

    @property
    def runs(self) -> int:
        return len(self.served)

    @property
    def served_stats(self) -> Stats | None:
        return Stats.of(self.served)

    @property
    def ratio_stats(self) -> Stats | None:
        return Stats.of(self.ratios)

    @property
    def goal(self) -> float | None:
        """The least ratio the goals ask of this endpoint at this connection count, if any."""
        rule = WRK_RATIO_GOALS.get((self.endpoint, self.images_per_request))
        if rule is None:
            return None
        (fewest, most), least = rule
        return least if fewest <= self.connections <= most else None

    @property
    def goal_met(self) -> bool | None:
        """The median ratio against the goal; None where there is no goal or no ratio."""
        stats = self.ratio_stats
        return None if self.goal is None or stats is None else stats.median >= self.goal

    def spread_met(self, stats: Stats | None) -> bool | None:
        """The spread goal, judged once there are as many runs as it is stated over."""
        if stats is None or len(self.served) < SPREAD_RUNS or stats.spread is None:
            return None
        return stats.spread <= SPREAD_GOAL

    def to_dict(self) -> dict[str, object]:
        def stats_dict(stats: Stats | None) -> dict[str, float | None] | None:
            if stats is None:
                return None
            return {
                "min": round(stats.low, 4),
                "median": round(stats.median, 4),
                "max": round(stats.high, 4),
                "spread": _rounded(stats.spread, 4),
            }

        return {
            "endpoint": self.endpoint,
            "images_per_request": self.images_per_request,
            "connections": self.connections,
            "runs": self.runs,
            "served_images_per_s": stats_dict(self.served_stats),
            "ratio": stats_dict(self.ratio_stats),
            "ratio_goal": self.goal,
            "ratio_goal_met": self.goal_met,
            "served_spread_met": self.spread_met(self.served_stats),
            "ratio_spread_met": self.spread_met(self.ratio_stats),
        }


def summarize(levels: Sequence[WrkLevel]) -> list[WrkSummary]:
    """The repeated runs of each endpoint and connection count, in the order they were first run."""
    groups: dict[tuple[str, int, int], list[WrkLevel]] = {}
    for level in levels:
        key = (level.endpoint, level.result.images_per_request, level.result.connections)
        groups.setdefault(key, []).append(level)
    return [
        WrkSummary(
            endpoint,
            images,
            connections,
            tuple(level.result.images_per_s for level in group),
            tuple(level.ratio for level in group if level.ratio is not None),
        )
        for (endpoint, images, connections), group in groups.items()
    ]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


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


def wrk_table(levels: Sequence[WrkLevel]) -> str:
    """Each wrk run: served images/s (2xx only), the limit measured before and after it, their drift,
    the served figure ÷ the bracketed limit, latency, and every non-2xx by status."""
    lines = [
        "| endpoint | images/request | connections | run | served img/s | limit before | limit after "
        "| drift | ÷ limit | p50 ms | p99 ms | 2xx | non-2xx by status | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for level in levels:
        r = level.result
        refused = ", ".join(
            f"{status}×{n}" for status, n in sorted(r.statuses.items()) if not 200 <= status < 300
        )
        errors = ", ".join(f"{kind} {n}" for kind, n in r.socket_errors.items()) or "0"
        lines.append(
            f"| /{level.endpoint} | {r.images_per_request} | {r.connections} | {level.repetition} | "
            f"{_fmt(r.images_per_s)} | {_fmt(level.limit_before)} | {_fmt(level.limit_after)} | "
            f"{_fmt(level.drift, 3)} | {_fmt(level.ratio, 3)} | {_fmt(r.latency_ms.get(50.0))} | "
            f"{_fmt(r.latency_ms.get(99.0))} | {r.ok} | {refused or '0'} | {errors} |"
        )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _met(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def _range(stats: Stats | None, digits: int) -> str:
    if stats is None:
        return "—"
    return f"{_fmt(stats.low, digits)} / {_fmt(stats.median, digits)} / {_fmt(stats.high, digits)}"


def wrk_summary_table(summaries: Sequence[WrkSummary]) -> str:
    """Per endpoint and connection count over the repeated runs: min / median / max of the served figure
    and of the bracketed ratio, the spread of each against the 10 % goal, and the median ratio
    against its goal."""
    lines = [
        "| endpoint | images/request | connections | runs | served img/s min / median / max | spread "
        "| ÷ limit min / median / max | spread | ÷ limit goal | met (median) "
        f"| spread ≤ {100 * SPREAD_GOAL:g} %: served / ÷ limit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for s in summaries:
        served, ratio = s.served_stats, s.ratio_stats
        lines.append(
            f"| /{s.endpoint} | {s.images_per_request} | {s.connections} | {s.runs} | {_range(served, 1)} | "
            f"{_percent(served.spread if served else None)} | {_range(ratio, 3)} | "
            f"{_percent(ratio.spread if ratio else None)} | {'—' if s.goal is None else f'≥ {s.goal:g}'} | "
            f"{_met(s.goal_met)} | {_met(s.spread_met(served))} / {_met(s.spread_met(ratio))} |"
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


def plot(
    runs: Sequence[ServerRun],
    raw_best: Throughput | None,
    p99_budget_ms: float,
    path: Path,
    wrk: Sequence[WrkSummary] = (),
) -> bool:
    """Throughput and p99 against concurrency, one line per server (where the closed-loop load generator
    ran), and where wrk ran, the served figure ÷ the bracketed limit against connections (median,
    min-max bars over the repeated runs). False where matplotlib is absent (it comes with the train
    extra, not with the serving install)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with_ratios = [summary for summary in wrk if summary.ratio_stats is not None]
    closed_loop = any(run.levels for run in runs) or not with_ratios
    panels = 2 * closed_loop + bool(with_ratios)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    if closed_loop:
        _plot_levels(axes[0][0], axes[0][1], runs, raw_best, p99_budget_ms)
    if with_ratios:
        _plot_ratios(axes[0][-1], with_ratios)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_levels(
    left: Any, right: Any, runs: Sequence[ServerRun], raw_best: Throughput | None, p99_budget_ms: float
) -> None:
    """The load generator's levels: throughput (with the sweep's limit) and p99 against concurrency."""
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


def _plot_ratios(axis: Any, summaries: Sequence[WrkSummary]) -> None:
    """wrk's served figure ÷ the bracketed limit, one line per endpoint, with the goal of each."""
    endpoints: dict[tuple[str, int], list[WrkSummary]] = {}
    for summary in summaries:
        endpoints.setdefault((summary.endpoint, summary.images_per_request), []).append(summary)
    for (endpoint, images), group in endpoints.items():
        stats = [summary.ratio_stats for summary in group]
        medians = [s.median for s in stats if s is not None]
        below = [s.median - s.low for s in stats if s is not None]
        above = [s.high - s.median for s in stats if s is not None]
        line = axis.errorbar(
            [summary.connections for summary in group],
            medians,
            yerr=[below, above],
            marker="o",
            capsize=3,
            label=f"/{endpoint} ({images} image{'s' if images > 1 else ''})",
        )
        goals = [(summary.connections, summary.goal) for summary in group if summary.goal is not None]
        if goals:
            xs, ys = zip(*goals, strict=True)
            axis.plot(xs, ys, linestyle="", marker="_", markersize=16, color=line[0].get_color())
    connections = sorted({summary.connections for summary in summaries})
    axis.set_xscale("log", base=2)
    axis.set_xticks(connections, [str(c) for c in connections])
    axis.minorticks_off()
    axis.set_xlabel("wrk connections")
    axis.set_ylabel("served ÷ limit measured around the run")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("wrk ÷ bracketed limit (dashes: goals)")
