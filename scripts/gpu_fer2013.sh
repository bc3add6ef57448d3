#!/usr/bin/env bash
# The FER2013 default model (cpu profile: 64 px, FMG ngf 16, ResNet-18 CN) trained in ONE long schedule on a GPU.
# On the 2-core CPU a schedule longer than ~20 stage-2 epochs does not fit a session (8 min an epoch, and runs/ does
# not survive a session), so the releases so far are rounds of 3-10 epochs, each restarting at lr 1e-3 from the
# last best. Here: stage 1 (FMG alone, as release 1), then stage 2 from it with --augment strong in one schedule as
# long as the budget allows: a probe of a few steps measures img/s first, and the epoch count is sized from it.
# Selection on fer2013/val only (--select val). No pretraining of any kind.
#
# Prepare here (data travels in an ignored folder of the checkout; with the tracked tree, ~62 MiB of the 64 a call
# carries):
#   echo /.gpu-fer/ >> .git/info/exclude; mkdir -p .gpu-fer/masks
#   tar czf .gpu-fer/fer2013.tgz -C ../shared/data fer2013/train fer2013/val
#   fmpn masks generate --pairs ../shared/data/ckplus-neutral-peak --splits ../shared/data/fmpn-original/datasets/CKPlus \
#       --out runs/masks/ckplus --folds 0 && cp runs/masks/ckplus/0/*.png .gpu-fer/masks/
# Run on the device machine (its python3 has torch, torchvision, cv2, safetensors, tqdm, tensorboard):
#   run(command="DATA=.gpu-fer scripts/gpu_fer2013.sh", carry=[".gpu-fer"], timeout_s=590)
# Back in OUT: the logs, history.json, and the float16 release file in two parts (a device call returns files of
# 16 MiB at most); here: cat <files_at>/release.part-* > runs/gpu-fer2013.safetensors, then `fmpn evaluate` it.
# Smoke test on the CPU (one step per epoch, the probe's too; it then sizes the schedule at its floor, 3 epochs):
#   DATA=../shared/data MASKS=runs/masks/ckplus/0 OUT=/tmp/gf RUNS=/tmp/gfr EXTRA="--device cpu --max-steps 1" STAGE1="1 0" \
#       scripts/gpu_fer2013.sh
set -euo pipefail

DATA=${DATA:-.gpu-fer}
OUT=${OUT:-runs/gpu-fer2013}
RUNS=${RUNS:-/tmp/gpu-fer2013}
BUDGET=${BUDGET:-420}                  # seconds for stage 2; unpacking, stage 1, the probe and the release take ~1.5 min more
STAGE1=${STAGE1:-"2 1"}                # FMG alone on a 7,000-image class-balanced subset: epochs full lr, decay
EPOCHS=${EPOCHS:-}                     # stage-2 epochs; empty: sized from the probe to fit BUDGET
EXTRA=${EXTRA:-"--amp --channels-last --workers 12"}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# shellcheck disable=SC2206
extra=($EXTRA)
fmpn() { "$PY" -m cli.main "$@"; }

mkdir -p "$OUT" "$RUNS"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ -f "$DATA/fer2013.tgz" ]; then
  tar xzf "$DATA/fer2013.tgz" -C "$RUNS"
  F="$RUNS/fer2013"
else
  F="$DATA/fer2013"                    # unpacked (the CPU smoke test: ../shared/data)
fi
M=${MASKS:-$DATA/masks}
train2=(train stage2 --profile cpu --data "$F/train" --val "$F/val" --masks "$M" --augment strong --no-progress)
date -u +"start %FT%TZ"

read -r s1n s1d <<<"$STAGE1"
fmpn train stage1 --profile cpu --data "$F/train" --masks "$M" --out "$RUNS/stage1" --niter "$s1n" \
  --niter-decay "$s1d" --limit 7000 --no-progress "${extra[@]}" >"$OUT/stage1.log" 2>&1
date -u +"stage 1 done %FT%TZ"

if [ -z "$EPOCHS" ]; then
  # 200 steps of batch 32 measure stage 2's img/s; an epoch is 28,709 images plus validation (3,589, ~10 % more).
  fmpn "${train2[@]}" --init "$RUNS/stage1/model.safetensors" --out "$RUNS/probe" --niter 1 --niter-decay 0 \
    --max-steps 200 "${extra[@]}" >"$OUT/probe.log" 2>&1
  rate=$(grep -o '"img_per_s": [0-9.]*' "$OUT/probe.log" | tail -1 | awk '{print $2}')
  EPOCHS=$(awk -v r="$rate" -v b="$BUDGET" 'BEGIN { e = int(0.85 * b * r / (28709 * 1.1)); print (e < 3 ? 3 : e) }')
  echo "probe: $rate img/s -> $EPOCHS epochs in $BUDGET s"
fi
n1=$((EPOCHS / 3)); n2=$((EPOCHS - n1))   # a third at full lr, then linear decay (the last epoch at lr 0)
timeout "$BUDGET" "$PY" -m cli.main "${train2[@]}" --init "$RUNS/stage1/model.safetensors" \
  --init-parts generator --out "$RUNS/stage2" --niter "$n1" --niter-decay "$n2" --select val "${extra[@]}" \
  >"$OUT/stage2.log" 2>&1 || echo "stage 2 stopped by the budget: the best epoch so far is kept"
date -u +"stage 2 done %FT%TZ"

best="$RUNS/stage2/model.safetensors"
[ -f "$best" ] || best="$RUNS/stage2/best.safetensors"
grep -o '"epoch": [0-9]*[^}]*' "$OUT/stage2.log" || true
[ -f "$RUNS/stage2/history.json" ] && cp "$RUNS/stage2/history.json" "$OUT/"
fmpn release "$best" --out "$RUNS/release.safetensors" --flip-average
fmpn evaluate "$RUNS/release.safetensors" --data "$F/val" --device "$(
  "$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")" | tee "$OUT/evaluate.txt"
split -b 15M -d "$RUNS/release.safetensors" "$OUT/release.part-"
sha256sum "$RUNS/release.safetensors" | tee "$OUT/release.sha256"
