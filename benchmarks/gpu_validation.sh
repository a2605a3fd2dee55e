#!/usr/bin/env bash
# The validation matrix on a host with two CUDA GPUs, in one command (< 9 minutes wall):
#
#   bash benchmarks/gpu_validation.sh            # on the GPU host; results under $OUT
#   PYTHON=.venv/bin/python OUT=/tmp/v bash benchmarks/gpu_validation.sh --cpu
#                                                # the same steps on the CPU, with simulated
#                                                # GPUs, to check the script before a GPU run
#
# Steps: install the wheels in .wheelhouse (offline), then
#   1. the bundled demo pair, 10 HumanEval prompts, every row of benchmarks/placements/two-gpu.toml
#      (in-process cuda:0; split draft cuda:1; split draft cpu; target over cuda:0+1 with the
#      draft on cuda:1; split with the draft on a simulated HIP device), with the HF peer;
#   2. a randomly initialised Qwen3-8B-shaped model used as its own draft (AL should be k+1)
#      on rows 1, 2 and 4 (two-gpu-large.toml), 2 prompts;
#   3. benchmarks/decode_step.py on that model.
# Under $OUT: demo-bench.{json,md,png}, q8-bench.{json,md,png}, decode_step.json and
# validation.log (everything printed), at most 8 files. A step that would not finish in the
# time left is skipped and says so in the log.

set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/specdeck-validation}
BUDGET_S=${BUDGET_S:-510}  # 8.5 minutes, under the 9 the lead allows
START=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUT"
LOG=$OUT/validation.log
: >"$LOG"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export SPECDECK_DATA_DIR=$WORK/data SPECDECK_CONFIG=$WORK/config.toml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_DEVICE_ORDER=PCI_BUS_ID

say() { echo "== $* ($(($(date +%s) - START)) s)" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME NEEDED_S LIMIT_S COMMAND...: run it with a time limit unless too little time is left
step() {
    local name=$1 need=$2 limit=$3
    shift 3
    if [ "$(left)" -lt "$need" ]; then
        say "SKIPPED $name: $(left) s left, it needs about $need s"
        return 1
    fi
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    say "$name (limit $limit s): $*"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "$name: exit $rc"
    return $rc
}

keep() {  # copy a bench's files to $OUT under a prefix
    for f in bench.json bench.md bench.png; do
        [ -f "$WORK/$1/$f" ] && cp "$WORK/$1/$f" "$OUT/$1-$f"
    done
    [ -f "$WORK/$1/bench.md" ] && cat "$WORK/$1/bench.md" >>"$LOG"
}

if [ "$CPU" = 1 ]; then
    # simulated CUDA devices stand in for the GPUs; their work runs on the CPU
    GLOBAL=(--simulate cuda:2,hip:1)
    sed 's/"cuda:/"sim-cuda:/g' benchmarks/placements/two-gpu.toml >"$WORK/two-gpu.toml"
    sed 's/"cuda:/"sim-cuda:/g' benchmarks/placements/two-gpu-large.toml >"$WORK/large.toml"
    DEMO=(--n 2 --max-new-tokens 16 --k 4)
    LARGE_MODEL=$ROOT/engine/demo_models/target  # a model of its own as its own draft
    LARGE=(--n 2 --max-new-tokens 21 --k 4)  # 20 tokens after the first: 4 full steps
else
    GLOBAL=(--simulate hip:1)
    cp benchmarks/placements/two-gpu.toml benchmarks/placements/two-gpu-large.toml "$WORK/"
    mv "$WORK/two-gpu-large.toml" "$WORK/large.toml"
    DEMO=(--n 10 --max-new-tokens 128 --k 6)
    LARGE_MODEL=/tmp/q8
    LARGE=(--n 2 --max-new-tokens 41 --k 4)  # 40 tokens after the first: 8 full steps
    say "installing .wheelhouse"
    "$PY" -m pip install -q --no-index --no-deps .wheelhouse/*.whl >>"$LOG" 2>&1 ||
        "$PY" -m pip install -q --no-index --no-deps --break-system-packages \
            .wheelhouse/*.whl >>"$LOG" 2>&1 ||
        say "pip could not install .wheelhouse; going on with what is installed"
fi

{
    say "host"
    "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch',
torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(),
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    "$PY" -m app.cli "${GLOBAL[@]}" devices
} >>"$LOG" 2>&1

step "demo matrix" 60 270 "$PY" -m app.cli "${GLOBAL[@]}" bench \
    --placements "$WORK/two-gpu.toml" "${DEMO[@]}" --peers hf --out "$WORK/demo"
keep demo

if [ "$CPU" = 0 ]; then
    step "make random qwen3-8b" 150 150 \
        "$PY" benchmarks/make_random_model.py --shape qwen3-8b --out "$LARGE_MODEL"
fi
if [ -f "$LARGE_MODEL/config.json" ]; then
    step "large model as its own draft" 90 240 "$PY" -m app.cli "${GLOBAL[@]}" bench \
        --placements "$WORK/large.toml" --target-model "$LARGE_MODEL" \
        --draft-model "$LARGE_MODEL" "${LARGE[@]}" --peers hf --out "$WORK/q8"
    keep q8
    if [ "$CPU" = 0 ]; then
        step "decode step" 45 90 sh -c '"$0" benchmarks/decode_step.py --model "$1" \
            --device cuda:0 --json >"$2"' "$PY" "$LARGE_MODEL" "$OUT/decode_step.json"
        cat "$OUT/decode_step.json" >>"$LOG"
    fi
fi

say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
