"""Checks of deploy/grafana/eluserve-dashboard.json without a Grafana server.

Grafana accepts almost any JSON and shows broken panels as empty, so the checks are: the import
contract (schema version, datasource variable), a layout without overlaps, the panels the dashboard
promises, metric names that exist, and every query parsed as PromQL by promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deadlines import COMMAND_S
from tests.deploy.known_metrics import KNOWN_METRICS, selected_metrics
from tests.deploy.support import DEPLOY_DIR

DASHBOARD_FILE = DEPLOY_DIR / "grafana" / "eluserve-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Values for Grafana's variables that make a query plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$job": "eluserve",
    "$namespace": ".*",
    "$instance": ".*",
    "$model": ".*",
    "$version": ".*",
}
# The dashboard's panel list: a word of each required panel's title.
REQUIRED_PANELS = (
    "Request rate",
    "Error rate",
    "Latency percentiles",
    "Batch size",
    "Inference vs preprocessing",
    "Predictions per class",
    "Confidence distribution",
    "execution provider",
    "In-progress requests",
)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's series selector."""
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"])
            assert selector, f"variable {variable['name']}: expected label_values(selector, label)"
            yield f"variable {variable['name']}", selector.group(1)


def as_promql(query: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        query = query.replace(variable, value)
    assert "$" not in query, f"unknown Grafana variable left in {query!r}"
    return query


def test_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None, "a fixed id would overwrite another dashboard on import"
    assert dashboard["uid"] == "eluserve"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]


def test_layout_has_unique_ids_and_no_overlaps() -> None:
    panels = load_dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_required_panels_are_present() -> None:
    titles = [panel["title"] for panel in data_panels(load_dashboard())]
    for required in REQUIRED_PANELS:
        assert any(required.lower() in title.lower() for title in titles), f"no panel for {required!r}"


def test_queries_use_only_known_metrics() -> None:
    for where, query in queries(load_dashboard()):
        unknown = selected_metrics(query) - KNOWN_METRICS
        assert not unknown, f"{where} queries metrics nobody exposes: {sorted(unknown)}"


@pytest.mark.integration
def test_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """Every query becomes a recording rule, so `promtool check rules` parses all of them at once."""
    rules = [
        {"record": f"eluserve_dashboard:query_{index}", "expr": as_promql(query), "labels": {"where": where}}
        for index, (where, query) in enumerate(queries(load_dashboard()))
    ]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
