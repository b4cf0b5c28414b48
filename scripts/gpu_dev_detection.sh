#!/usr/bin/env bash
# The detection dev benchmark (issue 27) on one GPU machine: one process per set side by side, each running
# WORKERS seeds of an arm at once (library: trainer=gpu; the plain loop: --device cuda). Each set's runs
# are cached in $OUT/<set>.json and its log in $OUT/<set>.log (they come back); merge the caches here with
# `python scripts/merge_run_caches.py /work/data/bench/dev/acc.json OUT/*.json`, then render with
# `--param device=cuda --dev-cached-only`.
#
# The sets and the weights travel in .devdata/ (ignored; the working tree travels up to 64 MiB a call:
# det_text + det_emoji + the lite1 weights fit, det_clipart goes in a second call):
#
#   echo /.devdata/ >> .git/info/exclude; mkdir -p .devdata
#   cp -r /work/data/dev/det_text /work/data/dev/det_emoji /work/shared/weights/*.safetensors .devdata/
#   device run (carry .devdata and .whl):  SETS="det_text det_emoji" bash scripts/gpu_dev_detection.sh
#
# The sets are linked at the paths they have on the machine that made the cache (DEV_ROOT, WEIGHTS), so
# the runs' cache keys (composed configs, data paths included) match that cache's, plus the GPU overrides.
set -u
OUT=${OUT:-/tmp/gpu_dev}
DEV_ROOT=${DEV_ROOT:-/work/data/dev}
WEIGHTS=${WEIGHTS:-/work/shared/weights/tf_efficientnet_lite1_timm.safetensors}
mkdir -p "$OUT" "$DEV_ROOT" "$(dirname "$WEIGHTS")"
for d in .devdata/*/; do ln -sfn "$PWD/${d%/}" "$DEV_ROOT/$(basename "$d")"; done
[ -e "$WEIGHTS" ] || ln -s "$PWD/.devdata/$(basename "$WEIGHTS")" "$WEIGHTS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
for set in ${SETS:-det_text det_emoji}; do
    timeout "${LIMIT:-540}" python3 -m benchmarks.run --suite accuracy --only dev_detection \
        --dev-root "$DEV_ROOT" --weights "$WEIGHTS" --cache "$OUT/$set.json" \
        --param device=cuda --param workers="${WORKERS:-3}" --param "sets=[\"$set\"]" --param 'held_out=[]' \
        --dev-arms "${ARMS:-defaults,plain,fcos,faster_rcnn}" \
        --out-dir "/tmp/res_$set" --markdown "/tmp/$set.md" >"$OUT/$set.log" 2>&1 &
done
wait
tail -n 20 "$OUT"/*.log
