"""Training and export stage: the ELU model zoo, data, trainer and the fused-ELU ONNX exporter.

Everything here needs torch; the serving side (`service/`) never imports this package.
"""
