#!/usr/bin/env bash
# The book's runs (chapter 1 and chapter 3 of Nielsen's book) on real MNIST,
# for docs/book.md: each preset with seed 0 on a 4-worker cluster
# (deploy/local-cluster.sh, S = 4), seeds 1 and 2 with --local --shards 4
# (bitwise the same as the cluster at the same S; the script checks this on
# one preset by comparing model bytes), then a table, the comparison plot,
# and the first-epoch accuracy over seeds 0-10 with scaled init.
#
#   nice -n 10 tests/bench/book-figures.sh [OUT_DIR]     # default target/book
#   CLUSTER_SEEDS="0 1 2" tests/bench/book-figures.sh    # every seed on the cluster
#
# Long: the [784,100,10] runs are 60 epochs. Metrics CSVs, models and logs go to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/book}
mkdir -p "$out"
cargo build --release --bins --quiet
bin=target/release/coordinator
cluster_seeds=${CLUSTER_SEEDS:-0}
presets=${PRESETS:-"network.py ch3-xent ch3-l2 ch3-98 ch3-98-stop"}

run() { # preset seed mode
  local p=$1 s=$2 mode=$3 name="$out/$1-seed$2"
  [ -s "$name.csv" ] && [ -s "$name.log" ] && grep -q '^Done:' "$name.log" && return 0
  if [ "$mode" = cluster ]; then
    deploy/local-cluster.sh --listen 127.0.0.1:0 --preset "$p" --seed "$s" --shards 4 --progress none \
      --metrics "$name.csv" --out "$name.safetensors" >"$name.log" 2>"$name.err"
  else
    $bin --local --preset "$p" --seed "$s" --shards 4 --progress none \
      --metrics "$name.csv" --out "$name.safetensors" >"$name.log" 2>"$name.err"
  fi
  echo "$p seed $s ($mode): $(grep '^Done:' "$name.log")"
}

for p in $presets; do
  for s in 0 1 2; do
    mode=local
    case " $cluster_seeds " in *" $s "*) mode=cluster ;; esac
    run "$p" "$s" "$mode"
  done
done

# The cluster and --local give the same bytes at the same --shards: replay one cluster run locally.
if [ ! -s "$out/replay-ch3-l2-seed0.safetensors" ]; then
  $bin --local --preset ch3-l2 --seed 0 --shards 4 --progress none \
    --out "$out/replay-ch3-l2-seed0.safetensors" >/dev/null 2>&1
fi
if cmp "$out/ch3-l2-seed0.safetensors" "$out/replay-ch3-l2-seed0.safetensors"; then
  echo "ch3-l2 seed 0: 4-worker cluster and --local models are byte-identical ($(sha256sum <"$out/ch3-l2-seed0.safetensors" | cut -c1-16))"
fi

# First-epoch accuracy with scaled init, quadratic cost, eta 3.0, seeds 0-10.
: >"$out/first-epoch-scaled.txt"
for s in $(seq 0 10); do
  acc=$($bin --local --epochs 1 --shards 4 --seed "$s" --init-weights scaled --monitor none --progress none \
    --out "$out/first-$s.safetensors" 2>/dev/null | sed -n 's/^Epoch 0: \([0-9]*\) \/ 10000.*/\1/p')
  echo "seed $s: $acc" | tee -a "$out/first-epoch-scaled.txt"
done

python3 - "$out" <<'PY'
import csv, statistics, sys, re, os
out = sys.argv[1]
presets = ["network.py", "ch3-xent", "ch3-l2", "ch3-98", "ch3-98-stop"]
print("| run | best test | final test | test at best validation (validation) | mean of last 5 | epochs | s/epoch (seed 0, cluster) |")
print("|---|---|---|---|---|---|---|")
for p in presets:
    rows = []
    for s in range(3):
        f = f"{out}/{p}-seed{s}.csv"
        if not os.path.exists(f):
            continue
        r = list(csv.DictReader(open(f)))
        test = [float(x["test_accuracy"]) for x in r]
        val = [float(x["validation_accuracy"]) for x in r]
        b = max(range(len(val)), key=lambda i: (val[i], -i))
        secs = statistics.median(float(x["seconds"]) for x in r)
        rows.append((max(test), test[-1], test[b], val[b], statistics.mean(test[-5:]), len(r), secs))
    if not rows:
        continue
    rng = lambda i, fmt="{:.2f}": (fmt.format(min(x[i] for x in rows)) + "-" + fmt.format(max(x[i] for x in rows))) if len(rows) > 1 else fmt.format(rows[0][i])
    print(f"| {p} | {rng(0)}% | {rng(1)}% | {rng(2)}% ({rng(3)}%) | {rng(4)}% | {rng(5, '{}')} | {rows[0][6]:.2f} |")
PY

runs=()
for p in $presets; do runs+=("$p (seed 0)=$out/$p-seed0.csv"); done
$bin plot-runs --out "$out/book.png" --title "Test accuracy per epoch, seed 0, 4 workers" --floor 93 "${runs[@]}"
