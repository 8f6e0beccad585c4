"""Training and export stage: the ELU model zoo, data, trainer and the fused-ELU ONNX exporter.

Everything here needs torch (the `train` extra). `eluserve.core` is all it imports of ours, and
neither `eluserve.service` nor `eluserve.classify` imports it (the import-linter contracts in
pyproject.toml check both), so the serving install stays free of torch.
"""
