"""`eluserve bench` under wrk: each run held against the limit measured right before and after it, and
the `--repeat` runs summarised. Fabricated wrk results and limits; no server runs and nothing is timed:
`wait_quiet` waits on a fake clock, for a process whose CPU time follows a script.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import load_tests.wrk
from load_tests.__main__ import build_parser
from load_tests.bench import BenchConfig, _run_wrk
from load_tests.fixtures import Attachment
from load_tests.report import (
    ServerRun,
    Stats,
    WrkLevel,
    plot,
    summarize,
    wrk_summary_table,
    wrk_table,
)
from load_tests.wrk import WrkResult, wait_quiet

URL = "http://127.0.0.1:3000"


def _result(endpoint: str, connections: int, images_per_s: float, images: int = 1) -> WrkResult:
    """A wrk run of 10 s that served `images_per_s` (2xx) and had three 429s."""
    ok = round(images_per_s * 10 / images)
    return WrkResult(
        url=f"{URL}/{endpoint}",
        connections=connections,
        images_per_request=images,
        duration_s=10.0,
        requests=ok + 3,
        statuses={200: ok, 429: 3},
        latency_ms={50.0: 12.0, 90.0: 20.0, 99.0: 31.5},
        latency_max_ms=40.0,
    )


def test_a_level_is_held_against_the_mean_of_its_brackets() -> None:
    level = WrkLevel(_result("classify", 32, 1200.0), limit_before=1500.0, limit_after=1300.0, repetition=2)
    assert level.endpoint == "classify"
    assert level.limit == pytest.approx(1400.0)
    assert level.ratio == pytest.approx(1200.0 / 1400.0)
    assert level.drift == pytest.approx(1300.0 / 1500.0)
    as_json = level.to_dict()
    assert as_json["repetition"] == 2 and as_json["images_per_s"] == 1200.0
    assert as_json["limit"] == 1400.0 and as_json["ratio"] == pytest.approx(0.8571, abs=1e-4)
    assert as_json["drift"] == pytest.approx(0.8667, abs=1e-4)


def test_without_a_limit_there_is_no_ratio_and_no_drift() -> None:
    for before, after in ((None, None), (1500.0, None), (0.0, 0.0)):
        level = WrkLevel(_result("classify", 32, 1200.0), before, after)
        assert level.ratio is None and level.drift is None


def test_stats_and_spread() -> None:
    stats = Stats.of([1150.0, 1000.0, 1100.0])
    assert stats == Stats(1000.0, 1100.0, 1150.0)
    assert stats.spread == pytest.approx(0.15)
    assert Stats.of([]) is None
    assert Stats(0.0, 5.0, 10.0).spread is None


def _three_runs_on_a_drifting_host() -> list[WrkLevel]:
    """Three passes over /classify c=16,32 and /classify_batch c=16,64. The host slows down and speeds
    up between passes; the service keeps ~0.80 (single) and ~0.96 (batch) of the limit throughout."""
    limits = {1: 1250.0, 2: 1430.0, 3: 1380.0}
    levels = []
    for repetition, limit in limits.items():
        for endpoint, images, connections, ratio in (
            ("classify", 1, 16, 0.78),
            ("classify", 1, 32, 0.80 + 0.002 * repetition),
            ("classify_batch", 16, 16, 0.96),
            ("classify_batch", 16, 64, 0.90),
        ):
            served = ratio * limit
            levels.append(WrkLevel(_result(endpoint, connections, served, images), limit, limit, repetition))
    return levels


def test_summaries_group_the_repeated_runs_and_check_both_spreads() -> None:
    summaries = summarize(_three_runs_on_a_drifting_host())
    assert [(s.endpoint, s.images_per_request, s.connections, s.runs) for s in summaries] == [
        ("classify", 1, 16, 3),
        ("classify", 1, 32, 3),
        ("classify_batch", 16, 16, 3),
        ("classify_batch", 16, 64, 3),
    ]
    single = summaries[1]
    served, ratio = single.served_stats, single.ratio_stats
    assert served is not None and ratio is not None
    assert (served.low, served.high) == pytest.approx((0.802 * 1250, 0.804 * 1430), abs=0.1)
    assert served.median == pytest.approx(0.806 * 1380, abs=0.1)
    # The served figure moved with the host by 15 %; divided by the bracketed limit, under 1 %.
    assert served.spread == pytest.approx(0.804 * 1430 / (0.802 * 1250) - 1, abs=1e-3)
    assert single.spread_met(served) is False
    assert ratio.spread == pytest.approx(0.806 / 0.802 - 1, abs=1e-3)
    assert single.spread_met(ratio) is True
    # The ratio goals, on the median: single images at 32 connections only, batches at 8-32.
    assert [s.goal for s in summaries] == [None, 0.85, 0.95, None]
    assert [s.goal_met for s in summaries] == [None, False, True, None]


def test_the_spread_goal_is_judged_only_over_three_runs() -> None:
    two = summarize([level for level in _three_runs_on_a_drifting_host() if level.repetition < 3])
    assert two[1].served_stats is not None and two[1].served_stats.spread > 0.1
    assert two[1].spread_met(two[1].served_stats) is None


def test_tables_show_each_run_and_the_summary() -> None:
    levels = _three_runs_on_a_drifting_host()
    levels[0] = WrkLevel(levels[0].result, 1300.0, 1200.0, 1)
    runs = wrk_table(levels).splitlines()
    assert len(runs) == 2 + 12
    assert runs[2] == (
        "| /classify | 1 | 16 | 1 | 975.0 | 1,300.0 | 1,200.0 | 0.923 | 0.780 | 12.0 | 31.5 | 9750 "
        "| 429×3 | 0 |"
    )
    summary = wrk_summary_table(summarize(levels)).splitlines()
    assert summary[3] == (
        "| /classify | 1 | 32 | 3 | 1,002.5 / 1,112.3 / 1,149.7 | 14.7 % | 0.802 / 0.804 / 0.806 "
        "| 0.5 % | ≥ 0.85 | **no** | **no** / yes |"
    )
    assert "| /classify_batch | 16 | 16 | 3 |" in summary[4] and "| ≥ 0.95 | yes |" in summary[4]
    unbracketed = wrk_table([WrkLevel(levels[0].result, None, None)])
    assert "| 975.0 | — | — | — | — |" in unbracketed


def test_summaries_go_into_json() -> None:
    (first, *_) = summarize(_three_runs_on_a_drifting_host())
    document = json.loads(json.dumps(first.to_dict()))
    assert document["runs"] == 3 and document["ratio_goal"] is None
    assert document["ratio"]["median"] == pytest.approx(0.78)
    assert document["served_images_per_s"]["min"] == pytest.approx(975.0)
    assert document["served_spread_met"] is False and document["ratio_spread_met"] is True


def test_plot_draws_the_bracketed_ratios_without_loadgen_levels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    summaries = summarize(_three_runs_on_a_drifting_host())
    assert plot([ServerRun("service")], None, 250.0, path, summaries)
    assert path.stat().st_size > 0


def test_run_wrk_brackets_each_run_with_the_measurements_around_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run's limit is measured after the server went quiet, right before and right after it; one
    measurement between two runs is the after of the first and the before of the second."""
    events: list[str] = []
    served = itertools.count(1000, 10)
    limits = itertools.count(1500, 5)

    def fake_wrk(url: str, body: bytes, content_type: str, **kwargs: float) -> WrkResult:
        events.append(f"wrk {url.rsplit('/', 1)[-1]} c={kwargs['connections']}")
        endpoint, images = url.rsplit("/", 1)[-1], int(kwargs["images_per_request"])
        return _result(endpoint, int(kwargs["connections"]), next(served), images)

    def probe() -> float:
        events.append("probe")
        return float(next(limits))

    def fake_wait_quiet(processes: object) -> float:
        events.append("quiet")
        return 0.0

    monkeypatch.setattr(load_tests.wrk, "run_wrk", fake_wrk)
    monkeypatch.setattr(load_tests.wrk, "wait_quiet", fake_wait_quiet)
    config = BenchConfig(wrk_concurrencies=(1, 4), repeat=2)
    run = ServerRun("service")
    uploads = [Attachment(f"{i}.jpg", "image/jpeg", b"jpeg%d" % i) for i in range(3)]
    _run_wrk(config, URL, uploads, run, probe, lambda: [])

    assert [(level.repetition, level.endpoint, level.result.connections) for level in run.wrk] == [
        (repetition, endpoint, connections)
        for repetition in (1, 2)
        for endpoint in ("classify", "classify_batch")
        for connections in (1, 4)
    ]
    assert events[:3] == ["quiet", "probe", "wrk classify c=1"]
    assert events.count("probe") == len(run.wrk) + 1
    assert all(events[i - 1] == "quiet" for i, event in enumerate(events) if event == "probe")
    assert run.wrk[0].limit_before == 1500.0 and run.wrk[-1].limit_after == 1500.0 + 5 * len(run.wrk)
    for earlier, later in itertools.pairwise(run.wrk):
        assert earlier.limit_after == later.limit_before
    assert run.wrk[1].ratio == pytest.approx(1010.0 / 1507.5)
    assert {level.result.images_per_request for level in run.wrk if level.endpoint == "classify_batch"} == {
        16
    }


def test_run_wrk_without_a_limit_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_tests.wrk, "run_wrk", lambda url, *_, **kw: _result("classify", 1, 500.0))
    monkeypatch.setattr(load_tests.wrk, "wait_quiet", pytest.fail)
    run = ServerRun("service")
    _run_wrk(
        BenchConfig(wrk_concurrencies=(1,)), URL, [Attachment("a.jpg", "image/jpeg", b"a")], run, None, list
    )
    assert len(run.wrk) == 2 and all(level.ratio is None for level in run.wrk)


def test_repeat_and_bracket_seconds_options() -> None:
    args = build_parser().parse_args(["bench", "--repeat", "3", "--bracket-seconds", "1.5"])
    assert (args.repeat, args.bracket_seconds) == (3, 1.5)
    defaults = build_parser().parse_args(["bench"])
    assert defaults.repeat is None and defaults.bracket_seconds is None
    assert (BenchConfig().repeat, BenchConfig().bracket_seconds) == (1, 2.0)
    for bad in ("0", "-1", "2,3", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--repeat", bad])


class BusyThenIdle:
    """A server process, as `wait_quiet` sees it, on a fake clock: one core busy for `busy_s`, then
    idle; `sleep` moves the clock (it is `wait_quiet`'s `time.sleep` and `time.perf_counter`)."""

    def __init__(self, busy_s: float) -> None:
        self.busy_s = busy_s
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def cpu_times(self) -> SimpleNamespace:
        return SimpleNamespace(user=min(self.now, self.busy_s), system=0.0)


def test_wait_quiet_waits_out_a_busy_server_and_no_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    process = BusyThenIdle(busy_s=1.0)
    monkeypatch.setattr(load_tests.wrk, "time", process)
    waited = wait_quiet([process], timeout_s=10.0)  # type: ignore[list-item]
    assert 0.6 <= waited < 3.0
    again = wait_quiet([process], window_s=0.1, timeout_s=10.0)  # type: ignore[list-item]
    assert again < 0.5
    never_quiet = wait_quiet([process], cores=-1.0, window_s=0.1, timeout_s=0.3)  # type: ignore[list-item]
    assert never_quiet == pytest.approx(0.3, abs=0.15)
