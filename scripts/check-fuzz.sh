#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (route, lock_info, state_head,
# config) on a stable toolchain, and replays the inputs saved in
# testdata/fuzz/ through the same checks. Not part of scripts/test.sh:
# the fuzz build compiles stategate a second time, with coverage
# instrumentation. Needs `cargo install cargo-fuzz --locked`.
#
# cargo fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets a
# stable compiler accept them. Without a nightly toolchain there is no
# sanitizer runtime, hence --sanitizer none. Fuzzing itself: see
# docs/development.md.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "scripts/check-fuzz.sh: cargo-fuzz is required: cargo install cargo-fuzz --locked" >&2
  exit 1
}
export RUSTC_BOOTSTRAP=1
echo "== cargo fuzz build --sanitizer none"
cargo fuzz build --sanitizer none
echo "== replaying testdata/fuzz/"
cargo test --manifest-path fuzz/Cargo.toml
