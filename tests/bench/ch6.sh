#!/usr/bin/env bash
# Chapter 6 (network3.py's nets) on real MNIST: the book's table, speed in one
# process against PyTorch, the cluster against one process, and memory.
#
#   tests/bench/ch6.sh table      # test accuracy at best validation, seeds 0-1 (ch6-conv, -conv2, -relu), one seed
#                                 # of ch6-expanded and ch6-dropout (the last on 2 worker processes): many hours
#   tests/bench/ch6.sh speed      # --local training samples/s on the ch6-conv2 net at batch 10, 3 one-epoch runs;
#                                 # with TORCH=/path/to/venv/bin/python and ANCHORS=dir of network3_torch.py, PyTorch's beside it
#   tests/bench/ch6.sh cluster    # ch6-conv2, batch 10 and 100: --local --shards W vs W = 2 and 4 worker processes
#                                 # (samples/s of one epoch each, cmp of the model files; ROUNDS=3 interleaved
#                                 # rounds, then medians and ratios)
#   tests/bench/ch6.sh cpu        # ch6-conv2, batch 10 and 100: CPU ms per step of --local --shards 2 and of
#                                 # 2 worker processes (all processes, evaluation's share included)
#   tests/bench/ch6.sh memory     # peak RSS of the coordinator and each worker, ch6-dropout on 2 workers
#                                 # (sampled after SECONDS_TO_SAMPLE=60 s of training, then stopped)
#   tests/bench/ch6.sh vs-ddp     # ch6-conv2, 2 workers, batch 10 and 100: our step p50 beside PyTorch DDP's median
#                                 # (gloo, 2 processes, one thread each); needs TORCHRUN=/venv/bin/torchrun and ANCHORS
#
# Wall times on a shared 2-core machine are noisy: compare rows of one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins >&2
bin=target/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
epoch_line() { grep -E '^Epoch' | tail -1; }

case "${1:-speed}" in
table)
  for preset in ch6-conv ch6-conv2 ch6-relu; do
    for seed in 0 1; do
      echo "$preset seed $seed: $($bin/coordinator --local --preset "$preset" --seed "$seed" --progress none \
        --out "$out/m.safetensors" 2>/dev/null | grep '^Done')"
    done
  done
  echo "ch6-expanded seed 0: $($bin/coordinator --local --preset ch6-expanded --seed 0 --progress none \
    --out "$out/m.safetensors" 2>/dev/null | grep '^Done')"
  echo "ch6-dropout seed 0 (2 workers): $($bin/coordinator --workers 2 --spawn-workers --listen 127.0.0.1:0 \
    --preset ch6-dropout --seed 0 --progress none --out "$out/m.safetensors" 2>/dev/null | grep '^Done')"
  ;;
speed)
  for run in 1 2 3; do
    echo "--local ch6-conv2 batch 10, run $run: $($bin/coordinator --local --preset ch6-conv2 --epochs 1 \
      --monitor none --progress none --out "$out/m.safetensors" 2>/dev/null | epoch_line)"
  done
  if [ -n "${TORCH:-}" ]; then
    data=${MNIST_DATA_DIR:-$HOME/.cache/nielsen-ddp/mnist}
    OMP_NUM_THREADS=1 "$TORCH" "${ANCHORS:?dir of network3_torch.py}/network3_torch.py" --data "$data" \
      --preset conv2 --bench-steps 300
  fi
  ;;
cluster)
  # ROUNDS rounds (default 3), each running every configuration once, so that a
  # slow spell of the shared machine hits all of them; then the median of each
  # and its ratio to --local --shards W. Model files are compared with cmp.
  rounds=${ROUNDS:-3}
  runs="$out/runs.txt"
  for round in $(seq "$rounds"); do
    for batch in 10 100; do
      for w in 2 4; do
        local_line=$($bin/coordinator --local --shards "$w" --preset ch6-conv2 --batch-size "$batch" --epochs 1 \
          --monitor none --progress none --out "$out/local.safetensors" 2>/dev/null | epoch_line)
        cluster_line=$($bin/coordinator --workers "$w" --spawn-workers --listen 127.0.0.1:0 --preset ch6-conv2 \
          --batch-size "$batch" --epochs 1 --monitor none --progress none --out "$out/cluster.safetensors" \
          2>/dev/null | epoch_line)
        same=$(cmp -s "$out/local.safetensors" "$out/cluster.safetensors" && echo "identical" || echo "DIFFERENT")
        echo "round $round, batch $batch, --local --shards $w: $local_line"
        echo "round $round, batch $batch, $w workers:          $cluster_line   (models $same)"
        echo "$batch local$w $(grep -oE '[0-9]+ samples/s' <<<"$local_line" | cut -d' ' -f1)" >>"$runs"
        echo "$batch workers$w $(grep -oE '[0-9]+ samples/s' <<<"$cluster_line" | cut -d' ' -f1)" >>"$runs"
      done
    done
  done
  python3 - "$runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    batch, what, rate = line.split()
    runs.setdefault((int(batch), what), []).append(int(rate))
for batch in (10, 100):
    m = {what: statistics.median(r) for (b, what), r in runs.items() if b == batch}
    print(f"batch {batch}, medians (samples/s): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(m.items())))
    print(f"batch {batch}: 2 workers / --local --shards 2 = {m['workers2'] / m['local2']:.2f}, "
          f"4 workers / 2 workers = {m['workers4'] / m['workers2']:.2f}")
PY
  ;;
cpu)
  # CPU time of all processes (coordinator and the workers it spawned) per
  # step, evaluation's share included: on a machine whose cores are all busy
  # this, not latency, bounds a step. Needs /usr/bin/time (Debian's `time`).
  for batch in 10 100; do
    for run in "--local --shards 2" "--workers 2 --spawn-workers --listen 127.0.0.1:0"; do
      # shellcheck disable=SC2086
      line=$(/usr/bin/time -o "$out/cpu" -f "%U %S" $bin/coordinator $run --preset ch6-conv2 --batch-size "$batch" \
        --epochs 1 --monitor none --progress none --out "$out/m.safetensors" 2>/dev/null | epoch_line)
      echo "batch $batch, $run: $(awk -v b="$batch" '{printf "%.2f ms of CPU a step", ($1 + $2) * 1000 / (50000 / b)}' \
        "$out/cpu"); $(grep -oE '[0-9]+ samples/s' <<<"$line")"
    done
  done
  ;;
memory)
  $bin/coordinator --workers 2 --spawn-workers --listen 127.0.0.1:0 --preset ch6-dropout --epochs 1 \
    --progress none --out "$out/m.safetensors" >/dev/null 2>&1 &
  coord=$!
  sleep "${SECONDS_TO_SAMPLE:-60}"   # the peaks are reached in the first steps; sample them after a while
  for pid in $coord $(pgrep -P $coord); do
    echo "$(tr '\0' ' ' </proc/$pid/cmdline | cut -c1-60): $(grep VmHWM /proc/$pid/status)"
  done
  kill $coord
  wait $coord || true
  ;;
vs-ddp)
  data=${MNIST_DATA_DIR:-$HOME/.cache/nielsen-ddp/mnist}
  for batch in 10 100; do
    ours=$($bin/coordinator --workers 2 --spawn-workers --listen 127.0.0.1:0 --preset ch6-conv2 --batch-size "$batch" \
      --epochs 1 --monitor none --progress none --out "$out/m.safetensors" 2>/dev/null | epoch_line)
    echo "batch $batch, ours (2 workers): $ours"
    (cd "${ANCHORS:?dir of network3_ddp.py}" && OMP_NUM_THREADS=1 "${TORCHRUN:?path of torchrun}" --standalone \
      --nproc-per-node 2 network3_ddp.py --data "$data" --preset conv2 --batch "$batch" --steps 300 2>/dev/null | tail -1) \
      || echo "batch $batch: the DDP run failed (run it again; torchrun --standalone can lose its port)"
  done
  ;;
*)
  echo "usage: $0 table|speed|cluster|cpu|memory|vs-ddp" >&2
  exit 2
  ;;
esac
