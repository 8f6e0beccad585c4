"""`eluserve classify --server` against a real `bentoml serve` process (one per module).

The server accepts at most 8 images per request while the client sends 64, so every run also goes
through the client's request splitting.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eluserve.classify.runners import ServerRunner
from tests.classify.conftest import Result, Tree
from tests.classify.trees import read_jsonl, relative_rows
from tests.service.bento_server import BentoServer, running_server

pytestmark = pytest.mark.integration

Classify = Callable[..., Result]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serving_model_path: Path) -> Iterator[BentoServer]:
    with running_server(
        tmp_path_factory.mktemp("classify-server"),
        {"ELUSERVE_MODEL": str(serving_model_path), "ELUSERVE_MAX_IMAGES": "8"},
    ) as running:
        yield running


def test_both_runners_agree_file_by_file(
    classify: Classify, tree: Tree, server: BentoServer, serving_model_path: Path, tmp_path: Path
) -> None:
    local_out, server_out = tmp_path / "local.jsonl", tmp_path / "server.jsonl"
    local = classify(tree.root, "--model", serving_model_path, "-o", local_out, "--top-k", "3")
    remote = classify(
        tree.root, "--server", server.url, "-o", server_out, "--top-k", "3", "--concurrency", "3"
    )
    assert (remote.code, local.code) == (1, 1), remote.stderr
    local_rows = relative_rows(read_jsonl(local_out), tree.root)
    server_rows = relative_rows(read_jsonl(server_out), tree.root)
    assert set(server_rows) == set(local_rows) == set(tree.expected)
    for name, expected in local_rows.items():
        actual = server_rows[name]
        assert actual["error"] == expected["error"], name
        if expected["error"]:
            continue
        want = {entry["label"]: entry["probability"] for entry in expected["top_k"]}
        got = {entry["label"]: entry["probability"] for entry in actual["top_k"]}
        probabilities = sorted(want.values(), reverse=True)
        if probabilities[0] - probabilities[1] > 1e-5:  # a near-tie may order differently
            assert actual["label"] == expected["label"], name
            assert got.keys() == want.keys(), name
        for label in got.keys() & want.keys():
            assert abs(got[label] - want[label]) <= 1e-5, (name, label)
    failed = sum(code is not None for code in tree.expected.values())
    assert f"failed: {failed}" in remote.stderr and f"failed: {failed}" in local.stderr


def test_server_runner_reads_ahead_a_bounded_number_of_files(tree: Tree, server: BentoServer) -> None:
    image = str(next(iter((tree.root / "cifar").rglob("*.jpg"))))
    taken = itertools.count()

    def endless() -> Iterator[str]:
        for _ in taken:
            yield image

    with ServerRunner(server.url, batch_size=8, concurrency=2) as runner:
        rows = runner.classify(endless())
        first = list(itertools.islice(rows, 40))
        rows.close()
    assert len(first) == 40 and all(row.ok for row in first)
    assert next(taken) <= 40 + (2 * 2 + 1) * 8 + 1


def test_evaluate_through_the_server(classify: Classify, tree: Tree, server: BentoServer) -> None:
    result = classify(tree.root / "cifar", "--server", server.url, "--evaluate")
    assert result.code == 0, result.stderr
    labelled = sum(name.startswith("cifar/") for name in tree.expected)
    assert f"evaluation: {labelled} images in folders named after the model's labels" in result.stderr
