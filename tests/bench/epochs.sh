#!/usr/bin/env bash
# Seconds per epoch of the single-process trainer (--local) and of clusters of
# 1, 2 and 4 worker processes, at batch 10 on the real MNIST data, plus the
# peak RSS of the coordinator and of each worker (GNU time's %M).
#
#   tests/bench/epochs.sh [EPOCHS]      # default 3; prints the median per setup
#
# Wall times are noisy on a shared 2-core machine: compare rows of one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${1:-3}
cargo build --release --bins --quiet
bin=target/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
epoch_seconds() { sed -n 's/^Epoch [0-9]*: .*  \([0-9.]*\) s  .*/\1/p' "$1"; }

printf '%-34s %12s %14s %14s\n' setup "s/epoch(med)" "coord RSS MB" "worker RSS MB"
for shards in 1 4; do
  /usr/bin/time -f %M -o "$out/local.rss" $bin/coordinator --local --shards $shards --epochs "$epochs" \
    --out "$out/m.safetensors" >"$out/local.txt" 2>/dev/null
  printf '%-34s %12s %14s %14s\n' "single process (--local, S=$shards)" \
    "$(epoch_seconds "$out/local.txt" | median)" "$(( $(cat "$out/local.rss") / 1024 ))" "-"
done
for workers in 1 2 4; do
  /usr/bin/time -f %M -o "$out/coord.rss" $bin/coordinator --workers $workers --epochs "$epochs" \
    --listen 127.0.0.1:0 --out "$out/m.safetensors" >"$out/coord.txt" 2>/dev/null &
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
  printf '%-34s %12s %14s %14s\n' "$workers worker processes (S=$workers)" \
    "$(epoch_seconds "$out/coord.txt" | median)" "$(( $(cat "$out/coord.rss") / 1024 ))" "$(( wrss / 1024 ))"
  rm -f "$out"/worker*.rss
done
