"""A real Prometheus server for end-to-end tests of eluserve's metrics.

`promtool` proves that rules parse and behave on synthetic series; only a running Prometheus proves that
what a live server exposes is scraped, named and labelled the way alerts.yml and the Grafana dashboard
expect. `PrometheusServer` starts the `prometheus` binary (Debian's package, see
deploy/install-prometheus.sh) on 127.0.0.1 with a free port, a throw-away storage directory and the
configuration rendered from deploy/prometheus/prometheus.template.yml, so the scrape job is the very
`eluserve` job the alerts select, with alerts.yml loaded. Use it as a context manager::

    with PrometheusServer("127.0.0.1:3000") as prom:
        prom.wait_for('up{job="eluserve"} == 1')
        prom.query("sum(eluserve_images_total)")
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Any, Self

import httpx

from load_tests.servers import free_port
from tests.deadlines import REQUEST_S, STARTUP_S
from tests.deploy.support import DEPLOY_DIR, INSTALL_PROMETHEUS_HINT

CONFIG_TEMPLATE = DEPLOY_DIR / "prometheus" / "prometheus.template.yml"
ALERTS_FILE = DEPLOY_DIR / "prometheus" / "alerts.yml"


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or answered a query with an error."""


def render_config(target: str, scrape_interval: str = "1s", rules_file: Path = ALERTS_FILE) -> str:
    """Render prometheus.template.yml for one target; Template.substitute fails on a missing placeholder."""
    return Template(CONFIG_TEMPLATE.read_text()).substitute(
        TARGET=target, SCRAPE_INTERVAL=scrape_interval, RULES_FILE=str(rules_file)
    )


class PrometheusServer:
    """A `prometheus` process scraping `target` (host:port) every `scrape_interval`, for one `with` block.

    Everything it writes (configuration, TSDB, log) lives in a temporary directory removed on exit, so
    tests never share state and leave nothing behind.
    """

    def __init__(
        self,
        target: str,
        *,
        scrape_interval: str = "1s",
        rules_file: Path = ALERTS_FILE,
        startup_timeout: float = STARTUP_S,
    ) -> None:
        self.target = target
        self.scrape_interval = scrape_interval
        self.rules_file = rules_file
        self.startup_timeout = startup_timeout
        self.url = ""
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    def __enter__(self) -> Self:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError(f"the prometheus binary is not on PATH; {INSTALL_PROMETHEUS_HINT}")
        self._workdir = tempfile.TemporaryDirectory(prefix="eluserve-prometheus-")
        workdir = Path(self._workdir.name)
        config = workdir / "prometheus.yml"
        config.write_text(render_config(self.target, self.scrape_interval, self.rules_file))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with (workdir / "prometheus.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._client = httpx.Client(base_url=self.url, timeout=REQUEST_S)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and delete its directory; safe to repeat."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def log(self) -> str:
        """What the server has logged so far: the first thing to read when a test fails."""
        if self._workdir is None:
            return ""
        return (Path(self._workdir.name) / "prometheus.log").read_text(errors="replace")

    def _wait_ready(self) -> None:
        """Poll /-/ready: the port is bound early, but queries work only once the TSDB is open."""
        assert self._process is not None and self._client is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self._process.returncode} during startup:\n{self.log()}"
                )
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        raise PrometheusError(f"prometheus was not ready after {self.startup_timeout} s:\n{self.log()}")

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an /api/v1 endpoint and return its `data`, raising with Prometheus' own error text."""
        if self._client is None:
            raise PrometheusError("the server is not running: use PrometheusServer inside a `with` block")
        response = self._client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(
                f"{path} {params or ''} failed: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, promql: str) -> list[Any]:
        """Evaluate an instant query now; the `result` list of /api/v1/query.

        For a vector each element is {"metric": {label: value}, "value": [timestamp, "number"]}; for a
        scalar or string the list is [timestamp, "value"].
        """
        return list(self._api("query", {"query": promql})["result"])

    def wait_for(self, promql: str, timeout: float = REQUEST_S) -> list[Any]:
        """Poll `promql` until its result is not empty.

        Prometheus hands newly discovered targets to its scrapers in 5 s batches, so the first samples of
        a fresh server arrive about 5 s after it is ready; asserting on a plain `query` right away fails.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"{promql!r} stayed empty for {timeout} s; targets: {self._api('targets')}"
                )
            time.sleep(0.2)

    def rule_groups(self) -> list[dict[str, Any]]:
        """The rule groups the server loaded (/api/v1/rules), with each rule's health and state."""
        return list(self._api("rules")["groups"])
