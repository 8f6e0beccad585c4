"""Coverage-guided fuzzing of `eluserve.core.preprocessing.load_image` with atheris (libFuzzer for Python).

The hypothesis properties in `test_fuzz_decode.py` run a bounded number of examples in CI; this runs
for as long as it is given, steering by the coverage of Pillow's Python plugins (where every header is
parsed) and of our own decoding code. Any exception other than `ClientError`, or a crop of the wrong
shape, is a finding: libFuzzer stops and writes the input to `crash-<sha1>` in the working directory.

Not collected by pytest (no `test_` prefix). From the repository root:

    .venv/bin/pip install atheris
    # write the seed corpus (every sample of hostile_samples.py) once
    .venv/bin/python -m tests.reliability.fuzz_decode --make-corpus .cache/fuzz-corpus
    # fuzz for an hour, growing the corpus; libFuzzer flags go after the corpus folder
    .venv/bin/python -m tests.reliability.fuzz_decode .cache/fuzz-corpus \\
        -max_total_time=3600 -max_len=65536 -rss_limit_mb=4096 -timeout=10
    # replay one finding
    .venv/bin/python -m tests.reliability.fuzz_decode crash-<sha1>

The pixel limit is lowered to 4 megapixels so that a mutated header cannot make one input allocate
hundreds of megabytes and trip `-rss_limit_mb`; the byte limit is the service default.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "service"]):
    from PIL import Image

    from eluserve.core.errors import ClientError
    from eluserve.core.preprocessing import Limits, PreprocessingRule, load_image

    Image.init()  # import every format plugin now, inside the block, so that they are instrumented too

RULE = PreprocessingRule(resize_shorter_side=32, crop=(32, 32))
LIMITS = Limits(max_pixels=4_000_000)


def fuzz_one_input(data: bytes) -> None:
    """libFuzzer's entry point: decode one input; only a client error or the right crop may result."""
    try:
        crop = load_image(data, RULE, LIMITS)
    except ClientError:
        return
    if crop.shape != (*RULE.crop, 3) or crop.dtype.name != "uint8":
        raise AssertionError(f"load_image returned {crop.dtype} {crop.shape}")


def make_corpus(folder: Path) -> None:
    """Write every hostile sample as one seed file."""
    from tests.reliability.hostile_samples import seeds

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (folder / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {folder}")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--make-corpus":
        make_corpus(Path(argv[2]))
        return
    warnings.simplefilter("ignore")  # Pillow warns about every corruption it survives
    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
