"""`eluserve.service`: the BentoML service over the inference core.

`app` holds the BentoML service `EluClassifier` and its routes; `repository` the model folder and each
worker's loaded versions; `control` how loads and unloads reach every worker; `batching` the adaptive
batcher; `metrics` the Prometheus series; `config` the ``ELUSERVE_*`` settings; `processes` whether a
worker still runs. Three sub-packages hold the rest:

- `api`: the HTTP surfaces. `api.classify` the classify endpoints of one model version (multipart or
  an image body in, JSON out), `api.forms` the streaming body and multipart reader, `api.models` the
  per-model routes and Triton's repository extension, `api.v2` the Open Inference Protocol (its body
  parsing in `api.v2_tensors`), `api.openapi` the published `/docs.json` (its schemas in
  `api.openapi_schemas`), `api.errors` the error body of unknown routes, `api.page` the page at `/`.
- `device`: shared device batching, one process batching every worker's crops: `device.host`,
  `device.client` (the worker's side) and `device.protocol` (the frames between them).
- `runtime`: the framework glue, every change to BentoML's, uvicorn's and asyncio's internals, applied
  by its one `install()`.
"""
