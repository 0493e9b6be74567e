#!/usr/bin/env bash
# Re-train the bundled ParaThinker model and its sequential baseline from scratch, on CPU.
#
#   scripts/train_bundled.sh [WORK]          (default WORK=runs/bundled_work)
#
# 1. data: 30000 multi-path training problems + 1000 held-out (make-data, seed 0)
# 2. a tiny random-init Llama (hidden 128, 4 layers, 4 heads / 2 KV heads, ~1.0M parameters) with the
#    task tokenizer, then `parathinker prepare` (thought-embedding tables, zeros)
# 3. (a) ParaThinker SFT on train.jsonl; (b) the sequential control (--sequential) on the same
#    problems, with as many training tokens (steps x 1.6: its examples hold one path instead of all)
# 4. copy (a) into src/parathinker/assets/default/ (the package's default model), (b) into assets/sequential/
# Time on 2 shared CPU cores: see docs/bundled-model.md.
set -euo pipefail
WORK=${1:-runs/bundled_work}
STEPS=${STEPS:-360}            # ParaThinker optimizer steps, batch 32 examples
# sequential control: the same training tokens (its examples hold one path, not all of them:
# 139.93 vs 225.97 tokens per example on this data, so x1.61 steps)
SEQ_STEPS=${SEQ_STEPS:-580}
ASSET=src/parathinker/assets
mkdir -p "$WORK"

[ -f "$WORK/data/test.jsonl" ] || python -m parathinker.tasks.pathfind make-data --out "$WORK/data" \
    --train 30000 --test 1000 --seed 0
[ -f "$WORK/base/config.json" ] || python scripts/make_base.py --tokenizer "$WORK/data/tokenizer" --out "$WORK/base" \
    --hidden 128 --layers 4 --heads 4 --kv-heads 2 --seed 0
[ -f "$WORK/init/config.json" ] || parathinker prepare --model "$WORK/base" --output "$WORK/init"

TRAIN=(--lr-scheduler cosine --warmup-ratio 0.05 --grad-clip 1.0 --global-batch-size 32
       --per-device-batch-size 32 --no-gradient-checkpointing --max-length 1024 --save-steps 60
       --save-total-limit 2 --logging-steps 5 --seed 1)
train() {  # FROM OUT STEPS LR [extra flags]: resumes when interrupted
    local from=$1 out=$2 steps=$3 lr=$4; shift 4
    [ -f "$out/model.safetensors" ] && return 0
    local resume=(); if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
    /usr/bin/time -f "$out: %e s" parathinker train --model "$from" --data "$WORK/data/train.jsonl" \
        --output "$out" --max-steps "$steps" --lr "$lr" "${TRAIN[@]}" "${resume[@]}" "$@"
}
train "$WORK/init" "$WORK/pt" "$STEPS" 3e-3
train "$WORK/init" "$WORK/seq" "$SEQ_STEPS" 3e-3 --sequential

# 4. ship: the ParaThinker model as the default, the sequential control next to it
for pair in "pt:$ASSET/default" "seq:$ASSET/sequential"; do
    src=$WORK/${pair%%:*} dst=${pair#*:}
    rm -rf "$dst"; mkdir -p "$dst"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json chat_template.jinja \
             special_tokens_map.json parathinker.json; do
        if [ -f "$src/$f" ]; then cp "$src/$f" "$dst/$f"; fi
    done
    cp "$WORK/data/meta.json" "$dst/data_meta.json"
done
du -sh "$ASSET"/*
