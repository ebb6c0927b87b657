#!/usr/bin/env bash
# One command for a whole local cluster, like torchrun: builds the release
# binaries, then runs a coordinator that starts N worker processes, waits for
# them, trains, tells them to shut down, and saves the model. Ctrl-C stops the
# coordinator, which kills the workers it started.
#
#   deploy/local-cluster.sh                 # 4 workers, 30 epochs, ~95%
#   deploy/local-cluster.sh --workers 2 --epochs 1
#
# Every flag of `coordinator` works here (see `coordinator --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --quiet
case " $* " in
  *" --workers "*|*" --workers="*) ;;
  *) set -- --workers 4 "$@" ;;
esac
exec target/release/coordinator --spawn-workers "$@"
