#!/usr/bin/env bash
# Figures for docs/exactness.md (trust), on real MNIST, release build:
#   1. step time p50 of the 4-worker cluster at batch 10 with --audit-rate
#      0, 0.01, 0.1 and 1 (one epoch each, RUNS runs, median);
#   2. how long `coordinator verify` takes for a 30-epoch record;
#   3. the portable kernel set against avx2, `--local` at batch 10
#      (alternated runs, median epoch time and the ratio).
#
#   nice -n 10 tests/bench/trust.sh [OUT_DIR]      # default target/trust
#   RUNS=5 tests/bench/trust.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/trust}
runs=${RUNS:-3}
mkdir -p "$out"
cargo build --release --bins --quiet
bin=target/release/coordinator

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The "step p50 X ms" and "E s" fields of an epoch line.
p50() { grep -o 'step p50 [0-9.]* ms' "$1" | head -1 | awk '{ print $3 }'; }
epoch_seconds() { grep '^Epoch 0:' "$1" | grep -o ')  [0-9.]* s' | awk '{ print $2 }'; }

echo "== audit cost: 4 workers, batch 10, one epoch, step p50 (ms), median of $runs"
for p in 0 0.01 0.1 1; do
  for r in $(seq "$runs"); do
    $bin --workers 4 --spawn-workers --epochs 1 --audit-rate "$p" --progress none \
      --listen 127.0.0.1:0 --out "$out/audit.safetensors" >"$out/audit-$p-$r.log" 2>/dev/null
    p50 "$out/audit-$p-$r.log"
  done | median | xargs printf "audit-rate %-5s step p50 %s ms\n" "$p"
  grep -h '^Audits:' "$out/audit-$p-1.log" || true
done

echo "== verify: a 30-epoch record"
$bin --local --epochs 30 --progress none --out "$out/verify.safetensors" >"$out/verify-run.log" 2>/dev/null
grep '^Done:' "$out/verify-run.log"
/usr/bin/time -f "verify wall %e s, max RSS %M KB" \
  $bin verify "$out/verify.record.json" --model "$out/verify.safetensors"

echo "== portable vs avx2: --local, batch 10, epoch seconds, median of $runs"
for r in $(seq "$runs"); do
  for k in avx2 portable; do
    $bin --local --epochs 1 --kernels "$k" --progress none --out "$out/k.safetensors" >"$out/kernels-$k-$r.log" 2>/dev/null
  done
done
a=$(for r in $(seq "$runs"); do epoch_seconds "$out/kernels-avx2-$r.log"; done | median)
b=$(for r in $(seq "$runs"); do epoch_seconds "$out/kernels-portable-$r.log"; done | median)
echo "avx2 $a s/epoch, portable $b s/epoch, portable/avx2 = $(echo "$b / $a" | bc -l | cut -c1-4)"
