#!/usr/bin/env bash
# One command for a lent GPU machine: install onnxruntime-gpu and the serving
# packages from carried wheels where the image lacks them, then run load_tests/gpu_check.py.
#
# Prepare here, before the device calls (the device reaches no network; a call carries 64 MiB):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d wheels onnxruntime-gpu==1.31.1 bentoml==1.4.40 <bentoml's dependencies the image lacks>
#   onnxruntime-gpu's 256 MB wheel shrinks to 204 MB as an xz tar of its contents (a --target
#   install is that tree); put it beside the other wheels, tar them together and split -b 52M into
#   .whl/p1, .whl/p2, ... (one piece per call, named *.part-aa, *.part-ab, ...).
# Then: run(command="bash load_tests/gpu_check.sh", carry=[".whl"], timeout_s=300) when it fits one
# call, or collect the pieces over several calls and point WHEELS at them (gpu_session.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=True PYTHONUNBUFFERED=1
WHEELS=${WHEELS:-.whl}
SITE=/tmp/site
if [ -d "$WHEELS" ]; then
    while read -r first; do  # join split pieces, then unpack joined tars in place
        whole=${first%.part-aa}
        cat "$whole".part-* >"$whole"
        rm -f "$whole".part-*
        case "$whole" in *.tar) tar -xf "$whole" -C "$(dirname "$whole")" && rm -f "$whole" ;; esac
    done < <(find "$WHEELS" -name '*.part-aa')
    mkdir -p "$SITE"
    find "$WHEELS" -name '*.whl' -print0 | xargs -0 -r python3 -m pip install -q --no-index --no-deps \
        --no-compile --no-cache-dir --upgrade --target "$SITE"
    find "$WHEELS" -name '*.tar.xz' -exec tar -xJf {} -C "$SITE" \;
    export PYTHONPATH=$SITE:.${PYTHONPATH:+:$PYTHONPATH}
    export PATH=$SITE/bin:$PATH
fi
. export/recipes/namespace.sh  # the eluserve import names without an install
exec python3 -m load_tests.gpu_check "$@"
