"""Runners that turn files into rows: in-process (`LocalRunner`) or a running service (`ServerRunner`).

A runner says where the model runs; the inference engine it runs on (ONNX Runtime, OpenVINO) is
`eluserve.core.engines`'s choice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from eluserve.classify.files import UsageError, chunks, in_order, read_image_file
from eluserve.classify.rows import Row
from eluserve.core.engines import AUTO
from eluserve.core.errors import ClientError, ConfigError, InvalidTopK, ModelFormatError
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.results import DEFAULT_TOP_K, parse_top_k
from eluserve.core.session import ModelSession, available_cores

DEFAULT_BATCH_SIZE = 64
DEFAULT_CONCURRENCY = 4
#: A request the server refuses as overloaded (429) or not ready (503) is retried this long.
SERVER_RETRY_SECONDS = 60.0
SERVER_TIMEOUT_SECONDS = 120.0


def quiet_http_log() -> None:
    """httpx logs every request at INFO, which would be one line per batch under the progress bar."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


class ServerFailed(Exception):
    """The service stopped answering usefully mid-run; rows written so far stay, `--resume` continues."""


class Runner(Protocol):
    """Turns a stream of paths into a stream of rows, in the same order."""

    @property
    def model(self) -> str:
        """`name:version` of the model that classifies."""
        ...

    @property
    def labels(self) -> Sequence[str]: ...

    def classify(self, paths: Iterable[str]) -> Iterator[Row]: ...


@contextlib.contextmanager
def usage_errors_of_loading(model: str | Path) -> Iterator[None]:
    """A model that cannot be loaded is a `UsageError` naming the file (exit 2), for every runner."""
    try:
        yield
    except (FileNotFoundError, ModelFormatError, ConfigError) as exc:
        hint = (
            " (export one with `eluserve export`, or pass --model)"
            if Path(model) == default_model_file()
            else ""
        )
        raise UsageError(f"{exc}{hint}") from exc
    except Exception as exc:  # onnx/onnxruntime raise their own types for a file that is no model
        raise UsageError(f"cannot load {model} as an ONNX model: {type(exc).__name__}: {exc}") from exc


#: Reads one file with a byte bound: `read_image_file`'s signature and errors.
Reader = Callable[[str, int], bytes]


class LocalRunner:
    """In-process: worker threads each read, decode and classify whole batches, on model sessions that
    they take turns on.

    With one session (of several threads) the workers overlap reading and decoding with the inference
    of another batch. With one session of one thread per core (`load`'s default), each batch runs on a
    single core from file to result: no inference waits for its slowest thread while another thread
    decodes on that core, which a multi-threaded session does once per batch. The Ray runner's CPU
    actors run this same runner on their share of the files (`results`), so that both runners give the
    same rows by construction.
    """

    def __init__(
        self,
        session: ModelSession,
        top_k: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        read: Reader = read_image_file,
        more_sessions: Sequence[ModelSession] = (),
    ) -> None:
        self.session = session
        #: The sessions the workers take turns on; all of one model on one engine.
        self.sessions = (session, *more_sessions)
        self.top_k = top_k
        self.batch_size = batch_size
        #: Worker threads: one more than the sessions or decoding threads asked for, so that a batch
        #: is read and decoded while every session classifies one (with one session of one thread, as
        #: a Ray actor runs, one thread decodes while the other classifies).
        self.workers = max(threads or available_cores(), len(self.sessions)) + 1
        #: The service's default limits, so that both runners refuse the same files.
        self.limits = Limits()
        #: How a path becomes bytes: local files here; the Ray runner's actors also read URIs.
        self.read = read

    @classmethod
    def load(
        cls,
        model: str | Path,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        engine: str = AUTO,
        sessions: int | None = None,
    ) -> LocalRunner:
        """Load `model` on `engine` (`eluserve.core.engines`: auto times the engines that pass parity
        with ONNX Runtime and keeps the fastest) as `sessions` sessions (default: one per thread) that
        share `threads` (default: every core); a missing or malformed file is a `UsageError` naming it."""
        threads = threads or available_cores()
        count = max(1, min(sessions or threads, threads))
        each = threads // count
        with usage_errors_of_loading(model):
            first = ModelSession.from_path(model, engine=engine, intra_op_threads=each)
            more = [
                ModelSession.from_path(
                    model, engine=first.engine, precision=first.precision, intra_op_threads=each
                )
                for _ in range(count - 1)
            ]
        return cls(
            first, checked_top_k(top_k, first.info.num_classes), batch_size, threads, more_sessions=more
        )

    @property
    def model(self) -> str:
        return self.session.info.tag

    @property
    def labels(self) -> Sequence[str]:
        return self.session.labels

    def classify(self, paths: Iterable[str]) -> Iterator[Row]:
        for path, result in self.results(paths):
            yield Row.from_result(path, result)

    def results(self, paths: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(path, result object of the HTTP contract) per file, in order; a failed file's is its error."""
        # One task per batch, not per file: a plain JPEG decodes in ~25 µs, about what a future per
        # file cost in submitting, waking and GIL hand-offs. OpenVINO and ONNX Runtime release the GIL.
        free: queue.SimpleQueue[ModelSession] = queue.SimpleQueue()
        for session in self.sessions:
            free.put(session)

        def work(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
            batch = self.prepare_batch(paths)
            session = free.get()
            try:
                return list(self._classify_batch(batch, session))
            finally:
                free.put(session)

        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="eluserve-classify") as pool,
            contextlib.closing(
                in_order(pool, work, chunks(paths, self.batch_size), self.workers + 1)
            ) as batches,
        ):
            for results in batches:
                yield from results

    def prepare_batch(self, paths: list[str]) -> list[tuple[str, np.ndarray | ClientError]]:
        """`prepare` for each of `paths`, in order."""
        return [self.prepare(path) for path in paths]

    def prepare(self, path: str) -> tuple[str, np.ndarray | ClientError]:
        """Read, decode and single-crop one file as the service would; a failure is returned, not raised."""
        try:
            data = self.read(path, self.limits.max_image_bytes)
            return path, load_image(data, self.session.info.preprocessing, self.limits)
        except ClientError as exc:
            return path, exc

    def _classify_batch(
        self, batch: list[tuple[str, np.ndarray | ClientError]], session: ModelSession
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        crops = [item for _, item in batch if isinstance(item, np.ndarray)]
        results = iter(session.classify(crops, top_k=self.top_k))
        for path, item in batch:
            if isinstance(item, ClientError):
                yield path, {"error": item.to_dict()}
            else:
                yield path, next(results)


class ServerRunner:
    """A running eluserve service: `POST /classify_batch` with up to `concurrency` requests in flight.

    Files are read here and refused before upload when over the service's default `max_image_bytes`,
    so a stray multi-gigabyte file never travels. A request the service finds too large
    (`too_many_images`, `request_too_large`) is split in halves, and later requests stay that small.
    """

    def __init__(
        self,
        url: str,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.limits = Limits()
        #: Lowered when the server says a request had too many images or bytes.
        self._request_size = batch_size
        self._aborted = threading.Event()
        self._client = httpx.Client(
            base_url=self.url,
            timeout=SERVER_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        try:
            self.description = self._describe()
            self.top_k = checked_top_k(top_k, len(self.description["labels"]))
        except BaseException:
            self._client.close()
            raise

    def _describe(self) -> dict[str, Any]:
        try:
            response = self._client.get("/model", timeout=10.0)
        except httpx.TransportError as exc:
            raise UsageError(
                f"cannot reach an eluserve service at {self.url} ({type(exc).__name__}: {exc}); start one "
                "with `bentoml serve . --port 3000` or check --server"
            ) from exc
        try:
            description = response.json()
            labels, model = description["labels"], description["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"{self.url}/model answered {response.status_code} without an eluserve model description; "
                "is --server an eluserve service?"
            ) from exc
        if not (isinstance(labels, list) and labels and isinstance(model, str)):
            raise UsageError(f"{self.url}/model names no model or lists no labels: {description}")
        return description

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServerRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def model(self) -> str:
        return str(self.description["model"])

    @property
    def labels(self) -> Sequence[str]:
        return tuple(self.description["labels"])

    def classify(self, paths: Iterable[str]) -> Iterator[Row]:
        self._aborted.clear()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="eluserve-http") as pool:
            # Twice the concurrency: the next requests' files are read while the current ones run.
            requests = in_order(
                pool, self._classify_chunk, chunks(paths, self.batch_size), 2 * self.concurrency
            )
            try:
                for rows in requests:
                    yield from rows
            finally:
                self._aborted.set()
                requests.close()

    def _classify_chunk(self, paths: list[str]) -> list[Row]:
        rows: list[Row | None] = [None] * len(paths)
        uploads: list[tuple[int, bytes]] = []
        for slot, path in enumerate(paths):
            try:
                uploads.append((slot, read_image_file(path, self.limits.max_image_bytes)))
            except ClientError as exc:
                rows[slot] = Row.failed(path, exc.code, exc.message)
        for part in chunks(uploads, self._request_size):
            for (slot, _), result in zip(part, self._post(part), strict=True):
                rows[slot] = Row.from_result(paths[slot], result)
        return [row for row in rows if row is not None]

    def _post(self, uploads: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """Results of one request, split in halves while the server says it is too large."""
        response = self._send(uploads)
        if response.status_code == 200:
            try:
                results = response.json()["results"]
            except (ValueError, KeyError, TypeError):
                results = None
            if not isinstance(results, list) or len(results) != len(uploads):
                raise ServerFailed(
                    f"{self.url}/classify_batch answered {len(uploads)} images with {results!r}"
                )
            return results
        error = _error_of(response)
        if response.status_code == 413 and error["code"] in ("too_many_images", "request_too_large"):
            if len(uploads) == 1:
                return [{"error": error}]
            half = len(uploads) // 2
            self._request_size = min(self._request_size, half)
            return self._post(uploads[:half]) + self._post(uploads[half:])
        raise ServerFailed(
            f"{self.url}/classify_batch answered {response.status_code} {error['code']}: {error['message']}"
        )

    def _send(self, uploads: list[tuple[int, bytes]]) -> httpx.Response:
        """POST, retrying while the server is overloaded, starting, or briefly unreachable."""
        # Neutral part names: the service ignores them, and a file name need not be encodable.
        files = [("images", (f"image-{slot}", data)) for slot, data in uploads]
        deadline = time.monotonic() + SERVER_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                response = self._client.post("/classify_batch", files=files, data={"top_k": str(self.top_k)})
                if response.status_code not in (429, 503):
                    return response
                problem = f"{response.status_code} {_error_of(response)['code']}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if self._aborted.is_set() or time.monotonic() + delay > deadline:
                raise ServerFailed(f"{self.url} keeps failing ({problem})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _error_of(response: httpx.Response) -> dict[str, str]:
    try:
        error = response.json()["error"]
        return {"code": str(error["code"]), "message": str(error["message"])}
    except (ValueError, KeyError, TypeError):
        return {"code": f"http_{response.status_code}", "message": response.text[:200]}


def checked_top_k(value: int | None, num_classes: int) -> int:
    try:
        return parse_top_k(value, num_classes, DEFAULT_TOP_K)
    except InvalidTopK as exc:
        raise UsageError(f"--top-k: {exc}") from exc
