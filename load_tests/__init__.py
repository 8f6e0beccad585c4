"""Load tests and benchmarks of the eluserve HTTP service.

`locustfile` drives realistic mixed traffic under locust; `bench` (`eluserve bench`) holds the service
against a naive server, PyTriton and the raw ONNX Runtime limit, from the building blocks `fixtures`
(payloads), `servers` (start/stop on free ports), `loadgen` (closed-loop client), `report` and
`profiling` (py-spy). `naive_server` and `triton_server` are the baselines; not product paths.
"""
