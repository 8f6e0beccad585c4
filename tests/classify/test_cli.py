"""`eluserve classify` with the in-process runner: rows, formats, exit codes, resume, evaluation."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from eluserve.classify.files import iter_image_files
from eluserve.classify.runners import LocalRunner
from eluserve.core.preprocessing import Limits, load_image
from eluserve.core.session import ModelSession
from tests.classify.conftest import Result, Tree
from tests.classify.trees import read_jsonl, relative_rows
from tests.deadlines import COMMAND_S
from tests.service.bento_server import free_port

Classify = Callable[..., Result]


def summary_counts(stderr: str) -> dict[str, int]:
    match = re.search(r"files: (\d+)\s+classified: (\d+)\s+failed: (\d+)\s+skipped: (\d+)", stderr)
    assert match, stderr
    return dict(zip(("files", "classified", "failed", "skipped"), map(int, match.groups()), strict=True))


def test_one_row_per_file_with_errors_in_their_rows(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.jsonl"
    result = classify(tree.root, "--model", tiny_model_path, "--output", out, "--batch-size", "4")
    assert result.code == 1, result.stderr
    rows = relative_rows(read_jsonl(out), tree.root)
    assert set(rows) == set(tree.expected)
    labels = ModelSession.from_path(tiny_model_path).labels
    for name, row in rows.items():
        code = tree.expected[name]
        assert set(row) == {"path", "label", "probability", "top_k", "error"}
        if code is None:
            assert row["error"] == "" and row["label"] in labels
            assert row["top_k"][0]["label"] == row["label"]
            assert row["top_k"][0]["probability"] == row["probability"]
            assert len(row["top_k"]) == 5
        else:
            assert row["error"].startswith(f"{code}: ") and len(row["error"]) > len(code) + 5, row
            assert (row["label"], row["probability"], row["top_k"]) == (None, None, [])
    failed = sum(code is not None for code in tree.expected.values())
    assert summary_counts(result.stderr) == {
        "files": len(tree.expected),
        "classified": len(tree.expected) - failed,
        "failed": failed,
        "skipped": 0,
    }
    assert "image_too_large 1" in result.stderr


def test_rows_are_what_the_service_core_computes(tree: Tree, tiny_model_path: Path) -> None:
    """Same decode, same session: the runner's numbers are `load_image` + `ModelSession` on each file."""
    runner = LocalRunner.load(tiny_model_path, 3, batch_size=8)
    files = sorted(str(path) for path in (tree.root / "cifar").rglob("*.jpg"))
    rows = list(runner.classify(files))
    assert [row.path for row in rows] == files
    crops = [load_image(Path(f).read_bytes(), runner.session.info.preprocessing, Limits()) for f in files]
    probs = runner.session.predict(np.stack(crops))
    for row, expected in zip(rows, probs, strict=True):
        labels = runner.labels
        assert row.label == labels[int(np.argmax(expected))]
        for label, probability in row.top_k:
            assert abs(probability - expected[labels.index(label)]) < 1e-5


def test_csv_carries_the_same_rows(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    classify(tree.root, "--model", tiny_model_path, "-o", tmp_path / "rows.jsonl", "--top-k", "2")
    classify(tree.root, "--model", tiny_model_path, "-o", tmp_path / "rows.csv", "--top-k", "2")
    expected = relative_rows(read_jsonl(tmp_path / "rows.jsonl"), tree.root)
    with (tmp_path / "rows.csv").open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == ("path", "label", "probability", "top_k", "error")
        rows = relative_rows(list(reader), tree.root)
    assert set(rows) == set(expected)
    for name, row in rows.items():
        want = expected[name]
        assert row["error"] == want["error"]
        if want["error"]:
            assert row["label"] == row["probability"] == row["top_k"] == ""
        else:
            assert row["label"] == want["label"] and float(row["probability"]) == want["probability"]
            assert json.loads(row["top_k"]) == want["top_k"]


def test_stdout_is_jsonl_unless_format_says_csv(
    classify: Classify, tree: Tree, tiny_model_path: Path
) -> None:
    folder = tree.root / "cifar" / "cat"
    as_jsonl = classify(folder, "--model", tiny_model_path)
    assert as_jsonl.code == 0, as_jsonl.stderr
    assert [json.loads(line)["path"] for line in as_jsonl.stdout.splitlines()] == list(
        iter_image_files([str(folder)], {"jpg"})
    )
    as_csv = classify(folder, "--model", tiny_model_path, "--format", "csv")
    assert as_csv.stdout.splitlines()[0] == "path,label,probability,top_k,error"
    assert len(as_csv.stdout.splitlines()) == len(as_jsonl.stdout.splitlines()) + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{root}/no-such-folder"], "no such file or folder: {root}/no-such-folder"),
        (["{root}", "--model", "{root}/missing.onnx"], "no model at"),
        (["{root}", "--model", "{root}/notes.txt"], "{root}/notes.txt is not an ONNX model"),
        (["{root}", "--server", "http://127.0.0.1:{port}"], "cannot reach an eluserve service"),
        (["{root}", "--output", "{root}/out.txt"], "use a .csv, .jsonl or .parquet file name"),
        (["{root}", "--resume"], "--resume needs --output"),
        (["{root}", "--extensions", ","], "names no extension"),
        (["{root}", "--top-k", "11"], "top_k must be an integer from 1 to 10"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    classify: Classify, tree: Tree, tiny_model_path: Path, args: list[str], message: str
) -> None:
    values = {"root": tree.root, "port": free_port()}
    argv = [arg.format(**values) for arg in args]
    if "--model" not in argv and "--server" not in argv:
        argv += ["--model", str(tiny_model_path)]
    result = classify(*argv)
    assert result.code == 2
    assert message.format(**values) in result.stderr
    assert result.stdout == ""


def test_argument_errors_exit_2(classify: Classify, tree: Tree) -> None:
    with pytest.raises(SystemExit) as exit_info:
        classify(tree.root, "--batch-size", "0")
    assert exit_info.value.code == 2


@pytest.mark.integration
def test_installed_command_exit_codes(tree: Tree, tiny_model_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "eluserve"), "classify", "--model", str(tiny_model_path)]
    good = subprocess.run(
        [*command, str(tree.root / "cifar")], capture_output=True, text=True, timeout=COMMAND_S
    )
    assert good.returncode == 0, good.stderr
    assert len(good.stdout.splitlines()) == sum(name.startswith("cifar/") for name in tree.expected)
    bad = subprocess.run(
        [*command, str(tree.root / "bad")], capture_output=True, text=True, timeout=COMMAND_S
    )
    assert bad.returncode == 1
    assert "failed: 6" in bad.stderr


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_resume_after_an_interrupted_run(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path, suffix: str
) -> None:
    full = tmp_path / f"full.{suffix}"
    classify(tree.root, "--model", tiny_model_path, "-o", full)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    header = 1 if suffix == "csv" else 0
    kept = 7
    cut = tmp_path / f"cut.{suffix}"
    # An interrupted run: `kept` complete rows, then half of the next one, without its newline.
    cut.write_text("".join(lines[: header + kept]) + lines[header + kept][:25], encoding="utf-8")

    result = classify(tree.root, "--model", tiny_model_path, "-o", cut, "--resume")
    rest = lines[header + kept :]
    errors = [next(csv.reader([line]))[4] if suffix == "csv" else json.loads(line)["error"] for line in rest]
    assert result.code == (1 if any(errors) else 0)
    assert "dropped an unfinished last row" in result.stderr
    assert summary_counts(result.stderr)["skipped"] == kept
    assert sorted(cut.read_text(encoding="utf-8").splitlines()) == sorted(line.rstrip("\n") for line in lines)

    again = classify(tree.root, "--model", tiny_model_path, "-o", cut, "--resume")
    assert again.code == 0
    assert summary_counts(again.stderr) == {
        "files": len(tree.expected),
        "classified": 0,
        "failed": 0,
        "skipped": len(tree.expected),
    }
    assert len(cut.read_text(encoding="utf-8").splitlines()) == len(lines)


def test_resume_warns_when_no_path_matches(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rows.jsonl"
    classify(tree.root / "cifar" / "cat", "--model", tiny_model_path, "-o", out)
    monkeypatch.chdir(tree.root)
    result = classify("cifar/cat", "--model", tiny_model_path, "-o", out, "--resume")
    assert "--resume matched none of the 2 rows already in" in result.stderr


def test_resume_refuses_a_file_that_is_not_a_classify_output(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.csv"
    other.write_text("name,score\na,1\n")
    result = classify(tree.root, "--model", tiny_model_path, "-o", other, "--resume")
    assert result.code == 2 and "is not a classify CSV" in result.stderr
    assert other.read_text() == "name,score\na,1\n"


def test_evaluate_on_a_labelled_folder(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    out, png = tmp_path / "rows.jsonl", tmp_path / "confusion.png"
    result = classify(tree.root / "cifar", "--model", tiny_model_path, "-o", out, "--confusion-png", png)
    assert result.code == 0, result.stderr
    rows = read_jsonl(out)
    correct = sum(row["label"] == Path(row["path"]).parent.name for row in rows)
    assert f"accuracy: {correct / len(rows):.4f} ({correct}/{len(rows)})" in result.stderr
    assert "confusion matrix (rows: true class, columns: predicted class)" in result.stderr
    header, *matrix = result.stderr.split("columns: predicted class)\n", 1)[1].splitlines()
    classes = len(header.split())
    counts = [int(value) for line in matrix[:classes] for value in line.split()[1:]]
    assert sum(counts) == len(rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_counts_files_outside_class_folders_apart(
    classify: Classify, tree: Tree, tiny_model_path: Path
) -> None:
    result = classify(tree.root, "--model", tiny_model_path, "--evaluate")
    labelled = sum(name.startswith("cifar/") for name in tree.expected)
    others = len(tree.expected) - labelled
    assert (
        f"evaluation: {labelled} images in folders named after the model's labels "
        f"({others} outside class folders, not counted)"
    ) in result.stderr


def test_confusion_png_without_matplotlib_is_a_usage_error(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    result = classify(tree.root, "--model", tiny_model_path, "--confusion-png", tmp_path / "c.png")
    assert result.code == 2 and "--confusion-png needs matplotlib" in result.stderr
    assert not (tmp_path / "c.png").exists()


def test_the_runner_reads_ahead_a_bounded_number_of_files(tree: Tree, tiny_model_path: Path) -> None:
    """An endless stream of paths: rows come out while only a few batches' worth have been taken."""
    runner = LocalRunner.load(tiny_model_path, batch_size=16)
    image = str(next(iter((tree.root / "cifar").rglob("*.jpg"))))
    taken = itertools.count()

    def endless() -> Iterator[str]:
        for _ in taken:
            yield image

    rows = runner.classify(endless())
    first = list(itertools.islice(rows, 40))
    rows.close()
    assert len(first) == 40 and all(row.ok for row in first)
    assert next(taken) <= 40 + (runner.workers + 1) * 16 + 1  # the batches its workers hold in flight


def test_one_thread_session_per_core_gives_the_rows_of_one_session(tree: Tree, tiny_model_path: Path) -> None:
    """The workers take turns on several sessions; every file still gets its own result, in order."""
    single = LocalRunner.load(tiny_model_path, batch_size=4, threads=2, sessions=1)
    several = LocalRunner.load(tiny_model_path, batch_size=4, threads=2)
    assert (len(single.sessions), len(several.sessions)) == (1, 2)
    paths = sorted(str(path) for path in tree.root.rglob("*") if path.is_file())
    expected, actual = list(single.classify(paths)), list(several.classify(paths))
    assert [row.path for row in actual] == paths
    assert [(row.label, row.error) for row in actual] == [(row.label, row.error) for row in expected]
    assert any(row.error for row in actual) and any(row.ok for row in actual)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.probability == pytest.approx(theirs.probability, abs=1e-5)


def test_undecodable_file_names_survive_a_resume(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    image = next(iter((tree.root / "cifar").rglob("*.jpg"))).read_bytes()
    odd = os.fsencode(folder) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as file:
        file.write(image)
    out = tmp_path / "rows.csv"
    assert classify(folder, "--model", tiny_model_path, "-o", out).code == 0
    again = classify(folder, "--model", tiny_model_path, "-o", out, "--resume")
    assert summary_counts(again.stderr)["skipped"] == 1


def test_openvino_rows_carry_onnxruntimes_labels(
    classify: Classify, tree: Tree, serving_model_path: Path, tmp_path: Path
) -> None:
    """`--engine openvino` (checked against ORT fp32 when it starts) labels every file as ORT does."""
    rows = {}
    for engine in ("onnxruntime", "openvino"):
        out = tmp_path / f"{engine}.jsonl"
        result = classify(
            tree.root / "cifar", "--model", serving_model_path, "--engine", engine, "--output", out
        )
        assert result.code == 0, result.stderr
        assert f"on {engine} " in result.stderr
        rows[engine] = relative_rows(read_jsonl(out), tree.root)
    assert len(rows["openvino"]) >= 10
    assert {name: row["label"] for name, row in rows["openvino"].items()} == {
        name: row["label"] for name, row in rows["onnxruntime"].items()
    }
    for name, row in rows["openvino"].items():
        assert abs(row["probability"] - rows["onnxruntime"][name]["probability"]) < 1e-4


def test_parquet_carries_the_same_rows(
    classify: Classify, tree: Tree, tiny_model_path: Path, tmp_path: Path
) -> None:
    """`-o rows.parquet` with the in-process runner: the JSONL rows as typed columns, in the same order."""
    pq = pytest.importorskip("pyarrow.parquet")
    classify(tree.root, "--model", tiny_model_path, "-o", tmp_path / "rows.jsonl")
    result = classify(tree.root, "--model", tiny_model_path, "-o", tmp_path / "rows.parquet")
    assert result.code == 1, result.stderr
    assert pq.read_table(tmp_path / "rows.parquet").to_pylist() == read_jsonl(tmp_path / "rows.jsonl")
