#!/usr/bin/env bash
# What the dashboard costs a run: step time p50 (the median of each run's
# per-epoch step p50 from --metrics, then the median over runs) without
# --dashboard, with it but no page open, and with the page open in a headless
# Chromium; plus the page's weight and the event stream's rate and bytes/s.
# Real MNIST, [784,30,10], batch 10, 2 worker processes.
#
#   tests/bench/dashboard-overhead.sh [RUNS] [EPOCHS]    # defaults: 5 runs of 2 epochs each
#   BIN=target/debug tests/bench/dashboard-overhead.sh   # binaries already built elsewhere
#
# Runs alternate between the three modes so that drift in the machine's load
# hits all of them alike. Wall times are noisy on a shared 2-core machine:
# compare the rows of one invocation.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
epochs=${2:-2}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --quiet
  BIN=target/release
fi
command -v chromium >/dev/null || { echo "needs chromium (Debian: chromium)"; exit 1; }
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

# One run; $1 = off | closed | open. Prints its step p50 (ms).
run() {
  local mode=$1 n=$2 flags=() url
  [ "$mode" != off ] && flags=(--dashboard 127.0.0.1:0)
  : >"$out/$mode-$n.out" # exists before the polling below reads it
  "$BIN/coordinator" --workers 2 --spawn-workers --epochs "$epochs" --listen 127.0.0.1:0 \
    --progress none --out "$out/model.safetensors" --metrics "$out/$mode-$n.csv" "${flags[@]}" \
    >"$out/$mode-$n.out" 2>"$out/$mode-$n.err" &
  local pid=$!
  if [ "$mode" = open ]; then
    until url=$(sed -n 's/^Dashboard on \(http[^ ]*\).*/\1/p' "$out/$mode-$n.out") && [ -n "$url" ]; do
      kill -0 $pid 2>/dev/null || break
      sleep 0.1 # polling the coordinator's stdout for its URL
    done
    chromium --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0 \
      --user-data-dir="$out/profile" "$url" >/dev/null 2>&1 &
    local browser=$!
  fi
  wait $pid
  [ "$mode" = open ] && { kill $browser 2>/dev/null || true; wait $browser 2>/dev/null || true; }
  python3 - "$out/$mode-$n.csv" <<'PY'
import csv, statistics, sys
print(statistics.median(float(r["step_p50_ms"]) for r in csv.DictReader(open(sys.argv[1]))))
PY
}

declare -A p50
for n in $(seq 1 "$runs"); do
  for mode in off closed open; do
    v=$(run $mode "$n")
    p50[$mode]="${p50[$mode]:-} $v"
    echo "run $n $mode: step p50 $v ms" >&2
  done
done
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.4f}")' "$@"; }
off=$(median ${p50[off]})
echo "mode      step p50 (ms, median of $runs runs)   vs off"
for mode in off closed open; do
  m=$(median ${p50[$mode]})
  printf "%-9s %-38s %+.1f%%\n" "$mode" "$m  (runs:${p50[$mode]})" "$(python3 -c "print(100*($m-$off)/$off)")"
done

# Page weight and the event stream, on a run of its own (long enough to
# measure the stream while it trains).
: >"$out/w.out"
"$BIN/coordinator" --workers 2 --spawn-workers --epochs 4 --listen 127.0.0.1:0 --progress none \
  --out "$out/model.safetensors" --dashboard 127.0.0.1:0 >"$out/w.out" 2>/dev/null &
pid=$!
until url=$(sed -n 's/^Dashboard on \(http[^ ]*\).*/\1/p' "$out/w.out") && [ -n "$url" ]; do sleep 0.1; done
page=$(curl -s "$url" | wc -c)
# Five seconds of the stream while it trains (the data loads first: wait for a step).
until curl -s "${url}state.json" | grep -q '"phase":"training"'; do sleep 0.2; done
timeout 5 curl -s -N "${url}events" >"$out/events.txt" || true
wait $pid || true
events=$(grep -c '^event: state' "$out/events.txt" || true)
learned=$(grep -c '^event: learned' "$out/events.txt" || true)
bytes=$(wc -c <"$out/events.txt")
echo "page: $page bytes (HTML, CSS and JS in one, no other requests)"
echo "stream over 5 s of training: $events state events ($(python3 -c "print($events/5)")/s), $learned learned, $bytes bytes ($(python3 -c "print(round($bytes/5))") B/s)"
