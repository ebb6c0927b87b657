#!/usr/bin/env bash
# One command for a whole local cluster, like torchrun: builds the release
# binaries, then runs a coordinator that starts N worker processes, waits for
# them, trains, tells them to shut down, and saves the model. Ctrl-C stops the
# coordinator, which kills the workers it started.
#
#   deploy/local-cluster.sh                 # 4 workers, 30 epochs, ~95%
#   deploy/local-cluster.sh --workers 2 --epochs 1
#
# The live dashboard is on: the coordinator prints its URL
# (http://127.0.0.1:8080/ unless --dashboard says otherwise).
#
# Every flag of `coordinator` works here (see `target/release/coordinator --help`).
# Relative paths (--out, --metrics, --plot, --checkpoint, --data-dir, ...) are
# relative to the directory you run this from, as is the default
# model.safetensors: the script never changes directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo puts the binaries: $CARGO_TARGET_DIR if set (cargo resolves a
# relative one against this directory, and so does exec below), else target/.
target="${CARGO_TARGET_DIR:-$root/target}"
# On stderr, so stdout stays the coordinator's ("Listening on ..." first).
echo "local-cluster: building release binaries (first time ~6 min on 2 cores)" >&2
cargo build --release --bins --manifest-path "$root/Cargo.toml"
case " $* " in
  *" --workers "*|*" --workers="*) ;;
  *) set -- --workers 4 "$@" ;;
esac
case " $* " in
  *" --dashboard "*|*" --dashboard="*) ;;
  *) set -- --dashboard 127.0.0.1:8080 "$@" ;;
esac
exec "$target/release/coordinator" --spawn-workers "$@"
