"""Nothing phones home, nothing outside the app is served, uploads are not files.

The server runs as a user would start it — `bentoml serve` with BENTOML_DO_NOT_TRACK *unset* — inside
a network namespace that holds only a loopback interface (`unshare --net`, root only; the module is
skipped elsewhere). It must serve normally there (no download, lookup or licence check on start-up),
and BentoML's usage tracking must stay off: `__BENTOML_DEBUG_USAGE=True` makes BentoML log each
tracking event instead of sending it, so an empty record proves that none was attempted.

The test talks to the server from a thread that has joined the server's network namespace (setns(2)
applies to the calling thread only, so the rest of the test process stays where it was).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest

from tests.deadlines import COMMAND_S, STARTUP_S
from tests.reliability import raw_http
from tests.service import bento_server
from tests.service.bento_server import BentoServer, start_server
from tests.service.image_samples import encode, gradient

pytestmark = pytest.mark.integration

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
#: Strings that appear in files a traversal would reach: /etc/passwd and our own source.
SECRETS = ("root:x:0:0", "ENV_PREFIX = ")


def _network_namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return probe.returncode == 0


if not _network_namespaces_work():
    pytest.skip("needs `unshare --net` and `ip` (root)", allow_module_level=True)


def in_network_of(pid: int, call: Callable[[], T]) -> T:
    """Run `call` in a fresh thread that first joins the network namespace of process `pid`."""
    libc = ctypes.CDLL(None, use_errno=True)

    def joined() -> T:
        with open(f"/proc/{pid}/ns/net", "rb") as namespace:
            if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns: {os.strerror(errno)}")
        return call()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(joined).result()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    tmp = tmp_path_factory.mktemp("offline-server")
    wrapper = tmp / "bentoml-offline"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# bentoml as a user would run it (tracking variable unset), with loopback as the only network.\n"
        "exec unshare --net sh -c 'ip link set lo up && exec env -u BENTOML_DO_NOT_TRACK \"$@\"' "
        f'sh {bento_server.BENTOML} "$@"\n'
    )
    wrapper.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bento_server, "BENTOML", str(wrapper))
        running = start_server(
            tmp,
            {
                "ELUSERVE_MODEL": str(serving_model_path),
                "ELUSERVE_ACCESS_LOG": "true",  # the log shows the requests were served
                "__BENTOML_DEBUG_USAGE": "True",
            },
        )
    try:
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + STARTUP_S
        while os.readlink(f"/proc/{running.process.pid}/ns/net") == own and time.monotonic() < deadline:
            time.sleep(0.05)
        in_network_of(running.process.pid, lambda: running.wait_for("/readyz"))
        yield running
    finally:
        running.stop()


def test_the_server_has_no_network_but_loopback_and_serves(server: BentoServer) -> None:
    devices = Path(f"/proc/{server.process.pid}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]
    files = {"image": ("a.png", encode(gradient(40, 40), "PNG"))}
    response = in_network_of(
        server.process.pid, lambda: httpx.post(server.url + "/classify", files=files, timeout=30)
    )
    assert response.status_code == 200 and "label" in response.json()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_workers_run_with_tracking_off_though_the_user_did_not_set_it(server: BentoServer) -> None:
    assert "BENTOML_DO_NOT_TRACK" not in environ(server.process.pid)  # as a user started it
    workers = psutil.Process(server.process.pid).children(recursive=True)
    assert len(workers) >= 2
    for worker in workers:
        assert environ(worker.pid).get("BENTOML_DO_NOT_TRACK") == "True", worker.cmdline()


def test_importing_the_service_turns_bentoml_usage_tracking_off() -> None:
    """BentoML caches its reading of the variable; the service must win even after a first reading."""
    code = (
        "from bentoml._internal.utils.analytics.usage_stats import do_not_track\n"
        "before = do_not_track()\n"
        "import eluserve.service.app\n"
        "print(before, do_not_track())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_DO_NOT_TRACK"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=bento_server.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/static/..%2f..%2fetc/passwd",
        "/static_content/../../../../etc/passwd",
        "/static_content/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static_content/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static_content/..%5c..%5c..%5c..%5cetc%5cpasswd",
        "/static_content/....//....//....//etc/passwd",
        "/docs/..%2f..%2fservice%2fconfig.py",
        "/static_content/..%2f..%2f..%2f..%2f..%2f..%2fwork%2fmain%2fservice%2fconfig.py",
        "/model/..%2f..%2fetc%2fpasswd",
        "/classify/../../etc/passwd",
    ],
)
def test_no_url_reads_a_file_outside_the_app(server: BentoServer, path: str) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    answer = in_network_of(server.process.pid, lambda: raw_http.send(server.url, head, [], timeout=15))
    assert answer.status is not None and 400 <= answer.status < 500, answer
    assert not any(secret in str(answer.body) for secret in SECRETS)


@pytest.mark.parametrize(
    "filename",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "../../tmp/eluserve-written",
        "a\x00b.png",
    ],
)
def test_upload_filenames_are_never_used_as_paths(server: BentoServer, filename: str) -> None:
    files = {"image": (filename, encode(gradient(24, 24), "PNG"))}
    response = in_network_of(
        server.process.pid, lambda: httpx.post(server.url + "/classify", files=files, timeout=30)
    )
    assert response.status_code == 200 and "label" in response.json(), response.text
    assert not any(secret in response.text for secret in SECRETS)
    assert not Path("/tmp/eluserve-written").exists()


def test_no_usage_event_was_attempted_from_start_to_shutdown(server: BentoServer) -> None:
    """Last: stop the server (BentoML reports a CLI event on exit) once a periodic report would be due."""
    files = {"image": ("a.png", encode(gradient(24, 24), "PNG"))}
    in_network_of(server.process.pid, lambda: httpx.post(server.url + "/classify", files=files, timeout=30))
    with contextlib.suppress(psutil.NoSuchProcess):
        started = psutil.Process(server.process.pid).create_time()
        time.sleep(max(0.0, started + 7.0 - time.time()))  # debug mode reports every 5 s
    server.stop()
    log = server.log()
    assert "path=/classify" in log
    assert "Tracking" not in log, [line for line in log.splitlines() if "Tracking" in line]
