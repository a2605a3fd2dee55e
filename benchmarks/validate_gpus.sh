#!/usr/bin/env bash
# Validation on a machine with two NVIDIA GPUs (issues 2, 3, 5): run from the repo root.
#   OUT=/some/dir bash benchmarks/validate_gpus.sh
# Needs the wheels of ../shared/gpu/wheelhouse.sh in .wheelhouse/ where no registry is reachable.
set -uo pipefail
OUT=${OUT:-/tmp/specdeck-validation}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_ORDER=PCI_BUS_ID PYTHONPATH=$PWD
export SPECDECK_DATA_DIR=$OUT/data
log=$OUT/validation.log
if [ -d .wheelhouse ]; then python3 -m pip install -q --no-index --no-deps .wheelhouse/*.whl 2>&1 | tail -2; fi
section() { printf '\n===== %s\n' "$*" | tee -a "$log"; }
run() { section "$*"; "$@" 2>&1 | tee -a "$log"; echo "exit status: ${PIPESTATUS[0]}" | tee -a "$log"; }

run nvidia-smi --query-gpu=index,name,memory.total,pci.bus_id,uuid,driver_version --format=csv
run python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
run python3 -m pytest -q -rs -m gpu tests/
run python3 -m pytest -q -x tests/engine/test_kvcache.py tests/engine/test_speculative.py
python3 -m app.cli devices --json > "$OUT/devices.json"; run python3 -m app.cli devices
run python3 benchmarks/nvml_poll.py --n 2000
# issue 3: in-process, draft on another GPU of the same backend; target layer split
run python3 -m app.cli run --target cuda:0 --draft cuda:1 --mode inprocess --baseline --max-new-tokens 128 --prompt "def fibonacci(n):" --json
run python3 -m app.cli run --target cuda:0,cuda:1 --draft cuda:1 --mode inprocess --baseline --max-new-tokens 128 --prompt "def fibonacci(n):" --json
run python3 -m app.cli run --target cuda:0 --draft cuda:1 --mode inprocess --temperature 0.8 --k auto --max-new-tokens 128 --prompt "import os" --json
# issue 5: split mode through daemons; the same tokens as in-process
run python3 -m app.cli run --target cuda:0 --draft cuda:1 --mode split --baseline --max-new-tokens 128 --prompt "def fibonacci(n):" --json
run python3 -m app.cli run --target cuda:0,cuda:1 --draft cpu --baseline --max-new-tokens 128 --prompt "def fibonacci(n):" --json
run python3 benchmarks/nvml_roles.py --target cuda:0 --draft cuda:1
run python3 benchmarks/nvml_roles.py --target cuda:0,cuda:1 --draft cpu
run python3 benchmarks/split_overhead.py --target-model engine/demo_models/target --draft-model engine/demo_models/draft --device cuda:0 --n 3 --tokens 256
run python3 -m app.cli runs
