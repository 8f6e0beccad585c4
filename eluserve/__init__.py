"""eluserve: train, export and serve ELU image classifiers.

One import namespace over the repository's folders (see the README's layout section):
`eluserve.core` (the model contract, errors, preprocessing, the inference session) imports nothing
else of ours; `eluserve.service` (the BentoML service, from `service/`), `eluserve.classify` (folder
classification) and `eluserve.export` (training and export, from `export/`) sit on it; `eluserve.cli`
sits on top. `eluserve.models` is package data: the embedded default model.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eluserve")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
