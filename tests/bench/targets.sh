#!/usr/bin/env bash
# The headline figures of docs/performance.md, in one run, on real MNIST:
#   1. --local s/epoch at batch 1, 10, 100 and 1000, [784,30,10] (and the
#      share of the one-core FMA floor, 0.044 s/epoch, that batch 10 reaches);
#   2. cluster step p50 at batch 10 with 1, 2 and 4 worker processes, and the
#      coordinator's cost per extra worker, (p50(4) - p50(1)) / 3;
#   3. [784,100,10] at batch 1000 and 2000 (eta 30): 1 vs 2 worker processes per epoch;
#   4. with VS_DDP=1, tests/bench/vs-ddp.sh 4 10 1 (PyTorch DDP side by side).
#
#   tests/bench/targets.sh [EPOCHS]          # default 3 epochs per row; each row is their median
#   BIN=/some/release/dir tests/bench/targets.sh   # other binaries (e.g. an older build), no cargo
#
# Workers are spawned by the coordinator (--spawn-workers: a Unix socket
# where the build has one). Wall times on a shared 2-core machine are noisy:
# compare rows of one run, and take medians of several runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-3}
# shellcheck source=tests/bench/release-runs.sh
source tests/bench/release-runs.sh

# median COLUMN CSV: the column's median over the epochs.
median() {
  python3 -c 'import csv,statistics,sys; print(round(statistics.median(float(r[sys.argv[1]]) for r in csv.DictReader(open(sys.argv[2]))), 4))' "$1" "$2"
}

echo "1. --local, [784,30,10], s/epoch (median of $epochs epochs)"
for b in 1 10 100 1000; do
  eta=3.0
  [ "$b" = 1000 ] && eta=30.0
  train "$out/local$b.csv" --local --batch-size "$b" --eta "$eta"
  s=$(median seconds "$out/local$b.csv")
  extra=""
  [ "$b" = 10 ] && extra=$(python3 -c "print(f'  ({0.044 / $s:.0%} of the FMA floor, {50000 / $s:,.0f} samples/s)')")
  echo "   batch $b: $s s$extra"
done

echo "2. cluster, batch 10, step p50 ms"
for w in 1 2 4; do
  train "$out/w$w.csv" --workers "$w" --spawn-workers --batch-size 10
  p[$w]=$(median step_p50_ms "$out/w$w.csv")
  echo "   $w workers: ${p[$w]} ms (epoch $(median seconds "$out/w$w.csv") s)"
done
echo "   per extra worker: $(python3 -c "print(round((${p[4]} - ${p[1]}) / 3, 4))") ms"

for b in 1000 2000; do
  echo "3. [784,100,10], batch $b, eta 30: s/epoch"
  for w in 1 2; do
    train "$out/big$w.csv" --workers "$w" --spawn-workers --sizes 784,100,10 --batch-size "$b" --eta 30
    big[$w]=$(median seconds "$out/big$w.csv")
    echo "   $w workers: ${big[$w]} s"
  done
  echo "   2 vs 1 worker: $(python3 -c "print(round(${big[1]} / ${big[2]}, 2))")x faster"
done

if [ "${VS_DDP:-0}" = 1 ]; then
  echo "4. against PyTorch DDP"
  tests/bench/vs-ddp.sh 4 10 1
fi
