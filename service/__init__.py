"""`eluserve.service`: the BentoML service over the inference core.

`app` holds the BentoML service `EluClassifier` and its routes; `http_api` the classify endpoints of one
model version (multipart in, JSON out); `models_api` the per-model routes and Triton's repository
extension; `v2` the Open Inference Protocol; `openapi` the published `/docs.json`; `repository` the
model folder and each worker's loaded versions; `control` how loads and unloads reach every worker;
`forms` the streaming multipart reader; `batching` the adaptive batcher; `device_host`, `device_client`
and `device_protocol` shared device batching (one process batching every worker's crops);
`accept_balance` the even spread of connections over the workers; `metrics` the Prometheus series;
`config` the ``ELUSERVE_*`` settings; `http_protocol` and `bentoml_patches` the fixes to the HTTP stack;
`processes` whether a worker still runs.
"""
