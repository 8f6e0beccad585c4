"""The model repository in-process: folder layouts, loading with real ONNX Runtime sessions, leases
across a reload, failed loads, and the shared control state that carries loads between workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from eluserve.core.errors import ClientError, ConfigError
from eluserve.service.config import load_settings
from eluserve.service.control import LOADED, UNLOADED, ControlState, Follower
from eluserve.service.repository import (
    ModelLoadError,
    ModelNotFound,
    ModelRegistry,
    check_repository,
    scan_repository,
    version_key,
)
from tests.conftest import build_tiny_model


def make_repository(root: Path) -> Path:
    """tiny-a: today's layout (one file, version 1 in its metadata); tiny-b: versions 1, 2 and 10."""
    build_tiny_model(root / "tiny-a" / "model.onnx", name="tiny-a", version="1")
    for seed, version in enumerate(("1", "2", "10")):
        build_tiny_model(root / "tiny-b" / version / "model.onnx", name="tiny-b", version=version, seed=seed)
    return root


def registry_for(root: Path, **env: str) -> ModelRegistry:
    settings = load_settings(
        {
            "ELUSERVE_MODEL_REPOSITORY": str(root),
            "ELUSERVE_DEFAULT_MODEL": "tiny-a",
            "ELUSERVE_WARMUP_ROUNDS": "0",
            "ELUSERVE_MAX_BATCH_SIZE": "4",
            **env,
        }
    )
    return ModelRegistry(settings, workers=1)


def test_both_layouts_are_read_and_disagreeing_files_are_named(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    build_tiny_model(root / "tiny-c" / "3" / "model.onnx", name="tiny-c", version="4")
    build_tiny_model(root / "tiny-d" / "model.onnx", name="someone-else")
    (root / "tiny-e").mkdir()
    (root / "tiny-e" / "model.onnx").write_bytes(b"not onnx at all")
    (root / "notes").mkdir()

    entries = scan_repository(root)

    assert set(entries) == {"tiny-a", "tiny-b", "tiny-c", "tiny-d", "tiny-e"}
    assert dict(entries["tiny-a"].versions) == {"1": root / "tiny-a" / "model.onnx"}
    assert entries["tiny-b"].latest == "10"  # numerically, not "2"
    assert sorted(entries["tiny-b"].versions, key=version_key) == ["1", "2", "10"]
    (problem,) = entries["tiny-c"].problems
    assert str(root / "tiny-c" / "3" / "model.onnx") in problem and "'4'" in problem
    assert "someone-else" in entries["tiny-d"].problems[0]
    assert str(root / "tiny-e" / "model.onnx") in entries["tiny-e"].problems[0]
    assert not entries["tiny-e"].versions


def test_start_up_check_names_the_default_model_and_what_exists(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    settings = load_settings({"ELUSERVE_MODEL_REPOSITORY": str(root), "ELUSERVE_DEFAULT_MODEL": "nope"})
    with pytest.raises(ConfigError, match=r"'nope'.*\['tiny-a', 'tiny-b'\]"):
        check_repository(settings)
    with pytest.raises(ConfigError, match="model_control"):
        load_settings({"ELUSERVE_MODEL_CONTROL": "sometimes"})


def test_the_model_setting_alone_serves_that_model_only(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "lonely" / "model.onnx", name="lonely", version="7")
    settings = load_settings({"ELUSERVE_MODEL": str(model)})
    registry = ModelRegistry(settings, workers=1)
    assert not settings.serves_repository()
    assert registry.default_name == "lonely"
    assert set(registry.scan()) == {"lonely"}


def test_requests_in_flight_keep_their_version_across_a_reload(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    registry = registry_for(root)
    registry.load_all()
    crop = np.full((1, 32, 32, 3), 90, dtype=np.uint8)
    try:
        with registry.lease("tiny-b") as before:
            assert before.info.version == "10"
            build_tiny_model(root / "tiny-b" / "11" / "model.onnx", name="tiny-b", version="11", seed=7)
            assert registry.load("tiny-b") == ["1", "2", "10", "11"]
            with registry.lease("tiny-b") as after:
                assert after.info.version == "11"
            # The old version still answers the request that holds it.
            old = before.session.predict(crop)
        assert registry.describe("tiny-b")["latest_version"] == "11"
        with registry.lease("tiny-b", "2") as pinned:
            assert pinned.info.tag == "tiny-b:2"
        assert not np.allclose(old, after.session.predict(crop))
    finally:
        registry.close()


def test_a_failed_load_names_the_file_and_keeps_what_serves(tmp_path: Path) -> None:
    root = make_repository(tmp_path)
    registry = registry_for(root)
    registry.load_all()
    try:
        broken = root / "tiny-b" / "12" / "model.onnx"
        broken.parent.mkdir()
        shutil.copy(root / "tiny-b" / "10" / "model.onnx", broken)
        broken.write_bytes(broken.read_bytes()[:500])  # cut short
        with pytest.raises(ModelLoadError, match=str(broken)):
            registry.load("tiny-b")
        with registry.lease("tiny-b") as served:
            assert served.info.version == "10"
        assert any(row.get("reason", "").startswith(str(broken)) for row in registry.index())
    finally:
        registry.close()


def test_unload_and_unknown_models(tmp_path: Path) -> None:
    registry = registry_for(make_repository(tmp_path))
    registry.load_all()
    try:
        registry.unload("tiny-b")
        with pytest.raises(ModelNotFound, match="tiny-b"), registry.lease("tiny-b"):
            pass
        unloaded = {"name": "tiny-b", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert unloaded in registry.index()
        with pytest.raises(ClientError, match="default model") as refused:
            registry.unload("tiny-a")
        assert refused.value.status == 400
        with pytest.raises(ModelNotFound, match="no loaded version '9'"), registry.lease("tiny-a", "9"):
            pass
        with pytest.raises(ModelNotFound):
            registry.load("missing")
    finally:
        registry.close()


def test_changes_recorded_by_one_worker_reach_another(tmp_path: Path) -> None:
    """Two followers on one control folder stand for two workers (one process: one ack file)."""
    applied: list[tuple[str, str]] = []
    state = ControlState(tmp_path)
    asker = Follower(state, lambda name, change: None, poll_s=60)
    other = Follower(ControlState(tmp_path), lambda name, change: applied.append((name, change)), poll_s=60)
    assert other.to_serve(["tiny-a", "tiny-b", "tiny-c"]) == {"tiny-a", "tiny-b", "tiny-c"}

    generation = asker.changed("tiny-b", UNLOADED)
    other.poll()
    assert applied == [("tiny-b", UNLOADED)]
    assert state.wait_for_workers(generation, workers=1, timeout_s=1) == (1, [])
    other.poll()  # unchanged file: nothing applied twice
    assert applied == [("tiny-b", UNLOADED)]

    asker.changed("tiny-b", LOADED)
    asker.changed("tiny-c", UNLOADED)
    asker.changed("tiny-new", LOADED)
    other.poll()
    assert applied[1:] == [("tiny-b", LOADED), ("tiny-c", UNLOADED), ("tiny-new", LOADED)]
    # A worker (re)started now serves what the others serve: the models on disk at the first start,
    # plus loads, minus unloads; a folder that appeared since but was never loaded stays unserved.
    restarted = Follower(state, lambda name, change: None, poll_s=60)
    assert restarted.to_serve(["tiny-a", "tiny-b", "tiny-c", "tiny-new", "tiny-later"]) == {
        "tiny-a",
        "tiny-b",
        "tiny-new",
    }
