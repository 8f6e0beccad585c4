"""Files given as local paths or URIs, for `--runner ray`: listed on the driver, read on the workers.

Local paths go through the in-process runner's walker and reader (same files, same order, same rules
for hidden entries and symlink loops, same bounds and error codes); URIs (`s3://`, `gs://`, `file://`,
anything pyarrow's file systems read) are listed and read with pyarrow, imported only when a URI is
given.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Container, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from eluserve.classify.files import UsageError, iter_image_files, read_image_file

if TYPE_CHECKING:
    import pyarrow.fs


def is_uri(path: str) -> bool:
    """`s3://bucket/key`, `file:///data`: read with pyarrow's file systems, not `open`."""
    return "://" in path


@functools.lru_cache(maxsize=16)
def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(file system, its path for `location`) per `scheme://host`, once per process: creating an S3 file
    system resolves the bucket's region, a round trip that one per file would pay again."""
    import pyarrow.fs

    filesystem, base = pyarrow.fs.FileSystem.from_uri(location + "/")
    return filesystem, base.rstrip("/")


def _split_uri(uri: str) -> tuple[pyarrow.fs.FileSystem, str, str]:
    """(file system, path inside it, prefix that turns such a path back into a URI)."""
    import pyarrow.fs

    try:
        filesystem, inner = pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for unknown schemes
        raise UsageError(f"cannot read {uri}: {exc}") from exc
    trimmed = uri.rstrip("/")
    prefix = trimmed[: -len(inner)] if inner and trimmed.endswith(inner) else uri.split("://", 1)[0] + "://"
    return filesystem, inner, prefix


def open_uri(uri: str) -> BinaryIO:
    """Open a URI for reading on a worker; missing files raise FileNotFoundError like `open`.

    `s3://bucket/key` → the bucket's file system, path `bucket/key`; `file:///a/b` → `/a/b`;
    `hdfs://host:port/a` → `/a`.
    """
    scheme, _, rest = uri.partition("://")
    host = "" if scheme in ("file", "local") else rest.split("/", 1)[0]
    filesystem, base = _filesystem(f"{scheme}://{host}")
    return filesystem.open_input_stream(base + rest[len(host) :])  # type: ignore[return-value]


def iter_uri_files(uri: str, extensions: Container[str], recursive: bool = True) -> Iterator[str]:
    """Image files under a URI, sorted by path; a URI naming a file is yielded as given.

    The rules of the local walker: entries whose name starts with "." (and what lies below them) are
    skipped, files are kept by extension.
    """
    import pyarrow.fs

    filesystem, root, prefix = _split_uri(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise UsageError(f"no such file or folder: {uri}")
        if info.type != pyarrow.fs.FileType.Directory:
            yield uri
            return
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=recursive))
    except OSError as exc:
        raise UsageError(f"cannot list {uri}: {exc}") from exc
    for entry in sorted(listing, key=lambda entry: entry.path):
        relative = entry.path[len(root) :].lstrip("/")
        if entry.type != pyarrow.fs.FileType.File or any(
            part.startswith(".") for part in relative.split("/")
        ):
            continue
        if os.path.splitext(entry.base_name)[1][1:].lower() in extensions:
            yield prefix + entry.path


def list_files(roots: Sequence[str], extensions: Container[str], recursive: bool = True) -> Iterator[str]:
    """Local roots through the in-process runner's walker, URIs through pyarrow, in the order given."""
    if not any(map(is_uri, roots)):
        yield from iter_image_files(roots, extensions, recursive=recursive)
        return
    for root in roots:
        if is_uri(root):
            yield from iter_uri_files(root, extensions, recursive=recursive)
        else:
            yield from iter_image_files([root], extensions, recursive=recursive)


def read_file(path: str, max_bytes: int) -> bytes:
    """A local path or a URI, with the in-process runner's bounds and error codes."""
    return read_image_file(path, max_bytes, open_uri if is_uri(path) else None)
