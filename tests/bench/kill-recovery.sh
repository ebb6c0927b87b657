#!/usr/bin/env bash
# Time from a worker's SIGKILL to the coordinator completing the step without
# it, on the real MNIST data with 4 worker processes: kills one worker at a
# time (KILLS times, default 5, at different moments) and reads the
# coordinator's "step completed despite lost shards" log line.
#
#   tests/bench/kill-recovery.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/../.."
kills=${1:-5}
cargo build --release --bins --quiet
bin=target/release
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
RUST_LOG=info $bin/coordinator --workers 4 --epochs 2 --listen 127.0.0.1:0 --out "$out/m.safetensors" \
  >"$out/stdout" 2>"$out/log" &
coord=$!
until grep -q '^Listening on ' "$out/stdout" 2>/dev/null; do sleep 0.05; done # polling for the address line
addr=$(sed -n 's/^Listening on //p' "$out/stdout")
declare -a pids
for i in 0 1 2 3; do $bin/worker --connect "http://$addr" --name w$i 2>/dev/null & pids[$i]=$!; done
until grep -q ' training ' "$out/log"; do sleep 0.05; done # all 4 joined; steps are running
for k in $(seq 1 "$kills"); do
  sleep 0.$((3 + k)) # spread the kills over the run
  victim=$(( (k - 1) % 4 ))
  t0=$(date +%s.%N)
  kill -9 "${pids[$victim]}"
  until [ "$(grep -c 'step completed despite lost shards' "$out/log")" -ge "$k" ]; do sleep 0.005; done
  t1=$(grep 'step completed despite lost shards' "$out/log" | sed -n "${k}p" | grep -o '^[0-9T:.-]*Z' | xargs -I{} date -d {} +%s.%N)
  echo "kill $k: step completed $(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.2f') ms after SIGKILL"
  $bin/worker --connect "http://$addr" --name w$victim-again 2>/dev/null & pids[$victim]=$!
done
wait $coord
grep '^Faults absorbed' "$out/stdout" || true
