# Sourced by the device scripts (export/recipes/gpu_session_common.sh, load_tests/gpu_check.sh).
# The repository installs `eluserve.service`, `eluserve.export` and `eluserve.models` from service/,
# export/ and models/ (setuptools package-dir); the device has no install, so a folder of links gives
# the same import names without pip. Prepends it to PYTHONPATH.
NS=/tmp/eluserve-ns
rm -rf "$NS" && mkdir -p "$NS/eluserve"
cp -r eluserve/. "$NS/eluserve/"
for pair in export:export service:service models:models; do
    ln -s "$PWD/${pair%%:*}" "$NS/eluserve/${pair##*:}"
done
export PYTHONPATH="$NS${PYTHONPATH:+:$PYTHONPATH}"
