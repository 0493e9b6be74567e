#!/usr/bin/env bash
# Evaluate the bundled ParaThinker model on held-out pathfind problems, then build the tables and
# the plot (scripts/bundled_report.py). Resumable: rerun to continue. Two eval jobs run at a time,
# one CPU thread each.
#
#   scripts/eval_bundled.sh [PT_MODEL] [TEST_JSONL] [OUT] [SEQ_MODEL]
#   env: N (problems, default 500), SAMPLES (seeds per problem, default 3), BATCH (default 100)
set -euo pipefail
PT=${1:-src/parathinker/assets/default}
TEST=${2:-runs/bundled_work/data/test.jsonl}
OUT=${3:-runs/bundled_eval}
SEQ=${4:-src/parathinker/assets/sequential}
N=${N:-500}
SAMPLES=${SAMPLES:-3}
BATCH=${BATCH:-100}
export OMP_NUM_THREADS=1
# the checkpoint's prompting defaults (parathinker.json): temperature 1, top_p 1, path budget 128, summary 48
COMMON=(--benchmark "$TEST" --limit "$N" --samples "$SAMPLES" --batch-size "$BATCH" --temperature 1.0 --top-p 1.0
        --summary-max-tokens 48 --no-progress)
ev() { local out=$1; shift; echo "== $out: $*"; /usr/bin/time -f "   $out: %e s" parathinker eval "${COMMON[@]}" --out "$OUT/$out" "$@"; }

(   # ParaThinker@P (P=1: one path, then its summary = the sequential path at the same budget), re-prefill
    ev pt --model "$PT" --method parathinker --paths 1,2,4,8 --max-path-tokens 128
    ev pt_reprefill --model "$PT" --method reprefill --paths 8 --max-path-tokens 128
    # one path with 8x the budget
    ev pt_long --model "$PT" --method parathinker --paths 1 --max-path-tokens 1024
    # tunnel vision needs a model that writes plain sequential paths: only with SEQ_MODEL
    if [ -n "$SEQ" ]; then
        ev seq --model "$SEQ" --method sequential,sequential-long,majority --paths 1,2,4,8 --max-path-tokens 128 \
            --sequential-max-tokens 1024
        for k in 2 4; do  # one sequential path with k x the budget (8 x is sequential-long above)
            ev "seq_${k}b" --model "$SEQ" --method sequential-long --paths 1 --max-path-tokens 128 \
                --sequential-max-tokens $((128 * k))
        done
        ev tunnel --model "$SEQ" --tunnel-vision --tunnel-prefixes 4,8,16,24,32 --max-path-tokens 128
    fi
) &
(   # termination last (all paths finish: also gives majority@P over the model's own paths) and half
    ev pt_last --model "$PT" --method parathinker --paths 2,4,8 --termination last --max-path-tokens 128
    ev pt_half --model "$PT" --method parathinker --paths 4,8 --termination half --max-path-tokens 128
    # ablations at inference: no thought embeddings, flattened positions
    ev pt_no_te --model "$PT" --method parathinker --paths 8 --no-thought-embeddings --max-path-tokens 128
    ev pt_flat --model "$PT" --method parathinker --paths 8 --flat-positions --max-path-tokens 128
) &
wait
python scripts/bundled_report.py "$OUT"
