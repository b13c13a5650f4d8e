#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 15) of wall time, from a fresh
# corpus seeded with the golden cases, the Keras .weights.h5 and HDF5 fixtures for keras_h5, and
# fuzz/seeds/<target>/ (checkpoint: each case behind the byte that picks its constructor;
# constructor: each case's JSON); config_inference and cli_sizes take structured input and start from nothing. CI runs this (.ci/run, step 5); see RELIABILITY.md, Fuzzing.
#
# Stable Rust is enough: cargo-fuzz passes -Zsanitizer=address to rustc, and RUSTC_BOOTSTRAP=1
# lets the stable compiler take it. Installs cargo-fuzz if missing; libFuzzer needs a C++
# compiler (g++). A crash fails the script and leaves the input in fuzz/artifacts/<target>/;
# replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
#
# Usage: bash fuzz/smoke.sh    (from anywhere; it runs in the repository root)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
export RUSTC_BOOTSTRAP=1

step() {
    printf '\n==== %s ====\n' "$*"
}

if ! command -v c++ >/dev/null 2>&1; then
    echo "error: no C++ compiler (c++); libfuzzer-sys compiles libFuzzer: install g++" >&2
    exit 1
fi
# --debug: cargo-fuzz only drives cargo and the fuzzer, so its own speed does not matter, and a
# debug build installs in about 25 s instead of 40 s on 2 cores.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    step "installing cargo-fuzz: cargo install cargo-fuzz --locked --debug"
    cargo install cargo-fuzz --locked --debug
fi

step "RUSTC_BOOTSTRAP=1 cargo fuzz build"
cargo fuzz build

for target in $(cargo fuzz list); do
    corpus="$(mktemp -d)"
    case "$target" in
        # Structured input, or seeds of their own only (fuzz/seeds/<target>/).
        config_inference | checkpoint | constructor | maps | cli_sizes) ;;
        keras_h5) cp tests/golden-variants/keras/k02_prenorm.weights.h5 tests/hdf5-fixtures/*.h5 "$corpus/" ;;
        *) cp tests/golden/*.safetensors "$corpus/" ;;
    esac
    if [ -d "fuzz/seeds/$target" ]; then
        cp "fuzz/seeds/$target"/* "$corpus/"
    fi
    step "$target for $FUZZ_SECONDS s: RUSTC_BOOTSTRAP=1 cargo fuzz run $target <corpus> -- -max_total_time=$FUZZ_SECONDS"
    cargo fuzz run "$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -dict=fuzz/safetensors.dict -print_final_stats=1
    rm -rf "$corpus"
done
step "fuzz smoke passed: $(cargo fuzz list | wc -l) targets, $FUZZ_SECONDS s each"
