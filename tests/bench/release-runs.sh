# Sourced (not run) by the bench scripts that take BIN, from the workspace
# root and with $epochs set: BIN, the release binaries (built here unless BIN
# is already set); $out, a temporary directory removed on exit; and `train`.
if [ -z "${BIN:-}" ]; then
  cargo build --release --bins --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# train CSV [flags...]: a coordinator run of $epochs epochs whose --metrics go to CSV.
train() {
  local csv=$1
  shift
  "$BIN/coordinator" --epochs "$epochs" --progress none --monitor none --out "$out/m.safetensors" \
    --metrics "$csv" "$@" >/dev/null 2>&1
}
