"""Sampling profiles of a running server with py-spy, and a plain-text digest of where time goes.

py-spy reads the target's memory from outside (`--nonblocking`: without pausing it), so the server
runs unmodified and the profile costs a little CPU in the py-spy process only. Two recordings of the
same window: a flame graph (SVG, for people) and collapsed stacks (`--format raw`), which the digest
reads. Only threads holding or waiting on real work are sampled (no `--idle`), so shares are shares
of busy time. ONNX Runtime's own thread pool is native and invisible to py-spy; its work shows up
under the Python frame that called `session.run`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

_PROCESS = re.compile(r'^process (\d+):"(.*)"$')
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
#: The service's own stages, matched on the whole stack (inclusive time) as (function name, a fragment
#: of its file path); py-spy qualifies methods with their class, so "run" also matches "Session.run".
STAGES: tuple[tuple[str, str, str], ...] = (
    ("ONNX Runtime session.run", "run", "onnxruntime/"),
    ("decode + crop (eluserve.core.preprocessing)", "load_image", "core/preprocessing"),
    ("multipart parsing (eluserve.service.api.forms)", "read_form", "service/api/forms"),
    ("raw image body reading (eluserve.service.api.forms)", "read_body", "service/api/forms"),
    ("top-k + result objects", "format_results", "core/results"),
    ("JSON rendering", "render", "starlette/responses"),
)
#: Self time by the library of the innermost frame (first match wins; py-spy runs with
#: --full-filenames so that paths are unambiguous): these shares add up to 100 %. BentoML comes before
#: eluserve because its `_bentoml_sdk/service/` would otherwise count as eluserve's `service/`.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnxruntime", ("/onnxruntime/",)),
    ("Pillow", ("/PIL/",)),
    ("numpy", ("/numpy/",)),
    ("BentoML", ("/bentoml/", "/_bentoml_impl/", "/_bentoml_sdk/")),
    ("eluserve (eluserve/, service/, load_tests/)", ("/eluserve/", "/service/", "/load_tests/")),
    ("OpenTelemetry", ("/opentelemetry/",)),
    ("Prometheus client", ("/prometheus_client/",)),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("Starlette", ("/starlette/",)),
    ("uvicorn + h11 + httptools", ("/uvicorn/", "/h11/", "/httptools/")),
    ("python-multipart", ("/python_multipart/", "/multipart/")),
    ("anyio", ("/anyio/",)),
    ("asyncio (event loop, sockets)", ("/asyncio/", "/selectors.py")),
    ("other installed packages", ("/site-packages/",)),
    ("Python standard library (other)", ("/lib/python3", "<frozen")),
)


#: Leaf frames of a thread that waits rather than works; py-spy's idle detection misses some.
IDLE_LEAVES = frozenset(
    {"EpollSelector.select", "Condition.wait", "Event.wait", "_worker", "SimpleQueue.get", "Queue.get"}
)


def pyspy_binary() -> str | None:
    """py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


@dataclass
class Recording:
    """Two py-spy processes sampling one process tree for a fixed time."""

    svg: Path
    raw: Path
    processes: tuple[subprocess.Popen[bytes], ...]

    def wait(self, timeout: float) -> None:
        for proc in self.processes:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def record(pid: int, seconds: float, out_dir: Path, name: str, rate: int = 100) -> Recording:
    """Start sampling `pid` and its subprocesses for `seconds`; returns at once.

    Raises:
        FileNotFoundError: py-spy is not installed (`pip install py-spy`).
    """
    binary = pyspy_binary()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed; `pip install py-spy` to profile")
    out_dir.mkdir(parents=True, exist_ok=True)
    svg, raw = out_dir / f"profile-{name}.svg", out_dir / f"profile-{name}.txt"
    common = [
        "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--full-filenames",
        "--duration", str(max(1, round(seconds))), "--rate", str(rate),
    ]  # fmt: skip
    log = (out_dir / f"profile-{name}.log").open("ab")
    processes = tuple(
        subprocess.Popen([binary, *common, "--format", fmt, "--output", str(path)], stdout=log, stderr=log)
        for fmt, path in (("flamegraph", svg), ("raw", raw))
    )
    log.close()
    return Recording(svg, raw, processes)


def digest(raw: Path, top: int = 12) -> str:
    """Per process: its share of the busy samples, the service stages' inclusive shares, self time
    by library, the hottest frames. Samples whose innermost frame is a wait (`IDLE_LEAVES`) are
    counted apart as idle.

    Returns:
        Markdown.
    """
    busy: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    stages: dict[str, Counter[str]] = defaultdict(Counter)
    libraries: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        process, frames = "?", []
        for text in stack.split(";"):
            if match := _PROCESS.match(text):
                process = f"{match.group(1)} {_short_command(match.group(2))}"
            elif match := _FRAME.match(text.strip()):
                frames.append((match.group(1), match.group(2)))
        if not frames or frames[-1][0] in IDLE_LEAVES:
            idle[process] += count
            continue
        busy[process] += count
        for stage, function, fragment in STAGES:
            if any(fragment in file and name.split(".")[-1] == function for name, file in frames):
                stages[process][stage] += count
        name, file = frames[-1]
        library = next((lib for lib, fragments in LIBRARIES if any(f in file for f in fragments)), "other")
        libraries[process][library] += count
        leaves[process][f"{name} ({'/'.join(Path(file).parts[-2:])})"] += count
    total = sum(busy.values())
    if total == 0:
        return "(no busy samples: the processes were idle or py-spy could not attach)\n"
    lines = []
    for process, count in busy.most_common():
        lines.append(
            f"**{process}**: {100 * count / total:.0f} % of the busy samples of all processes "
            f"({count} busy, {idle[process]} waiting)\n"
        )
        lines.append("| stage (inclusive) | share of this process's busy samples |\n| --- | ---: |")
        lines += [f"| {stage} | {100 * n / count:.0f} % |" for stage, n in stages[process].most_common()]
        lines.append("\n| library of the innermost frame (self) | share |\n| --- | ---: |")
        lines += [f"| {lib} | {100 * n / count:.0f} % |" for lib, n in libraries[process].most_common()]
        lines.append("\n| hottest frame (self) | share |\n| --- | ---: |")
        lines += [f"| `{frame}` | {100 * n / count:.1f} % |" for frame, n in leaves[process].most_common(top)]
        lines.append("")
    return "\n".join(lines) + "\n"


def _short_command(command: str) -> str:
    words = command.split()
    for flag in ("--service-name", "-m"):
        if flag in words[:-1]:
            return words[words.index(flag) + 1]
    return Path(words[0]).name if words else "?"
