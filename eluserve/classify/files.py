"""Finding and reading the files to classify: lazy folder walks, bounded reads, ordered thread-pool maps."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import BinaryIO, TypeVar

from eluserve.core.errors import ClientError, ImageTooLarge
from eluserve.core.preprocessing import IMAGE_EXTENSIONS

T = TypeVar("T")
R = TypeVar("R")

#: What a folder walk picks up unless `--extensions` says otherwise: every decodable image.
DEFAULT_EXTENSIONS = IMAGE_EXTENSIONS
#: The code of files that cannot be read (permissions, broken symlinks); every other code is the service's.
UNREADABLE = "unreadable_file"


class UsageError(Exception):
    """The command cannot start as asked (missing path, unknown model, unreachable server): exit 2."""


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


def read_image_file(path: str, max_bytes: int, open_file: Callable[[str], BinaryIO] | None = None) -> bytes:
    """The file's bytes, reading at most `max_bytes` + 1 so an oversized file never fills memory.

    `open_file` opens `path` for reading (default: the local file system); the Ray runner passes
    pyarrow's for URIs such as s3://, which raise OSError like `open`.

    Raises:
        ClientError: `unreadable_file` (missing, permissions, broken link) or `image_too_large`.
    """
    try:
        with (open_file or _open_local)(path) as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise ClientError(UNREADABLE, f"cannot read the file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the file is larger than {max_bytes} bytes, the per-image limit")
    return data


def _open_local(path: str) -> BinaryIO:
    return open(path, "rb")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
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
