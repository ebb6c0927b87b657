#!/usr/bin/env bash
# Stragglers: one of 4 worker processes paused (SIGSTOP) for PAUSE seconds
# early in an epoch, then woken (SIGCONT). Prints the epoch's time undisturbed,
# paused with backup shards (the default), and paused with backups off
# (--backup-factor 0: the cluster waits for the paused worker), with the
# backups counted and the model checked against the undisturbed run's.
#
#   tests/bench/stragglers.sh [PAUSE] [RUNS]     # defaults: 5 s, 3 runs
#
# Real MNIST, [784,30,10], batch 10, 2 epochs; the pause starts 0.3 s into
# epoch 1 and the row is epoch 1's time (from --metrics). Medians of RUNS.
set -euo pipefail
cd "$(dirname "$0")/../.."
pause=${1:-5}
runs=${2:-3}
cargo build --release --bins --quiet
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp -d)
trap 'kill -CONT $(cat "$out"/pids 2>/dev/null) 2>/dev/null || true; rm -rf "$out"' EXIT

# run NAME PAUSE_SECONDS [coordinator flags]: prints epoch 1's seconds and the backups.
run() {
  local name=$1 secs=$2
  shift 2
  local sock="$out/$name.sock"
  $bin/coordinator --workers 4 --listen "unix:$sock" --epochs 2 --progress none --monitor none \
    --out "$out/$name.safetensors" --metrics "$out/$name.csv" "$@" >"$out/$name.txt" 2>/dev/null &
  local coord=$!
  until grep -q '^Listening on ' "$out/$name.txt" 2>/dev/null; do
    sleep 0.05 # polling a file for the address line: there is no event to wait on in bash
  done
  local pids=()
  for i in 1 2 3 4; do
    $bin/worker --connect "unix:$sock" --name "$name-$i" 2>/dev/null &
    pids+=($!)
  done
  echo "${pids[0]}" >"$out/pids"
  if [ "$secs" != 0 ]; then
    until grep -q '^Epoch 0: ' "$out/$name.txt" 2>/dev/null; do sleep 0.01; done
    sleep 0.3
    kill -STOP "${pids[0]}"
    sleep "$secs"
    kill -CONT "${pids[0]}"
  fi
  wait $coord "${pids[@]}"
  python3 - "$out/$name.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(rows[1]["seconds"], sum(int(r["backups"]) for r in rows))
EOF
}

printf '%-4s %-30s %10s %8s %s\n' run setup "epoch 1 s" backups model
for r in $(seq 1 "$runs"); do
  read -r base b0 <<<"$(run base 0)"
  printf '%-4s %-30s %10s %8s %s\n' "$r" "undisturbed" "$base" "$b0" "-"
  read -r with b1 <<<"$(run backups "$pause")"
  same=$(cmp -s "$out/base.safetensors" "$out/backups.safetensors" && echo identical || echo DIFFERENT)
  printf '%-4s %-30s %10s %8s %s\n' "$r" "paused ${pause} s, backups" "$with" "$b1" "$same"
  read -r without b2 <<<"$(run nobackups "$pause" --backup-factor 0)"
  same=$(cmp -s "$out/base.safetensors" "$out/nobackups.safetensors" && echo identical || echo DIFFERENT)
  printf '%-4s %-30s %10s %8s %s\n' "$r" "paused ${pause} s, no backups" "$without" "$b2" "$same"
  echo "$base $with $without" >>"$out/all"
done
python3 - "$out/all" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
base, with_, without = (statistics.median(c) for c in zip(*rows))
print(f"medians: undisturbed {base:.3f} s, paused with backups {with_:.3f} s (+{with_ - base:.3f} s), "
      f"paused without backups {without:.3f} s (+{without - base:.3f} s)")
EOF
