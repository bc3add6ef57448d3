#!/usr/bin/env bash
# The CK+ 10-fold table in the paper profile (299 px, FMG ngf 64, Inception-v3 CN) on one GPU, with a
# schedule short enough for one device call: FMPN (stage 1 + stage 2 per fold) and the CN alone (the
# ablation), each as a few processes over groups of folds, all side by side on the GPU. No ImageNet weights
# (nothing can be downloaded): everything starts from scratch, so this is not the paper's setting.
#
# Prepare here (data travels in an ignored folder of the checkout, ~5 MB):
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/fmpn-original/datasets/CKPlus
#   cp -r ../shared/data/ckplus48 .gpu/; cp -r ../shared/data/fmpn-original/datasets/CKPlus/imgs_res .gpu/fmpn-original/datasets/CKPlus/
# Run on the device machine (its python3 has torch, torchvision, cv2, safetensors, tqdm, tensorboard):
#   run(command="DATA=.gpu RUNS=/tmp/g scripts/gpu_ckplus.sh", carry=[".gpu"], timeout_s=590)
# Checkpoints stay in RUNS (a paper-profile one is far over what a device call brings back); the logs, GPU
# utilisation and results.tgz (each fold's result.json and history.json) land in OUT ($OUT there).
# Every finished fold leaves result.json, so a run cut short by BUDGET still prints its table.
# Session 11's run (3 processes: FMPN 0-4 | 5-9, CN alone 0-9) kept the GPU 48 % busy and finished 8 and 6 of the
# 10 folds in 510 s, hence the defaults now: six processes (four FMPN groups, two CN-alone groups) of 2 workers each.
# Smoke test on the CPU: DATA=../shared/data OUT=/tmp/g FMPN_FOLDS="0 1" ABLATION_FOLDS=0 EXTRA="--max-steps 1 --device cpu" S1="1 0" S2="1 0" scripts/gpu_ckplus.sh
set -uo pipefail

DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu-ckplus}
RUNS=${RUNS:-$OUT}
BUDGET=${BUDGET:-510}                  # seconds for all runs together
S1=${S1:-"2 2"}                        # stage 1 (FMG alone): epochs at full lr, epochs of decay
S2=${S2:-"4 4"}                        # stage 2 (joint) and the ablation
FMPN_FOLDS=${FMPN_FOLDS:-"0-2 3-4 5-7 8-9"}   # one process per group
ABLATION_FOLDS=${ABLATION_FOLDS:-"0-4 5-9"}
MASKS=${MASKS:-"$DATA/fmpn-original/datasets/CKPlus/imgs_res/{fold}"}
EXTRA=${EXTRA:-"--amp --channels-last --workers 2"}   # e.g. + --lr 1e-3 (the paper's 1e-4 expects ImageNet weights)
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

read -r s1n s1d <<<"$S1"
read -r s2n s2d <<<"$S2"
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvidia-smi dmon -s um -d 15 >"$OUT/dmon.log" 2>&1 &
  dmon=$!
fi
common=(cv --profile paper --layout ckplus48 --data "$DATA/ckplus48" --niter "$s2n" --niter-decay "$s2d" --no-progress)
# shellcheck disable=SC2206
extra=($EXTRA)

date -u +"start %FT%TZ"
pids=()
for folds in $FMPN_FOLDS; do
  timeout "$BUDGET" "$PY" -m cli.main "${common[@]}" "${extra[@]}" --masks "$MASKS" --out "$RUNS/fmpn" \
    --stage1-niter "$s1n" --stage1-niter-decay "$s1d" --folds "$folds" >"$RUNS/fmpn-$folds.log" 2>&1 &
  pids+=($!)
done
for folds in $ABLATION_FOLDS; do
  timeout "$BUDGET" "$PY" -m cli.main "${common[@]}" "${extra[@]}" --ablation --out "$RUNS/ablation" --folds "$folds" \
    >"$RUNS/ablation-$folds.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
[ -n "${dmon:-}" ] && kill "$dmon"
date -u +"end %FT%TZ"

# The per-fold tables (training/cv.py's) of whatever folds finished, all groups of a model in one table.
"$PY" - "$RUNS" <<'EOF'
import json
import sys
from pathlib import Path

from training.cv import format_table

for name in ("fmpn", "ablation"):
    runs = sorted(Path(sys.argv[1], name).glob("fold_*/result.json"), key=lambda p: int(p.parent.name[5:]))
    results = [json.loads(p.read_text()) for p in runs]
    minutes = sum(r["wall_s"] for r in results) / 60
    print(f"\n{name}: {len(results)} of 10 folds, {minutes:.1f} min of fold time")
    print(format_table(results) if results else "no fold finished")
EOF
tail -n 3 "$RUNS"/*.log
if [ "$RUNS" != "$OUT" ]; then
  cp "$RUNS"/*.log "$OUT/"
  (cd "$RUNS" && tar czf "$OUT/results.tgz" ./*/fold_*/result.json ./*/fold_*/*/history.json)
fi
