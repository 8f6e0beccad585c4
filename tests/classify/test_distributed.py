"""`eluserve classify --runner ray`: the in-process runner's rows, file by file, from a real Ray.

The Ray tests start a local Ray once for the module (`ray.init(num_cpus=2)`) and, last, a simulated
two-node cluster (`ray.cluster_utils.Cluster`); each pipeline run then starts an actor pool (worker
processes, imports, a session). On the shared 2-core machine: Ray 11.5 s, the cluster 8.9 s, the module
51 s in all at load average 3-8; 19 s, 18 s and 147 s at load average 12-17.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="--runner ray needs the distributed extra")
pq = pytest.importorskip("pyarrow.parquet")

from eluserve.classify.files import UsageError, iter_image_files  # noqa: E402
from eluserve.classify.ray_plan import DECODE_CPUS, FILES_PER_CALL, RayResources, files_per_call, plan  # noqa: E402
from eluserve.classify.ray_runner import RayRunner  # noqa: E402
from eluserve.classify.rows import Row  # noqa: E402
from eluserve.classify.runners import LocalRunner  # noqa: E402
from eluserve.classify.uris import iter_uri_files, list_files  # noqa: E402
from tests.classify.conftest import Result, Tree  # noqa: E402
from tests.classify.test_cli import summary_counts  # noqa: E402
from tests.deadlines import STARTUP_S  # noqa: E402

pytestmark = pytest.mark.integration

Classify = Callable[..., Result]
EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray of 2 CPUs, as on CI's machine; the runners join it instead of starting their own."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"\nray.init(num_cpus=2): {time.perf_counter() - started:.1f} s")
    yield
    ray.shutdown()


def assert_same_rows(got: list[Row], want: list[Row]) -> None:
    """Same paths in the same order, same errors, same labels, probabilities within 1e-5."""
    assert [row.path for row in got] == [row.path for row in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.error == theirs.error, mine.path
        assert mine.label == theirs.label, mine.path
        assert [label for label, _ in mine.top_k] == [label for label, _ in theirs.top_k], mine.path
        for (_, p), (_, q) in zip(mine.top_k, theirs.top_k, strict=True):
            assert abs(p - q) <= 1e-5, mine.path


def local_rows(model: Path, files: list[str]) -> list[Row]:
    return list(LocalRunner.load(model, 3, batch_size=4).classify(files))


def test_plan_gives_gpus_to_actors_and_cpus_to_one_thread_actors() -> None:
    assert plan([2.0], 0.0, RayResources()) == plan([2.0], 0.0, RayResources(actors=2))
    two_cores = plan([2.0], 0.0, RayResources())
    assert (two_cores.actors, two_cores.threads, two_cores.gpus_per_actor) == (2, 1, 0.0)
    assert two_cores.actors * two_cores.cpus_per_actor == 2.0
    assert two_cores.decode_cpus == 0.0  # the actors decode
    big = plan([16.0, 16.0], 0.0, RayResources())
    assert (big.actors, big.threads) == (32, 1)
    gpus = plan([8.0, 8.0], 4.0, RayResources())
    assert (gpus.actors, gpus.gpus_per_actor, gpus.cpus_per_actor) == (4, 1.0, 1.0)
    assert gpus.decode_cpus == DECODE_CPUS
    assert plan([8.0], 4.0, RayResources(gpus_per_actor=0.5)).actors == 8
    assert plan([8.0], 4.0, RayResources(gpus_per_actor=0)).gpus_per_actor == 0.0
    with pytest.raises(UsageError, match="the cluster has 0 GPUs"):
        plan([8.0], 0.0, RayResources(gpus_per_actor=1))
    assert plan([0.0, 8.0], 0.0, RayResources()).actors == 8
    with pytest.raises(UsageError, match="lower --ray-actors"):
        plan([2.0], 0.0, RayResources(actors=3))
    with pytest.raises(UsageError, match="lower --ray-actors"):
        plan([8.0], 2.0, RayResources(actors=3))


def test_files_per_call_are_large_but_shared_by_every_actor() -> None:
    assert files_per_call(10_000, 2, 64) == FILES_PER_CALL
    assert files_per_call(1_000, 2, 64) == 125  # four calls per actor
    assert files_per_call(100, 8, 64) == 64  # never below one inference batch


def test_uri_listing_follows_the_local_rules(tmp_path: Path) -> None:
    """file:// goes through pyarrow: sorted, hidden entries skipped, kept by extension."""
    for name in ("b.jpg", "a/c.PNG", "a/.d.jpg", ".hidden/e.jpg", "notes.txt", "f.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    uri = f"file://{tmp_path}"
    assert list(iter_uri_files(uri, EXTENSIONS)) == [
        f"{uri}/{name}" for name in ("a/c.PNG", "b.jpg", "f.webp")
    ]
    assert list(iter_uri_files(uri, EXTENSIONS, recursive=False)) == [f"{uri}/b.jpg", f"{uri}/f.webp"]
    assert list(iter_uri_files(f"{uri}/notes.txt", EXTENSIONS)) == [f"{uri}/notes.txt"]
    with pytest.raises(UsageError, match="no such file or folder"):
        list(iter_uri_files(f"{uri}/missing", EXTENSIONS))


def test_same_rows_as_the_in_process_runner(local_ray: None, tree: Tree, serving_model_path: Path) -> None:
    """Every file of the tree, bad ones included, in batches of 4: labels equal, probabilities 1e-5."""
    files = list(iter_image_files([str(tree.root)], EXTENSIONS))
    runner = RayRunner.load(serving_model_path, 3, batch_size=4).connect()
    rows = list(runner.classify(files))
    assert_same_rows(rows, local_rows(serving_model_path, files))
    codes = {os.path.relpath(row.path, tree.root): row.code or None for row in rows}
    assert codes == {name: code for name, code in tree.expected.items() if name in codes}
    assert {"invalid_image", "empty_file", "too_many_pixels", "image_too_large", "unreadable_file"} <= set(
        codes.values()
    )


def test_uris_are_read_on_the_workers(local_ray: None, tree: Tree, serving_model_path: Path) -> None:
    """file:// URIs give the rows of the same files read as paths (pyarrow omits broken links)."""
    roots = [f"file://{tree.root}/cifar", f"file://{tree.root}/bad"]
    files = list(list_files(roots, EXTENSIONS))
    runner = RayRunner.load(serving_model_path, 3, batch_size=4).connect()
    rows = list(runner.classify(files))
    as_paths = local_rows(serving_model_path, [path.removeprefix("file://") for path in files])
    assert_same_rows([replace(row, path=row.path.removeprefix("file://")) for row in rows], as_paths)
    assert "image_too_large" in {row.code for row in rows}


def test_cli_parquet_rows_and_resume(
    local_ray: None, classify: Classify, tree: Tree, serving_model_path: Path, tmp_path: Path
) -> None:
    """`--runner ray -o rows.parquet`: exit 1 (bad files), the local runner's rows; --resume finishes it."""
    out = tmp_path / "rows.parquet"
    local = tmp_path / "rows.jsonl"
    assert classify(tree.root, "--model", serving_model_path, "-o", local).code == 1
    result = classify(tree.root, "--model", serving_model_path, "-o", out, "--runner", "ray", "--evaluate")
    assert result.code == 1, result.stderr
    assert "accuracy: " in result.stderr
    table = pq.read_table(out).to_pylist()
    expected = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines()]
    assert [row["path"] for row in table] == [row["path"] for row in expected]
    for got, want in zip(table, expected, strict=True):
        assert (got["label"], got["error"]) == (want["label"], want["error"])
        assert [entry["label"] for entry in got["top_k"]] == [entry["label"] for entry in want["top_k"]]

    kept = 9
    pq.write_table(pq.read_table(out).slice(0, kept), out)
    resumed = classify(tree.root, "--model", serving_model_path, "-o", out, "--runner", "ray", "--resume")
    assert resumed.code == (1 if any(row["error"] for row in expected[kept:]) else 0), resumed.stderr
    assert summary_counts(resumed.stderr)["skipped"] == kept
    assert [row["path"] for row in pq.read_table(out).to_pylist()] == [row["path"] for row in expected]
    assert not (tmp_path / "rows.parquet.partial").exists()


def test_commands_on_one_running_ray_make_one_auto_choice(local_ray: None, serving_model_path: Path) -> None:
    """Two commands joining the same Ray name it alike to their actors, so that the second takes the
    first's `auto` choice instead of measuring the engines again (`load_session`)."""
    first, second = (RayRunner.load(serving_model_path, 3).connect() for _ in range(2))
    assert first.run == second.run


def test_cli_usage_errors(classify: Classify, tree: Tree, serving_model_path: Path) -> None:
    for args, message in (
        ([tree.root, "--runner", "ray", "--server", "http://127.0.0.1:1"], "pick one"),
        ([tree.root, "--model", serving_model_path, "--ray-actors", "2"], "--ray-actors need --runner ray"),
        ([f"file://{tree.root}", "--model", serving_model_path], "URIs are read by --runner ray"),
    ):
        result = classify(*args)
        assert result.code == 2 and message in result.stderr, result.stderr


@pytest.fixture
def two_nodes(local_ray: None) -> Iterator[str]:
    """A head of 1 CPU and a worker node of 2 CPUs and 1 GPU (declared: Ray counts it, ONNX Runtime
    finds none and runs on the CPU), in place of the module's local Ray."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes(timeout=STARTUP_S)  # Ray's default, 30 s, a busy machine can miss
    print(f"\ntwo-node cluster: {time.perf_counter() - started:.1f} s")
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def test_same_rows_on_two_nodes(two_nodes: str, tree: Tree, serving_model_path: Path) -> None:
    """GPU actors (decoding tasks feed the one GPU's actor) and CPU actors (one CPU each: one on the
    head, two on the worker, so rows come from both nodes) give the in-process runner's rows."""
    files = list(iter_image_files([str(tree.root / "cifar"), str(tree.root / "bad")], EXTENSIONS))
    want = local_rows(serving_model_path, files)
    gpu = RayRunner.load(serving_model_path, 3, batch_size=4).connect()
    assert gpu.plan is not None and (gpu.plan.actors, gpu.plan.gpus_per_actor) == (1, 1.0)
    assert_same_rows(list(gpu.classify(files)), want)
    cpu = RayRunner.load(serving_model_path, 3, batch_size=4, resources=RayResources(gpus_per_actor=0))
    cpu.connect()
    assert cpu.plan is not None and cpu.plan.actors == 3
    assert_same_rows(list(cpu.classify(files)), want)
    # Both nodes share this machine's temporary folder, so the three actors made one `auto` choice.
    assert len(cpu.runs_on) == 1, cpu.runs_on
    assert cpu.run == gpu.run
    # Commands given the cluster's address (each its own `ray.init`, as the CLI's) name it alike to their
    # actors, so that the second takes the first's `auto` choice instead of measuring again.
    ray.shutdown()
    runs = []
    for _ in range(2):
        with RayRunner.load(serving_model_path, 3).connect(two_nodes) as runner:
            runs.append(runner.run)
    assert runs[0] == runs[1] == cpu.run


@pytest.fixture
def no_ray() -> Iterator[None]:
    """No Ray connected in this process (the module's, if up, shut down): last in the module, since the
    tests above share the module's Ray."""
    ray.shutdown()
    yield
    ray.shutdown()


def test_a_ray_of_its_own_gives_the_same_rows(no_ray: None, tree: Tree, serving_model_path: Path) -> None:
    """Without a Ray to join, the runner starts one, gives the in-process runner's rows, and shuts it
    down."""
    files = list(iter_image_files([str(tree.root / "cifar"), str(tree.root / "bad")], EXTENSIONS))
    with RayRunner.load(serving_model_path, 3, batch_size=4).connect() as runner:
        assert_same_rows(list(runner.classify(files)), local_rows(serving_model_path, files))
        assert len(runner.runs_on) == 1, runner.runs_on
    assert not ray.is_initialized()
