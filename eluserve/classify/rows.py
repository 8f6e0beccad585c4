"""Output rows (CSV, JSONL, Parquet) and `--resume`: what is already done, read back from the output."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from eluserve.classify.evaluation import Evaluation
from eluserve.classify.files import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("path", "label", "probability", "top_k", "error")
FORMATS = ("jsonl", "csv", "parquet")
#: Formats written as text, one flushed line per row, that can go to stdout and be appended to.
TEXT_FORMATS = ("jsonl", "csv")
#: Rows per Parquet row group: ~1 MB of rows, and what an interrupted run can lose at most.
PARQUET_ROW_GROUP = 10_000


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


class RowSink(Protocol):
    """Where `classify_files` writes rows: `RowWriter` (CSV, JSONL) or `ParquetRowWriter`."""

    def write(self, row: Row) -> None: ...


class RowWriter:
    """Writes rows as CSV or JSON Lines, flushing each so an interrupted run loses at most one line."""

    def __init__(self, stream: TextIO, fmt: str, header: bool = True) -> None:
        if fmt not in TEXT_FORMATS:
            raise ValueError(f"format must be one of {TEXT_FORMATS}, got {fmt!r}")
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


def require_pyarrow() -> None:
    """Parquet needs pyarrow, which the serving install leaves out (Ray Data brings it)."""
    if importlib.util.find_spec("pyarrow") is None:
        raise UsageError(
            "Parquet output needs pyarrow: `pip install pyarrow` (or 'eluserve[distributed]'), "
            "or write .jsonl/.csv"
        )


def parquet_schema() -> pa.Schema:
    """The rows as typed columns: top_k is a list of (label, probability) structs, not a JSON string."""
    import pyarrow as pa

    ranked = pa.struct([("label", pa.string()), ("probability", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("probability", pa.float64()),
            ("top_k", pa.list_(ranked)),
            ("error", pa.string()),
        ]
    )


def parquet_path(path: str) -> str:
    """Parquet strings are UTF-8: an undecodable file name is written with its bytes escaped (\\xff).

    Such a row does not match its file on `--resume` (the file is classified again); CSV and JSONL carry
    the name unchanged.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ParquetRowWriter:
    """Writes rows to Parquet in row groups of `PARQUET_ROW_GROUP`, into `<output>.partial` until `close`.

    A Parquet file is readable only once its footer is written, so the rows go to a side file that
    `close` renames over the output: a run stopped with Ctrl-C (the CLI closes the writer on the way
    out) keeps every row, a killed run leaves the previous output as it was. Parquet cannot be appended
    to, so `--resume` passes the previous rows as `previous`, copied first into the new file.
    """

    def __init__(self, path: str | Path, previous: pa.Table | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._schema = parquet_schema()
        self._writer = pq.ParquetWriter(self._partial, self._schema)
        self._pending: list[Row] = []
        if previous is not None:
            self._writer.write_table(previous.cast(self._schema))

    def write(self, row: Row) -> None:
        self._pending.append(row)
        if len(self._pending) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        columns = {
            "path": [parquet_path(row.path) for row in self._pending],
            "label": [row.label for row in self._pending],
            "probability": [row.probability for row in self._pending],
            "top_k": [row.top_k_objects() for row in self._pending],
            "error": [row.error for row in self._pending],
        }
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self._schema))
        self._pending = []

    def close(self) -> None:
        """Write the last row group and the footer, then put the file in place of the output."""
        try:
            self._flush()
        finally:
            self._writer.close()
        os.replace(self._partial, self.path)

    def __enter__(self) -> ParquetRowWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def format_of(path: str | None, explicit: str | None) -> str:
    """The output format: `--format`, else the output file's suffix, else JSON Lines."""
    suffix = Path(path).suffix.lower().lstrip(".") if path else None
    if suffix is not None and suffix not in FORMATS and explicit is None:
        raise UsageError(
            f"--output {path}: use a .csv, .jsonl or .parquet file name, or pass --format csv|jsonl|parquet"
        )
    if explicit is not None and suffix in FORMATS and suffix != explicit:
        raise UsageError(f"--output {path} has a .{suffix} suffix but --format is {explicit}")
    fmt = explicit or suffix or "jsonl"
    if fmt == "parquet":
        if path is None:
            raise UsageError("Parquet goes to a file, not stdout: pass --output rows.parquet")
        require_pyarrow()
    return fmt


def open_text(path: str | int, mode: str) -> TextIO:
    """UTF-8 text, with undecodable file names carried through unchanged (surrogateescape)."""
    return open(
        path, mode, encoding="utf-8", errors="surrogateescape", newline="", closefd=isinstance(path, str)
    )


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


def read_parquet_output(path: Path) -> pa.Table:
    """A previous Parquet output, checked to be a classify output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(
            f"--resume: {path} is not a readable Parquet file ({exc}); a killed run leaves the previous "
            f"output in place and its rows in {path.name}.partial, which cannot be read"
        ) from exc
    if tuple(table.column_names) != COLUMNS:
        raise UsageError(
            f"--resume: {path} is not a classify Parquet file (columns {table.column_names}, "
            f"expected {list(COLUMNS)})"
        )
    return table


def read_done(path: Path, fmt: str) -> Iterator[tuple[str, str | None]]:
    """(path, predicted label or None when it failed) for every complete row of a previous output."""
    if fmt == "parquet":
        table = read_parquet_output(path)
        for done, label, error in zip(
            *table.select(["path", "label", "error"]).to_pydict().values(), strict=True
        ):
            yield done, label if not error else None
        return
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
    dropped = 0 if fmt == "parquet" else drop_partial_line(output)
    if dropped:
        print(f"eluserve classify: dropped an unfinished last row ({dropped} bytes)", file=sys.stderr)
    for path, label in read_done(output, fmt):
        if path not in done and evaluation is not None:
            evaluation.add(path, label)
        done.add(path)
    return done
