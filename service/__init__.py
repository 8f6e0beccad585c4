"""`eluserve.service`: the BentoML service over the inference core.

`app` holds the BentoML service `EluClassifier`; `http_api` the public HTTP endpoints; `forms` the
streaming multipart reader; `batching` the in-worker adaptive batcher; `metrics` the Prometheus series;
`config` the ``ELUSERVE_*`` settings; `http_protocol` and `bentoml_patches` the fixes to the HTTP stack; `processes` whether a worker still runs.
"""
