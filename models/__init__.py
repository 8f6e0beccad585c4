"""`eluserve.models`: the shipped models as package data (no code lives here).

Each folder is one model (`model.onnx` + model card). A built wheel or Bento carries only the embedded
default; a checkout holds every shipped model. `eluserve.core.paths` finds them.
"""
