#!/usr/bin/env bash
# Re-train the bundled ParaThinker model and its sequential control from scratch
# (docs/bundled-model.md), then copy them into src/parathinker/assets/{default,sequential}/.
#
#   scripts/train_bundled.sh [WORK]          (default WORK=runs/bundled_work; resumable)
#
# 1. data: TRAIN_N multi-path training problems + 1000 held-out (make-data, seed 0; the held-out
#    set depends only on the seed and its size, not on TRAIN_N)
# 2. a random-init Llama with the task tokenizer (make_base.py), then `parathinker prepare`
# 3. `parathinker train`, one cosine schedule: the ParaThinker model (all paths of an example,
#    thought embeddings) and, with the same data, hyper-parameters and number of training tokens,
#    the sequential control (`--sequential`: prompt + one drawn path + summary; its examples are
#    shorter, so its schedule is SEQ_FACTOR x the steps). Both run at once when PARALLEL=1 (one GPU
#    serves both: the models are tiny and each run is bound by its own Python). STOP_PT/STOP_SEQ
#    end a run early inside its full cosine schedule (--stop-step): the shipped models are the
#    step-4500 (of 5000) and step-5500 (of 8050) points, where the H200 session's time limit
#    stopped them (docs/bundled-model.md).
# 4. copy both into the package (COPY=0 to skip)
#
# env (defaults = the shipped models): HIDDEN LAYERS HEADS KV_HEADS MLP, STEPS, SEQ_FACTOR, LR,
# BATCH, TRAIN_N, SEED, STOP_PT, STOP_SEQ (0: whole schedule), PARALLEL, MODELS ("pt seq"), TIMEOUT (seconds per run; 0 = none: a run
# stopped by it keeps its last checkpoint, and rerunning resumes it), EXTRA (more train flags).
set -euo pipefail
WORK=${1:-runs/bundled_work}
HIDDEN=${HIDDEN:-256}; LAYERS=${LAYERS:-4}; HEADS=${HEADS:-8}; KV_HEADS=${KV_HEADS:-2}; MLP=${MLP:-768}
STEPS=${STEPS:-5000}; SEQ_FACTOR=${SEQ_FACTOR:-1.61}; LR=${LR:-1e-3}; BATCH=${BATCH:-64}
TRAIN_N=${TRAIN_N:-100000}; SEED=${SEED:-1}; PARALLEL=${PARALLEL:-1}; MODELS=${MODELS:-pt seq}
STOP_PT=${STOP_PT:-4500}; STOP_SEQ=${STOP_SEQ:-5500}
TIMEOUT=${TIMEOUT:-0}; COPY=${COPY:-1}; EXTRA=${EXTRA:-}
PY=${PYTHON:-python}
mkdir -p "$WORK"

[ -f "$WORK/data/test.jsonl" ] || $PY -m parathinker.tasks.pathfind make-data --out "$WORK/data" \
    --train "$TRAIN_N" --test 1000 --seed 0
[ -f "$WORK/base/config.json" ] || $PY scripts/make_base.py --tokenizer "$WORK/data/tokenizer" --out "$WORK/base" \
    --hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS" --kv-heads "$KV_HEADS" --intermediate "$MLP" --seed 0
[ -f "$WORK/init/config.json" ] || $PY -m parathinker prepare --model "$WORK/base" --output "$WORK/init"

# shellcheck disable=SC2206
TRAIN=(--lr "$LR" --lr-scheduler cosine --warmup-ratio 0.03 --grad-clip 1.0 --weight-decay 0.05
       --global-batch-size "$BATCH" --per-device-batch-size "$BATCH" --no-gradient-checkpointing
       --attn-impl dense --max-length 1024 --save-steps 500 --save-total-limit 1 --logging-steps 25
       --seed "$SEED" $EXTRA)
train() {  # NAME STEPS [flags]: skips a finished run, resumes an interrupted one
    local name=$1 steps=$2; shift 2
    local out="$WORK/$name"
    [ -f "$out/model.safetensors" ] && return 0
    local resume=(); if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
    local t=(); if [ "$TIMEOUT" != 0 ]; then t=(timeout "$TIMEOUT"); fi
    local start=$SECONDS
    "${t[@]}" $PY -m parathinker train --model "$WORK/init" --data "$WORK/data/train.jsonl" --output "$out" \
        --max-steps "$steps" "${TRAIN[@]}" "${resume[@]}" "$@" > "$WORK/$name.log" 2>&1 || echo "$name: exit $?"
    echo "$name: $* (schedule $steps steps), $((SECONDS - start)) s" | tee -a "$WORK/times.txt"
}
SEQ_STEPS=$($PY -c "print(round($STEPS * $SEQ_FACTOR))")
for m in $MODELS; do
    case $m in
        pt) job=(train pt "$STEPS" --stop-step "$STOP_PT") ;;
        seq) job=(train seq "$SEQ_STEPS" --stop-step "$STOP_SEQ" --sequential) ;;
        *) echo "unknown model $m (pt, seq)"; exit 2 ;;
    esac
    if [ "$PARALLEL" = 1 ]; then "${job[@]}" & else "${job[@]}"; fi
done
wait

[ "$COPY" = 1 ] || exit 0
copy() {  # RUN ASSET
    local src="$WORK/$1" dst=$2
    [ -f "$src/model.safetensors" ] || { echo "$src has no final model: not copied"; return 0; }
    rm -rf "$dst"; mkdir -p "$dst"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json chat_template.jinja \
             special_tokens_map.json parathinker.json; do
        if [ -f "$src/$f" ]; then cp "$src/$f" "$dst/$f"; fi
    done
    cp "$WORK/data/meta.json" "$dst/data_meta.json"
    du -sh "$dst"
}
copy pt src/parathinker/assets/default
copy seq src/parathinker/assets/sequential
