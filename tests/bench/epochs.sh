#!/usr/bin/env bash
# End-to-end benchmark on the real MNIST data, [784,30,10]: seconds per epoch
# (median over the epochs), training samples/s, step time p50/p99 and its
# breakdown (compute / encode+decode / transport / reduce+update, medians),
# and peak RSS, for the single-process trainer (--local) and clusters of 1, 2
# and 4 worker processes, at each batch size given.
#
#   tests/bench/epochs.sh [EPOCHS] [BATCH...]    # defaults: 3 epochs, batches 10 100
#   ETA_SCALING=sqrt tests/bench/epochs.sh 3 100 1000 5000   # eta = 3.0 x sqrt(batch / 10)
#
# Prints a table and writes the same rows as CSV to target/bench/epochs.csv.
# Every row comes from the trainer's own --metrics file. Wall times are noisy
# on a shared 2-core machine: compare rows of one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-3}
shift || true
batches=("${@:-10 100}")
read -r -a batches <<<"${batches[*]}"
cargo build --release --bins --quiet
bin=target/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p target/bench
csv=target/bench/epochs.csv

# Column medians of a --metrics file: seconds samples/s p50 p99 compute codec transport reduce.
medians() {
  python3 - "$1" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ["seconds", "samples_per_sec", "step_p50_ms", "step_p99_ms", "compute_p50_ms",
        "codec_p50_ms", "transport_p50_ms", "reduce_p50_ms", "test_accuracy"]
print(" ".join(f"{statistics.median(float(r[c]) for r in rows):.4g}" for c in cols))
EOF
}

eta_for() { # eta 3.0 at batch 10 (Nielsen's); ETA_SCALING=sqrt|linear scales it with the batch
  case "${ETA_SCALING:-none}" in
    none) echo 3.0 ;;
    sqrt) python3 -c "print(round(3.0 * ($1 / 10) ** 0.5, 2))" ;;
    linear) python3 -c "print(3.0 * $1 / 10)" ;;
    *) echo "ETA_SCALING must be none, sqrt or linear" >&2; exit 2 ;;
  esac
}

header="setup,batch,eta,epoch_s,samples_per_s,step_p50_ms,step_p99_ms,compute_ms,codec_ms,transport_ms,reduce_ms,test_acc,coord_rss_mb,worker_rss_mb"
echo "$header" >"$csv"
printf '%-24s %5s %6s %8s %10s %8s %8s %8s %8s %9s %8s %7s %6s %6s\n' \
  setup batch eta "s/epoch" "samples/s" "p50 ms" "p99 ms" compute codec transport reduce "acc %" "c MB" "w MB"
row() { # setup batch eta medians coord_rss worker_rss
  local setup=$1 batch=$2 eta=$3 m=$4 crss=$5 wrss=$6
  read -r s sps p50 p99 comp codec trans red acc <<<"$m"
  printf '%-24s %5s %6s %8s %10s %8s %8s %8s %8s %9s %8s %7s %6s %6s\n' \
    "$setup" "$batch" "$eta" "$s" "$sps" "$p50" "$p99" "$comp" "$codec" "$trans" "$red" "$acc" "$crss" "$wrss"
  echo "$setup,$batch,$eta,$s,$sps,$p50,$p99,$comp,$codec,$trans,$red,$acc,$crss,$wrss" >>"$csv"
}

for batch in "${batches[@]}"; do
  eta=$(eta_for "$batch")
  common=(--epochs "$epochs" --batch-size "$batch" --eta "$eta" --progress none --out "$out/m.safetensors")
  for shards in 1 4; do
    /usr/bin/time -f %M -o "$out/local.rss" $bin/coordinator --local --shards $shards "${common[@]}" \
      --metrics "$out/local.csv" >/dev/null 2>&1
    row "local S=$shards" "$batch" "$eta" "$(medians "$out/local.csv")" \
      "$(($(cat "$out/local.rss") / 1024))" "-"
  done
  for workers in 1 2 4; do
    /usr/bin/time -f %M -o "$out/coord.rss" $bin/coordinator --workers $workers "${common[@]}" \
      --listen 127.0.0.1:0 --metrics "$out/cluster.csv" >"$out/coord.txt" 2>/dev/null &
    coord=$!
    until grep -q '^Listening on ' "$out/coord.txt" 2>/dev/null; do
      kill -0 $coord 2>/dev/null || { echo "coordinator died"; exit 1; }
      sleep 0.05 # polling a file for the address line: there is no event to wait on in bash
    done
    addr=$(sed -n 's/^Listening on //p' "$out/coord.txt")
    pids=()
    for i in $(seq 1 $workers); do
      /usr/bin/time -f %M -o "$out/worker$i.rss" $bin/worker --connect "http://$addr" --name bench-$i 2>/dev/null &
      pids+=($!)
    done
    wait $coord "${pids[@]}"
    wrss=$(cat "$out"/worker*.rss | sort -n | tail -1)
    row "$workers workers S=$workers" "$batch" "$eta" "$(medians "$out/cluster.csv")" \
      "$(($(cat "$out/coord.rss") / 1024))" "$((wrss / 1024))"
    rm -f "$out"/worker*.rss
  done
done
echo "CSV: $csv"
