#!/usr/bin/env bash
# Evaluate the bundled ParaThinker model and the sequential baseline on held-out pathfind problems,
# then build the table + plot (scripts/bundled_report.py). Resumable: rerun to continue.
#
#   scripts/eval_bundled.sh [PT_MODEL] [SEQ_MODEL] [TEST_JSONL] [OUT]
#   env: N (problems, default 500), SAMPLES (seeds per problem, default 2), BATCH (default 100)
set -euo pipefail
PT=${1:-src/parathinker/assets/default}
SEQ=${2:-runs/bundled_work/seq}
TEST=${3:-runs/bundled_work/data/test.jsonl}
OUT=${4:-runs/bundled_eval}
N=${N:-500}
SAMPLES=${SAMPLES:-2}
BATCH=${BATCH:-100}
# the checkpoint's prompting defaults (parathinker.json): temperature 1, top_p 1, path budget 128, summary 48
COMMON=(--benchmark "$TEST" --limit "$N" --samples "$SAMPLES" --batch-size "$BATCH" --temperature 1.0 --top-p 1.0
        --max-path-tokens 128 --summary-max-tokens 48 --no-progress)
ev() { echo "== $*"; /usr/bin/time -f "   %e s" parathinker eval "${COMMON[@]}" "$@"; }

# main table: sequential baseline model (one path at budget B, at 8B), majority@P; ParaThinker@P
ev --model "$SEQ" --method sequential,sequential-long,majority --paths 1,2,4,8 --sequential-max-tokens 1024 --out "$OUT/seq"
ev --model "$PT" --method parathinker,reprefill --paths 1,2,4,8 --out "$OUT/pt"
# ablations at inference: no thought embeddings, flattened positions
ev --model "$PT" --method parathinker --paths 2,4,8 --no-thought-embeddings --out "$OUT/pt_no_te"
ev --model "$PT" --method parathinker --paths 2,4,8 --flat-positions --out "$OUT/pt_flat"
# termination: half / last (first is the main run)
ev --model "$PT" --method parathinker --paths 4,8 --termination half --out "$OUT/pt_half"
ev --model "$PT" --method parathinker --paths 4,8 --termination last --out "$OUT/pt_last"
# tunnel vision: the sequential model continues its own wrong paths from prefixes of L tokens
ev --model "$SEQ" --tunnel-vision --tunnel-prefixes 4,8,16,24,32 --out "$OUT/tunnel"

python scripts/bundled_report.py "$OUT"
