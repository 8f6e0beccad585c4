"""Output rows (CSV, JSONL) and `--resume`: what is already done, read back from a previous output."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from eluserve.classify.evaluation import Evaluation
from eluserve.classify.files import UsageError

COLUMNS = ("path", "label", "probability", "top_k", "error")
FORMATS = ("jsonl", "csv")


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
