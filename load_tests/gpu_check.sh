#!/usr/bin/env bash
# One command for a lent GPU machine (../shared/GPU.md): install onnxruntime-gpu and the serving
# packages from carried wheels where the image lacks them, then run load_tests/gpu_check.py.
#
# Prepare here, before the device call (the device reaches no network):
#   echo /.whl/ >> .git/info/exclude; mkdir -p .data && cp ../shared/data/cifar10-jpeg/train.zip .data/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl onnxruntime-gpu==1.31.1 bentoml==1.4.40 <bentoml's missing dependencies>
#   (a wheel over 60 MB travels split: split -b 60M; this script joins *.part-* pieces back)
# Then: run(command="bash load_tests/gpu_check.sh", carry=[".whl", ".data"], timeout_s=300)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=True PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    for first in .whl/*.part-aa; do
        [ -e "$first" ] || continue
        cat "${first%-aa}"-* > "${first%.part-aa}"
        rm -f "${first%-aa}"-*
    done
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin:$PATH
fi
exec python3 -m load_tests.gpu_check "$@"
