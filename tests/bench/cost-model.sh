#!/usr/bin/env bash
# Checks the cost model of docs/performance.md against measurements: step
# p50 of --local (S = 1) and of clusters of W = 1, 2, 4 worker processes
# (S = W), at batch 10, 100 and 1000, on real MNIST, [784,30,10].
#
#   tests/bench/cost-model.sh [EPOCHS]        # default 2 epochs per row (median of their p50s)
#   BIN=/some/release/dir tests/bench/cost-model.sh   # other binaries, no cargo
#
# The model (ms per step; B batch, W workers, S shards):
#   shard(n) = A + C·n                      compute of one shard of n samples
#   local    = S · shard(B/S)
#   cluster  = shard(B/W) · max(1, W/2) + M·W + P·B
# with A, C, M, P from the environment (defaults: the figures in
# docs/performance.md). It prints predicted against measured for every row,
# then the constants fitted to this run by least squares on relative error (A and C from the
# local rows, then M and P from the cluster rows), and the error with them.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-2}
# shellcheck source=tests/bench/release-runs.sh
source tests/bench/release-runs.sh

rows=()
for b in 10 100 1000; do
  eta=3.0
  [ "$b" = 1000 ] && eta=30.0
  train "$out/local-$b.csv" --local --batch-size "$b" --eta "$eta"
  rows+=("0 $b $out/local-$b.csv")
  for w in 1 2 4; do
    train "$out/w$w-$b.csv" --workers "$w" --spawn-workers --batch-size "$b" --eta "$eta"
    rows+=("$w $b $out/w$w-$b.csv")
  done
done

printf '%s\n' "${rows[@]}" | python3 -c '
import csv, os, statistics, sys

A = float(os.environ.get("A", -0.0093))
C = float(os.environ.get("C", 0.00253))
M = float(os.environ.get("M", 0.0805))
P = float(os.environ.get("P", 0.00145))

rows = []
for line in sys.stdin:
    w, b, path = line.split()
    p50 = statistics.median(float(r["step_p50_ms"]) for r in csv.DictReader(open(path)))
    rows.append((int(w), int(b), p50))

def model(w, b, a, c, m, p):
    shard = lambda n: a + c * n
    if w == 0:
        return shard(b)
    return shard(b / w) * max(1, w / 2) + m * w + p * b

def table(a, c, m, p, title):
    print(f"{title}: A={a:.4g} C={c:.4g} M={m:.4g} P={p:.4g}")
    print("| setup | batch | model ms/step | measured p50 | error |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for w, b, p50 in rows:
        pred = model(w, b, a, c, m, p)
        err = pred / p50 - 1
        worst = max(worst, abs(err))
        setup = "local S=1" if w == 0 else f"{w} workers S={w}"
        print(f"| {setup} | {b} | {pred:.3f} | {p50:.3f} | {err:+.0%} |")
    print(f"worst error {worst:.0%}\n")

table(A, C, M, P, "constants of docs/performance.md")

# Least squares on relative errors (each row weighted by 1/measured): A, C
# from the local rows; M, P from the cluster rows (what remains after their
# compute term).
def lstsq2(xs, ys, weights):
    xs = [(x0 * w, x1 * w) for (x0, x1), w in zip(xs, weights)]
    ys = [y * w for y, w in zip(ys, weights)]
    sxx = sum(x[0] ** 2 for x in xs)
    syy = sum(x[1] ** 2 for x in xs)
    sxy = sum(x[0] * x[1] for x in xs)
    bx = sum(x[0] * y for x, y in zip(xs, ys))
    by = sum(x[1] * y for x, y in zip(xs, ys))
    det = sxx * syy - sxy ** 2
    return ((bx * syy - by * sxy) / det, (by * sxx - bx * sxy) / det)

local = [(b, p50) for w, b, p50 in rows if w == 0]
a, c = lstsq2([(1.0, b) for b, _ in local], [p for _, p in local], [1 / p for _, p in local])
cluster = [(w, b, p50) for w, b, p50 in rows if w > 0]
rest = [p50 - (a + c * b / w) * max(1, w / 2) for w, b, p50 in cluster]
m, p = lstsq2([(w, b) for w, b, _ in cluster], rest, [1 / p50 for _, _, p50 in cluster])
table(a, c, m, p, "fitted to this run")
'
