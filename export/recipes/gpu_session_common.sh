# Sourced by the lent-GPU training sessions (gpu_session.sh, gpu_session_v4.sh): what every session does
# alike, whatever it trains. The sourcing script sets STAGE and RUNS (its run names, in the order
# `progress` and the results list them) and may set FINISH_WAIT_S; it keeps its own `jobs` (what
# trains) and its packing. Settings that a CPU smoke run changes come from the environment: PYTHON,
# DATA (another zip), DEVICE, TRAIN_ARGS, FLAGSHIP_GAIN.
set -euo pipefail
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=True
OUT=${OUT:?the device tool sets OUT}
PYTHON=${PYTHON:-python3}
PACK=/tmp/eluserve-pack
PIECE=15M  # a call brings back at most 8 files of 16 MiB, 64 MiB in all
PIECES_PER_CALL=4
DATA=${DATA:-../shared/data/cifar10-jpeg/train.zip}
DEVICE=${DEVICE:-cuda}
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. "--batch-size 64 --val-per-class 10" for a CPU smoke run
FINISH_WAIT_S=${FINISH_WAIT_S:-500}
# The paper's network and GCN+ZCA preprocessing; each session says how many epochs.
FLAGSHIP=elu-paper18-v2
FLAGSHIP_RECIPE="--model elu_paper18 --normalization gcn_zca --batch-size 256 --lr 0.06 --grad-clip 2.0 --weight-decay 5e-4 --label-smoothing 0.1"
FLAGSHIP_SHIPPED=88.26  # validation accuracy of the shipped flagship (version 1)
FLAGSHIP_GAIN=${FLAGSHIP_GAIN:-1.0}

. export/recipes/namespace.sh  # the eluserve import names without an install
ELUSERVE="$PYTHON -m eluserve"
TRAIN="$ELUSERVE train --data $DATA --device $DEVICE --threads 4"

send_pieces() {  # move the next pieces into $OUT and say what is left
    local sent=0
    for piece in "$PACK"/part-*; do
        [ -e "$piece" ] || break
        [ "$sent" -lt "$PIECES_PER_CALL" ] || break
        mv "$piece" "$OUT/"
        sent=$((sent + 1))
    done
    echo "sent $sent pieces; left: $(find "$PACK" -name 'part-*' | wc -l)"
}

progress() {  # the last epoch each run has finished
    for run in "${RUNS[@]}"; do
        printf '%-24s %s\n' "$run" "$(tail -n 1 "runs/$run/metrics.jsonl" 2>/dev/null || echo starting)"
    done
}

start_jobs() {  # `start`'s end: this script's `jobs` stage detached (setsid), its first log after $1 s
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    setsid nohup bash "$0" jobs >"$PACK/jobs.log" 2>&1 </dev/null &
    sleep "$1"
    cat "$PACK/jobs.log"
}

report_torch() {  # `jobs`' first line
    $PYTHON -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
}

jobs_done() {  # `jobs`' end: wait for the runs started in the background, record that they ended
    local status=0
    wait || status=$?
    echo "$status" >"$PACK/done"
}

wait_for_runs() {  # `finish`'s start: wait up to FINISH_WAIT_S, show the log lines matching $1
    for _ in $(seq "$((FINISH_WAIT_S / 5))"); do
        [ -e "$PACK/done" ] && break
        sleep 5
    done
    progress
    grep -h "$1" "$PACK"/*.log || true
    [ -e "$PACK/done" ] || { echo "runs still going after ${FINISH_WAIT_S}s"; exit 1; }
}

collect_results() {  # the logs as text, each run's metrics, summary and config: their names in MEMBERS
    for log in "$PACK"/*.log; do
        tr '\r' '\n' <"$log" | grep -v -E "step/s|s/step|it/s|img/s|^ *$" >"${log%.log}.txt" || true
    done
    MEMBERS=()
    for run in "${RUNS[@]}"; do
        for file in metrics.jsonl summary.json config.json; do
            cp "runs/$run/$file" "$PACK/$run.$file" 2>/dev/null && MEMBERS+=("$run.$file") || true
        done
    done
    MEMBERS+=($(cd "$PACK" && ls ./*.txt))
}

flagship_beats_bar() {  # true when the finished flagship beats the shipped one by FLAGSHIP_GAIN points
    $PYTHON - "runs/$FLAGSHIP/summary.json" "$FLAGSHIP_SHIPPED" "$FLAGSHIP_GAIN" <<'PY'
import json, sys
accuracy = 100 * json.load(open(sys.argv[1]))["val_accuracy_fp32"]
bar = float(sys.argv[2]) + float(sys.argv[3])
print(f"flagship {accuracy:.2f} % against the bar {bar:.2f} %")
sys.exit(0 if accuracy >= bar else 1)
PY
}

other_stage() {  # the stages every session has alike: `rest`, and an unknown one
    case "$STAGE" in
    rest)
        send_pieces
        ;;
    *)
        echo "unknown stage $STAGE" >&2
        exit 2
        ;;
    esac
}
