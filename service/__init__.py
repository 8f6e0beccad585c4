"""eluserve serving: decode + single crop, ONNX Runtime inference, metrics and the BentoML service.

`service.preprocessing` and `service.inference` are the inference core that the BentoML service, the
folder CLI and the benchmarks share; `service.service` holds the BentoML services.
"""
