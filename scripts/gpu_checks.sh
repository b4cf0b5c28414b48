#!/usr/bin/env bash
# The GPU paths in one prepared pass, for a CUDA machine (CI has none; these paths skip there).
#
#   OUT=/tmp/gpu bash scripts/gpu_checks.sh
#
# 1. the GPU tests (tests/test_gpu_precision.py; the 2-GPU DDP/SyncBN test skips on one GPU),
# 2. the main job on the GPU for each task (precision=auto -> bf16-mixed where the GPU has bf16),
# 3. `python -m benchmarks.run --suite gpu --quick` (its JSON lands in $OUT/bench/),
# 0. first, scripts/predict_path_probe.py: the predict path stage by stage against the model alone (what
#    starves `gpu_inference`; $OUT/predict_probe.json). PROBE_ONLY=1 runs it alone.
# TASKS="classification" and BENCH_ONLY=gpu_inference narrow steps 2 and 3 (a re-check).
# Each step has its own time limit, so a hang in one still leaves the others' logs in $OUT.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT/bench"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() {  # step NAME SECONDS CMD...: run CMD under a limit, log to $OUT/NAME.log, print its verdict
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    tail -n 15 "$OUT/$name.log"
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch, torchvision, timm, lightning, torchmetrics; print(sys.version.split()[0],
    'torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported(),
    'torchvision', torchvision.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__,
    'torchmetrics', torchmetrics.__version__)"
} | tee "$OUT/machine.txt"

step predict_probe 150 python3 scripts/predict_path_probe.py --device cuda --profile --out "$OUT/predict_probe.json"
[ -n "${PROBE_ONLY:-}" ] && exit 0
step gpu_tests 240 python3 -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/test_gpu_precision.py tests/test_syncbn.py
for task in ${TASKS:-classification detection segmentation}; do
    step "run_$task" 150 python3 run.py task="$task" model.pretrained=false trainer=gpu trainer.max_epochs=2 \
        hydra.run.dir="$OUT/runs/$task"
    cp "$OUT/runs/$task/summary.json" "$OUT/summary_$task.json" 2>/dev/null
done
cp benchmarks/results/gpu-quick.json "$OUT/bench/" 2>/dev/null  # BENCH_ONLY re-runs merge into it
step bench_gpu 300 python3 -m benchmarks.run --suite gpu --quick --out-dir "$OUT/bench" \
    --markdown "$OUT/bench/BENCHMARKS.md" ${BENCH_ONLY:+--only "$BENCH_ONLY"}
rm -rf "$OUT/runs"  # checkpoints: too big to come back
