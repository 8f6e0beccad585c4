"""Checks of deploy/prometheus/: the alerting rules, their unit tests and the Prometheus configurations.

promtool does the parsing and rule evaluation (it is what Prometheus itself runs); the pure-Python tests
guard what promtool does not: that every alert keeps a firing and a not-firing unit test, that alerts
carry severity, runbook and the `eluserve` job, and that queried metric names exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deadlines import COMMAND_S
from tests.deploy.known_metrics import KNOWN_METRICS, selected_metrics
from tests.deploy.prometheus_server import ALERTS_FILE, render_config
from tests.deploy.support import DEPLOY_DIR

PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"
ALERTS_TEST_FILE = PROMETHEUS_DIR / "alerts_test.yml"
README = DEPLOY_DIR / "README.md"


def run_promtool(promtool: str, *args: str | Path) -> str:
    """Run promtool; fail the test with its whole output (it explains what is wrong) unless it succeeds."""
    proc = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=COMMAND_S, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.integration
def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS_FILE)
    assert f"SUCCESS: {len(alerting_rules())} rules found" in output


@pytest.mark.integration
def test_alert_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", ALERTS_TEST_FILE)


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alerting_rules():
        name = rule["alert"]
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name} needs a unit test where it fires and one where it does not"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_is_actionable(rule: dict[str, Any]) -> None:
    """Severity routes the page, `for` stops flapping, and the annotations say what to do next."""
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule.get("for"), "an alert without `for:` fires on a single bad evaluation"
    assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()
    assert 'job="eluserve"' in rule["expr"], "every rule must select the eluserve scrape job"


def test_runbook_links_point_at_readme_sections() -> None:
    headings = {
        github_anchor(line.lstrip("#")) for line in README.read_text().splitlines() if line.startswith("#")
    }
    for rule in alerting_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "deploy/README.md" and anchor in headings, (
            f"{rule['alert']}: no README section {anchor!r}"
        )


def test_alerts_query_only_known_metrics() -> None:
    for rule in alerting_rules():
        unknown = selected_metrics(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{rule['alert']} queries metrics nobody exposes: {sorted(unknown)}"


@pytest.mark.integration
def test_local_config_is_valid(promtool: str) -> None:
    """prometheus.yml and, through its rule_files, alerts.yml as Prometheus would load them."""
    run_promtool(promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml")


@pytest.mark.integration
def test_config_template_renders_to_a_valid_config(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(render_config("127.0.0.1:3000", "1s"))
    output = run_promtool(promtool, "check", "config", config)
    assert "SUCCESS: 1 rule files found" in output


@pytest.mark.integration
def test_kubernetes_config_is_valid_with_static_discovery(promtool: str, tmp_path: Path) -> None:
    """Debian builds Prometheus without kubernetes_sd_configs, so its promtool rejects that block.

    Swapping the discovery for a static target still lets promtool check everything else in the file,
    the relabelling regexes above all.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "eluserve"
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["pod.invalid:3000"]}]
    config["rule_files"] = [str(ALERTS_FILE)]
    rendered = tmp_path / "prometheus-kubernetes.yml"
    rendered.write_text(yaml.safe_dump(config))
    run_promtool(promtool, "check", "config", rendered)
