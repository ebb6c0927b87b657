#!/usr/bin/env bash
# PyTorch DistributedDataParallel (gloo, CPU, one process per rank) and our
# cluster, side by side in one run, on the same job: [784,30,10], real MNIST,
# W ranks / W worker processes, global batch B split into W contiguous shards.
# Prints each run's step medians and the ratio DDP / ours, then the medians.
#
#   tests/bench/vs-ddp.sh [W] [BATCH] [RUNS]     # defaults: 4 10 3
#
# The DDP side is the reference script in ../shared/anchors/torch-ddp/
# (override with TORCH_DDP_DIR), timed over DDP_STEPS steps (default 1000;
# at ~8 ms a step a whole epoch would take 40 s). Our side trains one whole
# epoch with --spawn-workers and reports its own step p50 (--metrics).
#
# torch comes from the package index into a virtual environment outside the
# repository, made the first time (TORCH_VENV, default
# ~/.cache/nielsen-ddp/torch-venv; the wheel is large). It is never part of
# the test suite or CI. MNIST is read from MNIST_DATA_DIR (default
# ~/.cache/nielsen-ddp/mnist, where the coordinator fetches it).
set -euo pipefail
cd "$(dirname "$0")/../.."
workers=${1:-4}
batch=${2:-10}
runs=${3:-3}
steps=${DDP_STEPS:-1000}
ddp_dir=${TORCH_DDP_DIR:-../shared/anchors/torch-ddp}
venv=${TORCH_VENV:-$HOME/.cache/nielsen-ddp/torch-venv}
data=${MNIST_DATA_DIR:-$HOME/.cache/nielsen-ddp/mnist}

[ -f "$ddp_dir/ddp.py" ] || { echo "no ddp.py in $ddp_dir (set TORCH_DDP_DIR)" >&2; exit 2; }
if [ ! -x "$venv/bin/torchrun" ]; then
  echo "installing torch into $venv (once; a large download)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy psutil
fi
cargo build --release --bins --quiet
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The coordinator fetches MNIST on first use; DDP needs the raw files there.
[ -f "$data/train-images-idx3-ubyte" ] || $bin/coordinator --local --epochs 1 --progress none \
  --out "$out/warm.safetensors" >/dev/null

ours() { # one epoch; prints our step p50 in ms
  $bin/coordinator --workers "$workers" --spawn-workers --listen 127.0.0.1:0 --epochs 1 \
    --batch-size "$batch" --progress none --monitor none --data-dir "$data" \
    --out "$out/m.safetensors" --metrics "$out/ours.csv" >/dev/null 2>&1
  python3 -c 'import csv,sys; print(next(csv.DictReader(open(sys.argv[1])))["step_p50_ms"])' "$out/ours.csv"
}

theirs() { # DDP_STEPS steps of one epoch; prints rank 0's step median in ms
  rm -f "$out/ddp.jsonl"
  (cd "$ddp_dir" && OMP_NUM_THREADS=1 "$venv/bin/torchrun" --standalone --nproc-per-node "$workers" \
    ddp.py --data "$data" --dtype 32 --batch "$batch" --epochs 1 --steps-per-epoch "$steps" \
    --out "$out/ddp.jsonl" >"$out/ddp.log" 2>&1) || { cat "$out/ddp.log" >&2; exit 1; }
  python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).readline())["step_ms_median"], 4))' "$out/ddp.jsonl"
}

printf '%-4s %6s %6s %14s %14s %8s\n' run W batch "DDP ms/step" "ours ms/step" ratio
ratios=()
for r in $(seq 1 "$runs"); do
  d=$(theirs)
  o=$(ours)
  ratio=$(python3 -c "print(round($d / $o, 1))")
  ratios+=("$ratio")
  printf '%-4s %6s %6s %14s %14s %8s\n' "$r" "$workers" "$batch" "$d" "$o" "${ratio}x"
done
echo "median ratio (DDP step / ours): $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')x"
