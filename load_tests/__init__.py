"""Load tests and benchmarks of eluserve, run from a source checkout (not part of the installed package).

`python -m load_tests bench` holds the service against a naive server, PyTriton and the raw ONNX
Runtime limit, from the building blocks `fixtures` (payloads), `servers` (start/stop on free ports),
`loadgen` (closed-loop client), `report` and `profiling` (py-spy); `bench_classify` measures folder
classification. `locustfile` drives realistic mixed traffic under locust; `soak` and `faults` hold the
service for long and kill its workers. `naive_server` and `triton_server` are baselines, not product
paths. Everything here imports `eluserve`; nothing in `eluserve` imports this package.
"""

from pathlib import Path

#: The repository root: the benchmarks, the tests and their fixtures find the checkout's files from it.
REPO_ROOT = Path(__file__).resolve().parent.parent
