"""`load_tests.wrk` against a tiny real HTTP server that refuses every third request with 429.

The server records what it received, so the checks cover both directions: wrk sends the multipart
body and Content-Type as built, and the per-status counts and served images/s come out of wrk's answers.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from load_tests.wrk import (
    WrkError,
    cifar_body,
    listening_processes,
    lua_string,
    markdown_table,
    run_wrk,
    sweep,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]


@dataclass
class Received:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    bodies: Counter[bytes] = field(default_factory=Counter)
    content_types: Counter[str] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)


@pytest.fixture
def server() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with received.lock:
                received.requests += 1
                status = 429 if received.requests % 3 == 0 else 200
                received.bodies[body] += 1
                received.content_types[self.headers["Content-Type"]] += 1
                received.answered[status] += 1
            payload = b'{"ok": true}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/classify_batch", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_counts_statuses_and_serves_only_2xx_images(server: tuple[str, Received]) -> None:
    url, received = server
    body, content_type = cifar_body(16)
    result = run_wrk(url, body, content_type, connections=4, duration_s=1, images_per_request=16)

    assert result.requests > 30
    assert sum(result.statuses.values()) == result.requests
    assert set(result.statuses) == {200, 429}
    # Every third request the server saw was a 429; wrk may miss the last few in flight when it stops.
    assert result.requests <= received.requests <= result.requests + 4
    assert abs(result.count(429) - received.answered[429]) <= 4
    assert result.ok == result.count(200)
    assert result.images_per_s == pytest.approx(result.ok * 16 / result.duration_s)
    assert result.server_errors == 0
    assert 0 < result.latency_ms[50.0] <= result.latency_ms[99.0] <= result.latency_max_ms
    # The body and its boundary arrived exactly as built, on every request.
    assert received.bodies == Counter({body: received.requests})
    assert received.content_types == Counter({content_type: received.requests})
    assert body.count(b'name="images"') == 16


def test_single_image_body_uses_the_image_field() -> None:
    body, content_type = cifar_body(1)
    assert body.count(b'name="image"') == 1
    assert content_type.startswith("multipart/form-data; boundary=")


def test_unreachable_url_is_an_error_not_an_empty_result() -> None:
    body, content_type = cifar_body(1)
    with pytest.raises(WrkError):
        run_wrk("http://127.0.0.1:1/classify", body, content_type, connections=1, duration_s=1)


def test_lua_string_escapes_quotes_backslashes_and_non_ascii() -> None:
    assert lua_string('a"b\\c') == '"a\\34b\\92c"'
    assert lua_string("é") == '"\\195\\169"'


def test_sweep_interleaves_urls_and_measures_the_listening_processes_cpu(
    server: tuple[str, Received],
) -> None:
    url, _ = server
    results = sweep([url, url], [2], images=16, duration_s=1, cpu=True)
    assert [r.url for r in results] == [url, url]
    # The tiny server runs in this process: it is what listens on the port, and so does a forked child
    # that inherited the socket, as BentoML's workers inherit their arbiter's.
    assert [p.pid for p in listening_processes(url)] == [os.getpid()]
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
    child.start()
    try:
        assert sorted(p.pid for p in listening_processes(url)) == sorted([os.getpid(), child.pid])
    finally:
        child.terminate()
        child.join(10)
    for result in results:
        assert result.server_cpu_s is not None and result.server_cpu_s > 0
        assert result.images_per_cpu_s == pytest.approx(result.ok * 16 / result.server_cpu_s)
    table = markdown_table(results)
    assert table.count(url) == 2 and "img/CPU-s" in table
