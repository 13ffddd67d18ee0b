#!/usr/bin/env bash
# Mix-aware decoding on one GPU (after the offline wheels are staged into /tmp/site): end-to-end
# CMO with Q decoded as box tiles against full-decode Q and the ceiling, in one run each at
# prob 0.5 and prob 1. Tiles two ways: ROI decodes ("tiles", measured slower than full decoding
# on the H200) and whole-image decodes of the mixed rows cut to the boxes ("tiles-whole"); plus
# tiles with Q decoded on the CPU from a copy stored at --max-size 384. No torchvision reference
# (the targets are vs the ceiling). Each stage has its own time limit, so whatever finishes
# comes back in $OUT. On the H200: generation 47 s, the 384-px copy 24 s, a three-variant stage
# 113-128 s, but the prob 0.5 stage with ROI tiles ran past 170 s. The limits add up to 575 s.
# CPU dry run (tiny): DEVICE=cpu SIZE=default E2E_EXTRA=--tiny MAX_SIZE=16 bash bench/gpu/e2e_plan.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-inat} OUT=${OUT:-/tmp/out} DATA=${DATA:-/tmp/ltpipe-$SIZE}
MAX_SIZE=${MAX_SIZE:-384}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
[ "$DEVICE" = cuda ] && { python3 -V; nvidia-smi -L; python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN | tail -3; }
log generate; /usr/bin/time -f "generate: %e s" timeout "${T_GEN:-90}" ltpipe shard synthetic "$DATA" --size "$SIZE" --workers "$(nproc)" 2>&1 | tail -2
log "copy --max-size $MAX_SIZE"; timeout "${T_COPY:-50}" ltpipe shard "shards:$DATA" "$DATA-$MAX_SIZE" --max-size "$MAX_SIZE" --workers "$(nproc)" 2>&1 | tail -1
run_e2e() {  # $1: prob, $2: seconds, $3: variants
  log "e2e cmo prob $1"
  timeout "$2" python3 -m ltpipe.bench.e2e --device "$DEVICE" --shards "$DATA" ${E2E_EXTRA:-} --mixers cmo \
    --skip-reference --mix-prob "$1" --steps "${STEPS:-20}" --repeats 2 --warmup 8 \
    --variants "$3" --out "/tmp/e2e-p$1" 2>&1 | grep -v -E "Warn|USDT|profiler_st" | tee "$OUT/e2e-p$1.log" | tail -12
  for f in /tmp/e2e-p"$1"/e2e-*.json; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$f" .json)-plan-p$1.json"; done
}
run_e2e 0.5 "${T_P05:-220}" "prio=high,qdec=full;prio=high,qdec=tiles-whole;prio=high,qdec=tiles"
run_e2e 1 "${T_P1:-215}" "prio=high,qdec=full;prio=high,qdec=tiles-whole;prio=high,qdec=tiles,shards=$DATA-$MAX_SIZE,cpudec=minority"
log done; ls -la "$OUT"
