"""The inference core that everything else sits on: imports nothing else of ours.

`contract` (tensor names, metadata keys, `ModelMetadata`), `errors`, `preprocessing` (decode + single
crop), `session` (`ModelSession` on ONNX Runtime), `results` (top-k), `paths` (where the packaged
models are) and `throughput` (the raw-engine limit every other figure is held to).
"""
