"""Settings from defaults, a config file and ELUSERVE_* variables; model resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from eluserve.core.engines import CUDA
from eluserve.core.errors import ConfigError
from eluserve.core.paths import default_model_file
from eluserve.core.session import available_cores
from eluserve.service.config import Settings, load_settings, resolve_model
from load_tests import REPO_ROOT
from tests.deadlines import COMMAND_S


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings({})
    assert settings == Settings()
    # No ELUSERVE_MODEL: the packaged repository is served, its default model behind /classify.
    assert settings.model == "" and settings.serves_repository()
    assert settings.model_file() == default_model_file()
    assert settings.default_model_name() == "elufast-cifar10"
    assert settings.model_control == "none"
    # An editable install resolves the packaged default into the checkout's models/ folder.
    assert default_model_file() == REPO_ROOT / "models" / "elufast-cifar10" / "model.onnx"
    limits = settings.limits()
    assert (limits.max_image_bytes, limits.max_pixels, settings.max_images) == (
        10 * 1024 * 1024,
        40_000_000,
        64,
    )
    assert settings.provider_list() is None
    assert (settings.engine, settings.precision) == ("auto", "fp32")


def test_environment_variables_override_defaults() -> None:
    settings = load_settings(
        {
            "ELUSERVE_MAX_BATCH_SIZE": "16",
            "ELUSERVE_TIMEOUT_S": "2.5",
            "ELUSERVE_PROVIDERS": "CPUExecutionProvider, CUDAExecutionProvider",
            "ELUSERVE_WORKERS": "",  # empty means unset
        }
    )
    assert settings.max_batch_size == 16 and settings.timeout_s == 2.5
    assert settings.workers == Settings().workers
    assert settings.provider_list() == ["CPUExecutionProvider", "CUDAExecutionProvider"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("eluserve.yaml", "max_images: 8\nmax_latency_ms: 50\n"),
        ("eluserve.json", json.dumps({"max_images": 8, "max_latency_ms": 50})),
        ("eluserve.toml", "max_images = 8\nmax_latency_ms = 50\n"),
    ],
)
def test_config_files_are_read_and_environment_wins(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    settings = load_settings({"ELUSERVE_CONFIG": str(path), "ELUSERVE_MAX_LATENCY_MS": "75"})
    assert settings.max_images == 8 and settings.max_latency_ms == 75


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ELUSERVE_MAX_IMAGES": "many"}, "max_images='many'"),
        ({"ELUSERVE_MAX_IMAGES": "0"}, "at least 1"),
        ({"ELUSERVE_MAX_BATCH_SIZE": "0"}, "at least 1"),
        ({"ELUSERVE_TIMEOUT_S": "soon"}, "expected float"),
        ({"ELUSERVE_TRACING": "maybe"}, "tracing='maybe'"),
        ({"ELUSERVE_ENGINE": "tensorrt"}, "engine='tensorrt': use one of auto, onnxruntime, openvino"),
        ({"ELUSERVE_PRECISION": "int8"}, "precision='int8': use one of fp32, bf16, fp16"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)


def test_config_file_problems_are_explained(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"max_imagez": 3}')
    with pytest.raises(ConfigError, match="unknown setting 'max_imagez'"):
        load_settings({"ELUSERVE_CONFIG": str(unknown)})
    broken = tmp_path / "broken.toml"
    broken.write_text("max_images = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"ELUSERVE_CONFIG": str(broken)})
    fractional = tmp_path / "fractional.yaml"
    fractional.write_text("max_images: 2.5")
    with pytest.raises(ConfigError, match="whole number"):
        load_settings({"ELUSERVE_CONFIG": str(fractional)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"ELUSERVE_CONFIG": str(tmp_path / "absent.yaml")})
    with pytest.raises(ConfigError, match="extension"):
        load_settings({"ELUSERVE_CONFIG": str(unknown.rename(tmp_path / "settings.ini"))})


def test_threads_are_cores_divided_by_workers() -> None:
    cores = available_cores()
    assert Settings(workers=1).threads_per_worker() == cores
    assert Settings(workers=cores * 2).threads_per_worker() == 1
    assert Settings(intra_op_threads=3, workers=2).threads_per_worker() == 3
    assert Settings(workers=1).threads_per_worker(workers=cores * 2) == 1


def test_device_batching_is_shared_only_where_a_session_would_run_on_cuda() -> None:
    on_cuda = CUDA in ort.get_available_providers()  # the onnxruntime-gpu build
    assert Settings().device_batching == "auto"
    assert Settings().runs_on_cuda() is on_cuda
    assert Settings().device_batching_mode(workers=2) == ("shared" if on_cuda else "worker")
    # One worker has nothing to merge; OpenVINO and a CPU-only provider list never run on CUDA.
    assert Settings().device_batching_mode(workers=1) == "worker"
    assert Settings(engine="openvino").device_batching_mode(workers=4) == "worker"
    assert not Settings(providers="CPUExecutionProvider").runs_on_cuda()
    # Forced either way, whatever the machine (the tests force `shared` on CPU).
    assert Settings(device_batching="shared").device_batching_mode(workers=1) == "shared"
    assert Settings(device_batching="worker").device_batching_mode(workers=8) == "worker"
    assert load_settings({"ELUSERVE_DEVICE_BATCHING": "shared"}).device_batching == "shared"
    with pytest.raises(ConfigError, match="device_batching"):
        load_settings({"ELUSERVE_DEVICE_BATCHING": "gpu"})


def test_the_shared_device_batch_holds_a_full_batch_of_every_worker_unless_set() -> None:
    assert Settings().device_batch_size(workers=15) == 64 * 15
    assert Settings(max_batch_size=16).device_batch_size(workers=2) == 32
    assert Settings(device_max_batch_size=512).device_batch_size(workers=15) == 512
    assert load_settings({"ELUSERVE_DEVICE_MAX_BATCH_SIZE": "256"}).device_batch_size(workers=2) == 256


def test_workers_default_to_two_or_to_the_cores_that_feed_a_shared_device() -> None:
    cores = available_cores()
    on_cuda = CUDA in ort.get_available_providers()
    assert Settings().workers == 0
    assert Settings().worker_count() == (max(2, cores - 1) if on_cuda else 2)
    assert Settings(device_batching="worker").worker_count() == 2
    assert Settings(engine="openvino").worker_count() == 2
    assert Settings(workers=3).worker_count() == 3
    assert load_settings({"ELUSERVE_WORKERS": "5"}).worker_count() == 5


def test_models_resolve_from_files_and_folders(tiny_model_path: Path) -> None:
    assert resolve_model(str(tiny_model_path)) == tiny_model_path
    assert resolve_model(str(tiny_model_path.parent)) == tiny_model_path


def test_an_unknown_model_says_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BentoML model tag"):
        resolve_model(str(tmp_path / "nothing.onnx"))


@pytest.mark.integration
def test_models_resolve_from_the_bentoml_model_store(tmp_path: Path, tiny_model_path: Path) -> None:
    """A tag resolves through the model store (run in a subprocess: BENTOML_HOME is read at import)."""
    script = f"""
import shutil, bentoml
from eluserve.service.config import resolve_model
with bentoml.models.create("tiny-store") as model:
    shutil.copy({str(tiny_model_path)!r}, model.path_of("model.onnx"))
print(resolve_model("tiny-store:latest"))
try:
    resolve_model("absent-model:v1")
except Exception as exc:
    print(type(exc).__name__)
"""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
    )
    assert result.returncode == 0, result.stderr
    resolved, error = result.stdout.split()
    assert resolved.startswith(str(tmp_path / "home" / "models" / "tiny-store"))
    assert resolved.endswith("model.onnx") and Path(resolved).is_file()
    assert error == "ConfigError"


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False)]
)
def test_switches_read_the_usual_spellings(raw: str, expected: bool) -> None:
    assert load_settings({"ELUSERVE_TRACING": raw}).tracing is expected


def test_switches_in_a_config_file_are_booleans(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("tracing: true\n")
    assert load_settings({"ELUSERVE_CONFIG": str(path)}).tracing is True
    assert Settings().tracing is False


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("deep.json", '{"max_images": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested deeper"),
        ("deep.yaml", "max_images: " + "[" * 20_000 + "]" * 20_000, "nested too deeply|not valid YAML"),
        ("deep.toml", "max_images = " + "[" * 20_000 + "]" * 20_000, "nested too deeply"),
        ("huge.json", '{"max_images": 3, "pad": "' + "x" * (2 << 20) + '"}', "larger than"),
        ("tab.yaml", "max_images:\t- [", "not valid YAML"),
        ("latin1.json", b'{"max_images": "\xe9"}', "not UTF-8"),
    ],
)
def test_config_files_no_parser_copes_with_are_config_errors(
    tmp_path: Path, name: str, text: str | bytes, message: str
) -> None:
    """Deep nesting, size and encoding: a `ConfigError` naming the file, never a RecursionError."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        load_settings({"ELUSERVE_CONFIG": str(path)})
