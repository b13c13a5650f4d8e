#!/usr/bin/env bash
# compattn against the same layer in burn 0.22 (burn's wgpu backend on Vulkan), in one run,
# alternating, on the same adapter. See README.md here.
#
#   compare/burn/run.sh                      # both modes, all three configurations, 2 rounds
#   ROUNDS=1 MODE=forward CONFIGS=readme compare/burn/run.sh
#
# Env:
#   ROUNDS   rounds over the configurations (default 2); each round prints one table
#   MODE     forward | train | both (default both)
#   CONFIGS  comma-separated subset of: readme, r4, paper (default all three)
#   WARMUP   untimed iterations before the timed ones, both programs (default 2)
#   ITERS    timed iterations, both programs (default 10)
#   NO_BUILD=1  skip the two cargo builds (use the binaries already built)
#
# Timing: host wall clock per iteration, median of ITERS after WARMUP, for both programs.
#   ours fwd  : `compattn bench --json` key wall_median_ms (upload x .. read y back; NOT
#               median_ms, which is GPU timestamps)
#   ours step : `compattn bench --backward --json` forward_train_ms + backward_ms (training
#               forward with y read back, then backward with dL/dx read back)
#   burn fwd  : upload x, forward, y.into_data()
#   burn step : upload x and dy, forward, loss = sum(y * dy), backward(), every parameter
#               gradient and dL/dx read back with into_data()
# burn's autotune (on by default) tunes a shape the first time it runs it; that happens inside
# the WARMUP iterations (burn-compattn prints them as warmup_ms), and its results persist in
# compare/burn/target/cubecl-environment (cubecl.toml), so later processes skip the tuning.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
ROUNDS="${ROUNDS:-2}"
MODE="${MODE:-both}"
CONFIGS="${CONFIGS:-readme,r4,paper}"
WARMUP="${WARMUP:-2}"
ITERS="${ITERS:-10}"

export WGPU_BACKEND=vulkan
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    export XDG_RUNTIME_DIR
fi

case "$MODE" in
forward | train | both) ;;
*)
    echo "MODE must be forward, train or both (got $MODE)" >&2
    exit 2
    ;;
esac

# One JSON key of stdin's object.
if command -v jq >/dev/null 2>&1; then
    json_get() { jq -r ".$1"; }
else
    json_get() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
fi
# a / b to 2 decimals, or "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
ms() { awk -v a="$1" 'BEGIN { if (a == "-") print "-"; else printf "%.1f", a }'; }

ours="$root/target/release/compattn"
burn="$here/target/release/burn-compattn"
if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building compattn (release) ..." >&2
    (cd "$root" && cargo build --release -p compattn)
    echo "building burn-compattn (release; the first build takes a long while) ..." >&2
    (cd "$here" && CARGO_TARGET_DIR="$here/target" cargo build --release)
fi

sizes_of() {
    case "$1" in
    readme) echo "1 512 1024 64 8 2" ;;
    r4) echo "1 1024 512 64 4 4" ;;
    paper) echo "1 512 512 64 8 8" ;;
    *)
        echo "unknown configuration $1 (readme, r4, paper)" >&2
        exit 2
        ;;
    esac
}
label_of() {
    case "$1" in
    readme) echo "README (n 512, dim 1024, d 64, s 8, r 2)" ;;
    r4) echo "r 4 (n 1024, dim 512, d 64, s 4, r 4)" ;;
    paper) echo "paper's (n 512, dim 512, d 64, s 8, r 8)" ;;
    esac
}

echo "adapter (burn):" >&2
(cd "$here" && "$burn" --check) >&2

IFS=',' read -r -a configs <<<"$CONFIGS"
for round in $(seq 1 "$ROUNDS"); do
    rows=()
    for cfg in "${configs[@]}"; do
        read -r b n dim d s r <<<"$(sizes_of "$cfg")"
        shape=(--batch "$b" --seq "$n" --dim "$dim" --dim-head "$d" --searches "$s" --retrievals "$r" --warmup "$WARMUP" --iters "$ITERS")
        of=- bf=- os=- bs=-
        if [ "$MODE" != train ]; then
            echo "round $round, $cfg: ours forward ..." >&2
            of="$("$ours" bench --json --no-gemm "${shape[@]}" | json_get wall_median_ms)"
            echo "round $round, $cfg: burn forward ..." >&2
            out="$(cd "$here" && "$burn" "${shape[@]}")"
            echo "  burn: $out" >&2
            bf="$(json_get median_ms <<<"$out")"
        fi
        if [ "$MODE" != forward ]; then
            echo "round $round, $cfg: ours step ..." >&2
            out="$("$ours" bench --backward --json "${shape[@]}")"
            os="$(awk -v a="$(json_get forward_train_ms <<<"$out")" -v b="$(json_get backward_ms <<<"$out")" 'BEGIN { print a + b }')"
            echo "round $round, $cfg: burn step ..." >&2
            out="$(cd "$here" && "$burn" --train "${shape[@]}")"
            echo "  burn: $out" >&2
            bs="$(json_get median_ms <<<"$out")"
        fi
        rows+=("| $(label_of "$cfg") | $(ms "$of") | $(ms "$bf") | $(ratio "$bf" "$of") | $(ms "$os") | $(ms "$bs") | $(ratio "$bs" "$os") |")
    done
    echo
    echo "### Round $round of $ROUNDS (median ms, host wall clock; warmup $WARMUP, iters $ITERS)"
    echo
    echo "| configuration | ours fwd ms | burn fwd ms | burn/ours fwd | ours step ms | burn step ms | burn/ours step |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
done
