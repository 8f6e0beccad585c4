"""Row plumbing without a model: output format choice, cutting an interrupted row, evaluation math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eluserve.classify.evaluation import Evaluation
from eluserve.classify.files import UsageError
from eluserve.classify.rows import (
    ParquetRowWriter,
    Row,
    drop_partial_line,
    format_of,
    read_done,
    read_parquet_output,
)


@pytest.mark.parametrize(
    ("output", "explicit", "expected"),
    [
        (None, None, "jsonl"),
        (None, "csv", "csv"),
        ("a.CSV", None, "csv"),
        ("a.jsonl", None, "jsonl"),
        ("a.out", "csv", "csv"),
    ],
)
def test_format_comes_from_the_flag_or_the_suffix(
    output: str | None, explicit: str | None, expected: str
) -> None:
    assert format_of(output, explicit) == expected


def test_a_suffix_contradicting_the_flag_is_refused() -> None:
    with pytest.raises(UsageError, match=r"has a \.csv suffix but --format is jsonl"):
        format_of("rows.csv", "jsonl")


@pytest.mark.parametrize(
    ("content", "kept"),
    [(b"", b""), (b"a\nb\n", b"a\nb\n"), (b"a\nb\npart", b"a\nb\n"), (b"no newline at all", b"")],
)
def test_drop_partial_line(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    assert drop_partial_line(path) == len(content) - len(kept)
    assert path.read_bytes() == kept


def test_drop_partial_line_finds_a_newline_far_back(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"first\n" + b"x" * 200_000)
    assert drop_partial_line(path) == 200_000
    assert path.read_bytes() == b"first\n"


def test_read_done_reports_failed_rows_without_a_label(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('path,label,probability,top_k,error\na.jpg,cat,0.9,"[]",\nb.jpg,,,,invalid_image: no\n')
    assert list(read_done(path, "csv")) == [("a.jpg", "cat"), ("b.jpg", None)]


def test_evaluation_precision_recall_and_confusion() -> None:
    evaluation = Evaluation(["cat", "dog", "frog"])
    for path, predicted in [
        ("v/cat/1.jpg", "cat"),
        ("v/cat/2.jpg", "dog"),
        ("v/dog/1.jpg", "dog"),
        ("v/dog/2.jpg", "dog"),
        ("v/dog/3.jpg", None),  # failed
        ("v/other/1.jpg", "cat"),  # not a class folder
    ]:
        evaluation.add(path, predicted)
    np.testing.assert_array_equal(evaluation.confusion, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    report = evaluation.report()
    assert "(1 failed, 1 outside class folders, not counted)" in report
    assert "accuracy: 0.7500 (3/4)" in report
    table = [line.split() for line in report.splitlines()]
    assert ["cat", "1.0000", "0.5000", "2"] in table
    assert ["dog", "0.6667", "1.0000", "2"] in table
    assert "frog" not in report  # never seen, never predicted: left out of the tables


def test_parquet_rows_round_trip_and_resume_reads_them(tmp_path: Path) -> None:
    """Typed columns; the file appears only on close; a resumed writer copies the earlier rows first."""
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "rows.parquet"
    ok = Row("cat/1.jpg", "cat", 0.75, (("cat", 0.75), ("dog", 0.25)))
    with ParquetRowWriter(out) as writer:
        writer.write(ok)
        assert not out.exists() and (tmp_path / "rows.parquet.partial").exists()
    assert list(read_done(out, "parquet")) == [("cat/1.jpg", "cat")]
    with ParquetRowWriter(out, read_parquet_output(out)) as writer:
        writer.write(Row.failed("b.jpg", "empty_file", "the file is empty"))
    assert pq.read_table(out).to_pylist() == [
        {
            "path": "cat/1.jpg",
            "label": "cat",
            "probability": 0.75,
            "top_k": [{"label": "cat", "probability": 0.75}, {"label": "dog", "probability": 0.25}],
            "error": "",
        },
        {
            "path": "b.jpg",
            "label": None,
            "probability": None,
            "top_k": [],
            "error": "empty_file: the file is empty",
        },
    ]
    assert list(read_done(out, "parquet")) == [("cat/1.jpg", "cat"), ("b.jpg", None)]


def test_parquet_resume_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.parquet")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(b"PAR1 and no footer")
    with pytest.raises(UsageError, match="is not a readable Parquet file"):
        read_parquet_output(cut)
    with pytest.raises(UsageError, match="not stdout"):
        format_of(None, "parquet")
