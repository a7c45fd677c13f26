#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the
# stable toolchain: the same -C flags cargo-fuzz passes (rustc has them on
# stable), without its nightly-only -Zsanitizer. `--target` keeps build
# scripts and proc macros uninstrumented, as cargo-fuzz does.
#
#   fuzz/build.sh [cargo build args...]     # e.g. --bin http1
#
# Binaries land in $FUZZ_TARGET_DIR/<host>/release (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"
host=$(rustc -vV | sed -n 's/^host: //p')
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-sanitizer-coverage-stack-depth
    --cfg fuzzing
    -Cforce-frame-pointers=yes
)
export RUSTFLAGS="${flags[*]}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
cargo build --release --target "$host" --bins "$@"
echo "$CARGO_TARGET_DIR/$host/release"
