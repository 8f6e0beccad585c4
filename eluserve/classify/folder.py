"""`eluserve classify`: classify every image under files and folders, one output row per file.

    eluserve classify photos/ more.jpg --output results.csv          # in-process, ONNX Runtime
    eluserve classify photos/ --server http://127.0.0.1:3000 -o r.jsonl  # a running eluserve service
    eluserve classify data/val --evaluate --confusion-png confusion.png   # ImageFolder layout
    eluserve bench-classify                                           # img/s vs raw ONNX Runtime

Both engines produce the same rows because they run the same code: the in-process engine decodes with
`eluserve.core.preprocessing.load_image` and infers with `eluserve.core.session.ModelSession`, exactly what the
service does behind `POST /classify_batch`, which the server engine calls.

Everything streams so that memory stays flat at any number of files: folders are walked lazily, files
are decoded in a thread pool with a bounded window of futures in flight (Pillow and ONNX Runtime release
the GIL, so decoding overlaps inference), rows are written and flushed one by one in input order, and
the only per-file state kept is the set of paths already done when resuming. Bad files become rows with
an error instead of stopping the run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import httpx
import numpy as np
from tqdm import tqdm

from eluserve.core.errors import ClientError, ImageTooLarge, InvalidTopK, ModelFormatError
from eluserve.core.paths import default_model_file
from eluserve.core.preprocessing import DECODABLE_FORMATS, Limits, load_image
from eluserve.core.results import DEFAULT_TOP_K, parse_top_k
from eluserve.core.session import ModelSession, available_cores

T = TypeVar("T")
R = TypeVar("R")

COLUMNS = ("path", "label", "probability", "top_k", "error")
FORMATS = ("jsonl", "csv")
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "avif")
DEFAULT_BATCH_SIZE = 64
DEFAULT_CONCURRENCY = 4
#: A request the server refuses as overloaded (429) or not ready (503) is retried this long.
SERVER_RETRY_SECONDS = 60.0
SERVER_TIMEOUT_SECONDS = 120.0
#: The code of files that cannot be read (permissions, broken symlinks); every other code is the service's.
UNREADABLE = "unreadable_file"


def _quiet_http_log() -> None:
    """httpx logs every request at INFO, which would be one line per batch under the progress bar."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


class UsageError(Exception):
    """The command cannot start as asked (missing path, unknown model, unreachable server): exit 2."""


class ServerFailed(Exception):
    """The service stopped answering usefully mid-run; rows written so far stay, `--resume` continues."""


# ---------------------------------------------------------------------------------------------- files


def parse_extensions(text: str) -> frozenset[str]:
    """`jpg,.PNG, webp` → {"jpg", "png", "webp"}."""
    extensions = frozenset(part.strip().lstrip(".").lower() for part in text.split(",") if part.strip())
    if not extensions:
        raise UsageError(f"--extensions {text!r} names no extension; e.g. --extensions jpg,png")
    return extensions


def iter_image_files(
    roots: Iterable[str], extensions: Container[str], recursive: bool = True
) -> Iterator[str]:
    """Yield image file paths under `roots`, lazily, in directory listing order.

    A root that is a file is yielded as given, whatever its name (the user named it). Below a folder,
    hidden entries (names starting with ".") are skipped, files are kept by extension, symlinks are
    followed, and every directory is walked at most once (by its real path) so that symlink loops end.
    Only one directory handle is open at a time, and nothing is kept per file.
    Broken symlinks with an image extension are yielded, so that they are reported rather than lost.
    """
    visited: set[str] = set()
    for root in map(os.path.normpath, roots):  # "photos/" and "./photos" give the same row paths
        if not os.path.isdir(root):
            yield root
            continue
        real = os.path.realpath(root)
        if real in visited:
            continue
        visited.add(real)
        stack = [root]
        while stack:
            subdirs: list[str] = []
            yield from _scan(stack.pop(), extensions, subdirs if recursive else None)
            for subdir in reversed(subdirs):
                real = os.path.realpath(subdir)
                if real not in visited:
                    visited.add(real)
                    stack.append(subdir)


def _scan(directory: str, extensions: Container[str], subdirs: list[str] | None) -> Iterator[str]:
    """Image files of one directory; its subdirectories are appended to `subdirs` when given."""
    try:
        entries = os.scandir(directory)
    except OSError as exc:
        print(f"eluserve classify: skipping folder {directory}: {exc.strerror or exc}", file=sys.stderr)
        return
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if subdirs is not None:
                        subdirs.append(entry.path)
                    continue
                # FIFOs, sockets and devices are skipped: opening a FIFO would block forever.
                wanted = entry.is_file() or entry.is_symlink()
            except OSError:
                wanted = False
            if wanted and os.path.splitext(entry.name)[1][1:].lower() in extensions:
                yield entry.path


def read_image_file(path: str, max_bytes: int) -> bytes:
    """The file's bytes, reading at most `max_bytes` + 1 so an oversized file never fills memory.

    Raises:
        ClientError: `unreadable_file` (missing, permissions, broken link) or `image_too_large`.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise ClientError(UNREADABLE, f"cannot read the file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the file is larger than {max_bytes} bytes, the per-image limit")
    return data


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """`map(fn, items)` on `pool` in input order, with at most `window` calls submitted at once.

    `Executor.map` would submit every item up front, which for a stream of 100 000 files is all of them.
    """
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


# ------------------------------------------------------------------------------------------------ rows


@dataclass(frozen=True, slots=True)
class Row:
    """One output row: a classified file, or a file that failed with `error` = "code: message"."""

    path: str
    label: str | None = None
    probability: float | None = None
    #: (label, probability), best first.
    top_k: tuple[tuple[str, float], ...] = ()
    error: str = ""

    @classmethod
    def from_result(cls, path: str, result: dict[str, Any]) -> Row:
        """From one result object of the HTTP contract (`format_results` makes the same objects)."""
        if "error" in result:
            return cls.failed(path, result["error"]["code"], result["error"]["message"])
        ranked = tuple((entry["label"], float(entry["probability"])) for entry in result["top_k"])
        return cls(path, result["label"], float(result["probability"]), ranked)

    @classmethod
    def failed(cls, path: str, code: str, message: str) -> Row:
        return cls(path, error=f"{code}: {message}")

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def code(self) -> str:
        return self.error.partition(":")[0]

    def top_k_objects(self) -> list[dict[str, Any]]:
        return [{"label": label, "probability": probability} for label, probability in self.top_k]


class RowWriter:
    """Writes rows as CSV or JSON Lines, flushing each so an interrupted run loses at most one line."""

    def __init__(self, stream: TextIO, fmt: str, header: bool = True) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self._stream = stream
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None and header:
            self._csv.writerow(COLUMNS)
            stream.flush()

    def write(self, row: Row) -> None:
        if self._csv is not None:
            top_k = (
                json.dumps(row.top_k_objects(), ensure_ascii=False, separators=(",", ":")) if row.ok else ""
            )
            probability = "" if row.probability is None else repr(row.probability)
            self._csv.writerow((row.path, row.label or "", probability, top_k, row.error))
        else:
            record = {
                "path": row.path,
                "label": row.label,
                "probability": row.probability,
                "top_k": row.top_k_objects(),
                "error": row.error,
            }
            self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()


def format_of(path: str | None, explicit: str | None) -> str:
    """The output format: `--format`, else the output file's suffix, else JSON Lines."""
    suffix = Path(path).suffix.lower().lstrip(".") if path else None
    if suffix is not None and suffix not in FORMATS and explicit is None:
        raise UsageError(f"--output {path}: use a .csv or .jsonl file name, or pass --format csv|jsonl")
    if explicit is not None and suffix in FORMATS and suffix != explicit:
        raise UsageError(f"--output {path} has a .{suffix} suffix but --format is {explicit}")
    return explicit or suffix or "jsonl"


def open_text(path: str | int, mode: str) -> TextIO:
    """UTF-8 text, with undecodable file names carried through unchanged (surrogateescape)."""
    return open(
        path, mode, encoding="utf-8", errors="surrogateescape", newline="", closefd=isinstance(path, str)
    )


# -------------------------------------------------------------------------------------------- resume


def drop_partial_line(path: Path) -> int:
    """Cut an unterminated last line (a row an interrupted run was writing) off the file.

    Rows are written as one write of row + newline and flushed, so only the last line can be cut short,
    and a missing final newline means exactly that. Returns the number of bytes dropped.
    """
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        file.truncate(end)
        return size - end


def read_done(path: Path, fmt: str) -> Iterator[tuple[str, str | None]]:
    """(path, predicted label or None when it failed) for every complete row of a previous output."""
    with open_text(str(path), "r") as file:
        if fmt == "csv":
            reader = csv.reader(file)
            header = next(reader, None)
            if header is not None and tuple(header) != COLUMNS:
                raise UsageError(
                    f"--resume: {path} is not a classify CSV (header {header}, expected {COLUMNS})"
                )
            for fields in reader:
                if len(fields) == len(COLUMNS):
                    yield fields[0], (fields[1] or None) if not fields[4] else None
            return
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                done = record["path"], record["label"] if not record["error"] else None
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"--resume: line {number} of {path} is not a classify row ({exc})") from exc
            yield done


def resume(output: Path, fmt: str, evaluation: Evaluation | None) -> set[str]:
    """The paths `output` already has rows for, after cutting off an unfinished last row.

    Their rows also go into `evaluation`, so that the accuracy printed covers the whole output.
    """
    done: set[str] = set()
    if not output.exists():
        return done
    dropped = drop_partial_line(output)
    if dropped:
        print(f"eluserve classify: dropped an unfinished last row ({dropped} bytes)", file=sys.stderr)
    for path, label in read_done(output, fmt):
        if path not in done and evaluation is not None:
            evaluation.add(path, label)
        done.add(path)
    return done


# ---------------------------------------------------------------------------------------------- engines


class Engine(Protocol):
    """Turns a stream of paths into a stream of rows, in the same order."""

    @property
    def model(self) -> str:
        """`name:version` of the model that classifies."""
        ...

    @property
    def labels(self) -> Sequence[str]: ...

    def classify(self, paths: Iterable[str]) -> Iterator[Row]: ...


class LocalEngine:
    """In-process: decoding threads feed batches to one ONNX Runtime session in the calling thread."""

    def __init__(
        self,
        classifier: ModelSession,
        top_k: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
    ) -> None:
        self.classifier = classifier
        self.top_k = top_k
        self.batch_size = batch_size
        self.threads = threads or available_cores()
        #: The service's default limits, so that both engines refuse the same files.
        self.limits = Limits()

    @classmethod
    def load(
        cls,
        model: str | Path,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
    ) -> LocalEngine:
        """Load `model`; a missing or malformed file is a `UsageError` naming it."""
        try:
            classifier = ModelSession.from_path(model)
        except (FileNotFoundError, ModelFormatError) as exc:
            hint = (
                " (export one with `eluserve export`, or pass --model)"
                if Path(model) == default_model_file()
                else ""
            )
            raise UsageError(f"{exc}{hint}") from exc
        except Exception as exc:  # onnx/onnxruntime raise their own types for a file that is no model
            raise UsageError(f"cannot load {model} as an ONNX model: {type(exc).__name__}: {exc}") from exc
        return cls(classifier, _checked_top_k(top_k, classifier.info.num_classes), batch_size, threads)

    @property
    def model(self) -> str:
        return self.classifier.info.tag

    @property
    def labels(self) -> Sequence[str]:
        return self.classifier.labels

    def classify(self, paths: Iterable[str]) -> Iterator[Row]:
        # Up to two batches are decoded ahead while the current one runs through the model.
        window = 2 * self.batch_size
        with (
            ThreadPoolExecutor(self.threads, thread_name_prefix="eluserve-decode") as pool,
            contextlib.closing(_in_order(pool, self._prepare, paths, window)) as prepared,
        ):
            for batch in _chunks(prepared, self.batch_size):
                yield from self._classify_batch(batch)

    def _prepare(self, path: str) -> tuple[str, np.ndarray | ClientError]:
        try:
            data = read_image_file(path, self.limits.max_image_bytes)
            return path, load_image(data, self.classifier.info.preprocessing, self.limits)
        except ClientError as exc:
            return path, exc

    def _classify_batch(self, batch: list[tuple[str, np.ndarray | ClientError]]) -> Iterator[Row]:
        crops = [item for _, item in batch if isinstance(item, np.ndarray)]
        results = iter(self.classifier.classify(crops, top_k=self.top_k))
        for path, item in batch:
            if isinstance(item, ClientError):
                yield Row.failed(path, item.code, item.message)
            else:
                yield Row.from_result(path, next(results))


class ServerEngine:
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
            self.top_k = _checked_top_k(top_k, len(self.description["labels"]))
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

    def __enter__(self) -> ServerEngine:
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
            requests = _in_order(
                pool, self._classify_chunk, _chunks(paths, self.batch_size), 2 * self.concurrency
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
        for part in _chunks(uploads, self._request_size):
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


def _checked_top_k(value: int | None, num_classes: int) -> int:
    try:
        return parse_top_k(value, num_classes, DEFAULT_TOP_K)
    except InvalidTopK as exc:
        raise UsageError(f"--top-k: {exc}") from exc


# ------------------------------------------------------------------------------------------ evaluation


class Evaluation:
    """Accuracy, per-class precision/recall and the confusion matrix, for the ImageFolder layout.

    A file's true class is the name of the folder holding it; files in folders that are not a label of
    the model are counted apart and left out, as are files that failed.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}
        self.confusion = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)
        self.unlabelled = 0
        self.failed = 0

    def add(self, path: str, predicted: str | None) -> None:
        truth = self._index.get(os.path.basename(os.path.dirname(path)))
        if truth is None:
            self.unlabelled += 1
        elif predicted is None or predicted not in self._index:
            self.failed += 1
        else:
            self.confusion[truth, self._index[predicted]] += 1

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    def report(self) -> str:
        """A text report: the summary line, the per-class table and the matrix of the classes seen."""
        head = f"evaluation: {self.total} images in folders named after the model's labels"
        extra = [
            f"{n} {what}"
            for n, what in ((self.failed, "failed"), (self.unlabelled, "outside class folders"))
            if n
        ]
        head += f" ({', '.join(extra)}, not counted)" if extra else ""
        if self.total == 0:
            return (
                head + "; nothing to evaluate (expected folders such as " + f"{'/'.join(self.labels[:3])}/)"
            )
        correct = int(np.trace(self.confusion))
        lines = [head, f"accuracy: {correct / self.total:.4f} ({correct}/{self.total})", ""]
        predicted = self.confusion.sum(axis=0)
        actual = self.confusion.sum(axis=1)
        seen = [i for i in range(len(self.labels)) if predicted[i] or actual[i]]
        width = max(len("class"), *(len(self.labels[i]) for i in seen))
        lines.append(f"{'class':<{width}}  precision  recall  support")
        for i in seen:
            precision = f"{self.confusion[i, i] / predicted[i]:.4f}" if predicted[i] else "-"
            recall = f"{self.confusion[i, i] / actual[i]:.4f}" if actual[i] else "-"
            lines.append(f"{self.labels[i]:<{width}}  {precision:>9}  {recall:>6}  {actual[i]:>7}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        digits = len(str(int(self.confusion.max())))
        cells = {j: max(len(self.labels[j]), digits) for j in seen}
        lines.append(" " * width + "".join(f"  {self.labels[j]:>{cells[j]}}" for j in seen))
        for i in seen:
            counts = "".join(f"  {self.confusion[i, j]:>{cells[j]}}" for j in seen)
            lines.append(f"{self.labels[i]:<{width}}{counts}")
        return "\n".join(lines)

    def save_png(self, path: str | Path, title: str) -> None:
        """The confusion matrix as a PNG (needs matplotlib; `require_matplotlib` checks before a run)."""
        from matplotlib.figure import Figure  # deferred: not part of the lean serving install

        n = len(self.labels)
        size = max(4.0, 0.55 * n + 2.0)
        figure = Figure(figsize=(size, size * 0.9), layout="constrained")
        axes = figure.add_subplot()
        image = axes.imshow(self.confusion, cmap="Blues")
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(n), self.labels, rotation=45, ha="right")
        axes.set_yticks(range(n), self.labels)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        accuracy = np.trace(self.confusion) / self.total if self.total else float("nan")
        axes.set_title(f"{title}: accuracy {accuracy:.4f} on {self.total} images")
        if n <= 30:
            threshold = self.confusion.max() / 2
            for (i, j), count in np.ndenumerate(self.confusion):
                color = "white" if count > threshold else "black"
                axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        figure.savefig(path, dpi=120)


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "--confusion-png needs matplotlib, which the serving install leaves out; "
            "`pip install matplotlib` (or install the train extra), or drop --confusion-png"
        )


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Summary:
    """What one run did; `format` is the line printed to stderr at the end."""

    classified: int = 0
    failed: int = 0
    #: Files left out because the output already has a row for them (`--resume`).
    skipped: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def files(self) -> int:
        """Files seen this run, skipped ones included."""
        return self.classified + self.failed + self.skipped

    @property
    def images_per_second(self) -> float:
        return (self.classified + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def add(self, row: Row) -> None:
        if row.ok:
            self.classified += 1
        else:
            self.failed += 1
            self.failures[row.code] += 1

    def format(self) -> str:
        text = (
            f"files: {self.files}  classified: {self.classified}  failed: {self.failed}  "
            f"skipped: {self.skipped}  seconds: {self.seconds:.2f}  img/s: {self.images_per_second:.1f}"
        )
        if self.failures:
            text += "\nfailed by code: " + ", ".join(f"{code} {n}" for code, n in self.failures.most_common())
        return text


def classify_files(
    files: Iterable[str],
    engine: Engine,
    writer: RowWriter,
    *,
    skip: Container[str] = frozenset(),
    evaluation: Evaluation | None = None,
    progress: bool = False,
    summary: Summary | None = None,
) -> Summary:
    """Classify `files` with `engine`, writing one row per file; the core of `eluserve classify`.

    Pass a `summary` to keep the counts of a run that ends in an exception (server gone, Ctrl-C).
    """
    summary = summary if summary is not None else Summary()

    def todo() -> Iterator[str]:
        for path in files:
            if path in skip:
                summary.skipped += 1
            else:
                yield path

    started = time.perf_counter()
    try:
        with tqdm(
            desc="classify", unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True
        ) as bar:
            for row in engine.classify(todo()):
                writer.write(row)
                summary.add(row)
                if evaluation is not None:
                    evaluation.add(row.path, row.label)
                bar.update(1)
                if not row.ok:
                    bar.set_postfix_str(f"failed={summary.failed}", refresh=False)
    finally:
        summary.seconds = time.perf_counter() - started
    return summary


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_ints(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",")]


def cmd_classify(args: argparse.Namespace) -> int:
    """`eluserve classify`: exit 0 when every file was classified, 1 when some failed, 2 on usage errors."""
    try:
        return _classify(args)
    except UsageError as exc:
        print(f"eluserve classify: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, like other tools
        return 1


def _classify(args: argparse.Namespace) -> int:
    missing = [path for path in args.paths if not os.path.lexists(path)]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    extensions = parse_extensions(args.extensions)
    fmt = format_of(args.output, args.format)
    if args.resume and not args.output:
        raise UsageError("--resume needs --output: the file to continue")
    if args.confusion_png:
        require_matplotlib()
    _quiet_http_log()
    evaluate = args.evaluate or bool(args.confusion_png)
    progress = sys.stderr.isatty() if args.progress is None else args.progress

    with contextlib.ExitStack() as stack:
        engine: Engine
        if args.server:
            engine = stack.enter_context(
                ServerEngine(
                    args.server, args.top_k, batch_size=args.batch_size, concurrency=args.concurrency
                )
            )
        else:
            engine = LocalEngine.load(
                args.model, args.top_k, batch_size=args.batch_size, threads=args.threads
            )
        evaluation = Evaluation(engine.labels) if evaluate else None
        done = resume(Path(args.output), fmt, evaluation) if args.resume else set()
        if args.output:
            stream = stack.enter_context(open_text(args.output, "a" if args.resume else "w"))
        else:
            stream = stack.enter_context(open_text(sys.stdout.fileno(), "w"))
        writer = RowWriter(stream, fmt, header=not args.resume or stream.tell() == 0)
        files = iter_image_files(args.paths, extensions, recursive=args.recursive)
        summary = Summary()
        try:
            classify_files(
                files, engine, writer, skip=done, evaluation=evaluation, progress=progress, summary=summary
            )
        except (ServerFailed, KeyboardInterrupt) as exc:
            reason = str(exc) if isinstance(exc, ServerFailed) else "interrupted"
            print(
                f"eluserve classify: {reason}; the rows so far are written, --resume continues",
                file=sys.stderr,
            )
            print(summary.format(), file=sys.stderr)
            return 1 if isinstance(exc, ServerFailed) else 130

    print(f"eluserve classify: model {engine.model}", file=sys.stderr)
    print(summary.format(), file=sys.stderr)
    if done and not summary.skipped:
        print(
            f"eluserve classify: --resume matched none of the {len(done)} rows already in {args.output}; "
            "paths are matched as written, so run from the same folder with the same PATH spelling",
            file=sys.stderr,
        )
    if summary.files == 0:
        print(
            f"no image files ({', '.join(sorted(extensions))}) under {', '.join(args.paths)}", file=sys.stderr
        )
    if evaluation is not None:
        print(evaluation.report(), file=sys.stderr)
        if args.confusion_png:
            evaluation.save_png(args.confusion_png, engine.model)
            print(f"confusion matrix → {args.confusion_png}", file=sys.stderr)
    return 1 if summary.failed else 0


# ------------------------------------------------------------------------------------------------- cli


def register(subparsers: Any) -> None:
    """Add `classify` to the `eluserve` parser."""
    parser = subparsers.add_parser(
        "classify",
        help="classify image files and folders to CSV/JSONL (in-process or via a running service)",
        description="Classify every image under PATHs; one row per file (path, label, probability, top_k, "
        "error). Exit status: 0 all classified, 1 some files failed, 2 usage error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument(
        "--model", default=str(default_model_file()), help="model .onnx or folder (in-process engine)"
    )
    engine.add_argument("--server", metavar="URL", help="classify through a running eluserve service")
    parser.add_argument("-o", "--output", help="output file, .csv or .jsonl (default: JSONL on stdout)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from --output's suffix)")
    parser.add_argument(
        "--resume", action="store_true", help="skip files already in --output, append the rest"
    )
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help="comma-separated extensions of the files to classify in folders "
        f"(the decoder reads {', '.join(DECODABLE_FORMATS)})",
    )
    parser.add_argument("--top-k", type=_positive_int, help=f"classes per row (default {DEFAULT_TOP_K})")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="images per batch/request"
    )
    parser.add_argument("--threads", type=_positive_int, help="decoding threads (default: available cores)")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY, help="requests in flight (--server)"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="folder names are true labels: print accuracy etc."
    )
    parser.add_argument(
        "--confusion-png", metavar="FILE", help="save the confusion matrix (implies --evaluate)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a tty)",
    )
    parser.set_defaults(func=cmd_classify)
