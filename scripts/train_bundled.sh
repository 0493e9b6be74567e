#!/usr/bin/env bash
# Re-train the bundled ParaThinker model from scratch, on CPU, exactly as it was trained
# (docs/bundled-model.md), and copy it into src/parathinker/assets/default/.
#
#   scripts/train_bundled.sh [WORK]          (default WORK=runs/bundled_work; resumable)
#   env: STAGE4_STEPS (steps of the last, constant-lr stage; default: the shipped checkpoint's)
#
# 1. data: 30000 multi-path training problems + 1000 held-out (make-data, seed 0)
# 2. a tiny random-init Llama (hidden 128, 4 layers, 4 heads / 2 KV heads, ~1.0M parameters) with
#    the task tokenizer, then `parathinker prepare` (thought-embedding tables, zeros)
# 3. ParaThinker SFT in four stages (each restarts the schedule from the previous stage's model,
#    with another data order): the stages are what was run on a shared 2-core CPU while watching
#    the loss; stage 4 uses a constant lr, so its result does not depend on when it is stopped
#    other than through STAGE4_STEPS.
# 4. copy the model into src/parathinker/assets/default/
# Optional: SEQ=1 also trains the sequential control (--sequential) with the same number of
# training tokens (its examples hold one path: 139.93 vs 225.97 tokens, x1.61 steps per stage).
set -euo pipefail
WORK=${1:-runs/bundled_work}
STAGE4_STEPS=${STAGE4_STEPS:-500}
ASSET=src/parathinker/assets/default
mkdir -p "$WORK"

[ -f "$WORK/data/test.jsonl" ] || python -m parathinker.tasks.pathfind make-data --out "$WORK/data" \
    --train 30000 --test 1000 --seed 0
[ -f "$WORK/base/config.json" ] || python scripts/make_base.py --tokenizer "$WORK/data/tokenizer" --out "$WORK/base" \
    --hidden 128 --layers 4 --heads 4 --kv-heads 2 --seed 0
[ -f "$WORK/init/config.json" ] || parathinker prepare --model "$WORK/base" --output "$WORK/init"

TRAIN=(--grad-clip 1.0 --global-batch-size 32 --per-device-batch-size 32 --no-gradient-checkpointing
       --max-length 1024 --save-steps 50 --save-total-limit 2 --logging-steps 5)
train() {  # FROM OUT STEPS [flags]: skips a finished stage, resumes an interrupted one
    local from=$1 out=$2 steps=$3; shift 3
    [ -f "$out/model.safetensors" ] && return 0
    local resume=(); if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
    /usr/bin/time -f "$out: %e s" parathinker train --model "$from" --data "$WORK/data/train.jsonl" \
        --output "$out" --max-steps "$steps" "${TRAIN[@]}" "${resume[@]}" "$@"
}
stages() {  # PREFIX STEP_FACTOR [flags]
    local p=$1 f=$2; shift 2
    steps() { python -c "print(round($1 * $f))"; }
    train "$WORK/init"  "$WORK/${p}1" "$(steps 360)" --lr 3e-3 --lr-scheduler cosine --warmup-ratio 0.05 --seed 1 "$@"
    train "$WORK/${p}1" "$WORK/${p}2" "$(steps 200)" --lr 2e-3 --lr-scheduler cosine --warmup-ratio 0.05 --seed 2 "$@"
    train "$WORK/${p}2" "$WORK/${p}3" "$(steps 500)" --lr 3e-3 --lr-scheduler cosine --warmup-ratio 0.02 --seed 3 "$@"
    train "$WORK/${p}3" "$WORK/${p}4" "$(steps "$STAGE4_STEPS")" --lr 2e-3 --lr-scheduler constant --warmup-ratio 0 --seed 4 "$@"
}
stages pt 1
if [ "${SEQ:-0}" = 1 ]; then stages seq 1.61 --sequential; fi

rm -rf "$ASSET"; mkdir -p "$ASSET"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json chat_template.jinja \
         special_tokens_map.json parathinker.json; do
    if [ -f "$WORK/pt4/$f" ]; then cp "$WORK/pt4/$f" "$ASSET/$f"; fi
done
cp "$WORK/data/meta.json" "$ASSET/data_meta.json"
du -sh "$ASSET"
