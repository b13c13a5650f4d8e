#!/usr/bin/env bash
# Browser tests for compositional_attention: builds the crate for wasm32-unknown-unknown, runs the
# wasm-bindgen tests (web/tests/web.rs) in headless Chromium on WebGPU, builds the JS/TS package
# into web/pkg/ (the module, its TypeScript definitions and package.json from web/package.pkg.json;
# lean: no demo runner, LTO, wasm-opt), the demo page's module into web/pkg-page/,
# and runs the page's end-to-end test (web/e2e.mjs) and the outside consumer's test
# (web/consumer.mjs: npm pack, npm install into examples/js-consumer/, tsc, its page) and the
# bundlers' test (web/bundlers.mjs: the tarball through Vite's build and dev server and webpack 5,
# each with a module Worker).
# Installs what a fresh Debian machine lacks.
#
#   bash web/test.sh             everything
#   bash web/test.sh --no-e2e    only the wasm-bindgen tests
#   bash web/test.sh --page      only build web/pkg/ and web/pkg-page/ (for npm pack or serving the page)
#
# Env: COMPATTN_SEED=N fixes the random tests' seed; WEB_TEST_TIMEOUT (s, default 900) bounds the
# browser test run; CHROMEDRIVER overrides /usr/bin/chromedriver and CHROMIUM /usr/bin/chromium for
# e2e.mjs (the wasm-bindgen runner reads the browser binary from web/webdriver.json).
# Exits non-zero when anything fails; the last line is "web: N passed, M failed".
set -euo pipefail

WEB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$WEB"

RUN_TESTS=1
RUN_E2E=1
for arg in "$@"; do
  case "$arg" in
    --no-e2e) RUN_E2E=0 ;;
    --page) RUN_TESTS=0; RUN_E2E=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$WEB/test.sh" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '\n== %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- system packages (only what is missing) ---------------------------------------------------
need_apt=()
for pkg in chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)

# A Rust toolchain that can build wasm32-unknown-unknown: rustup's with the target installed, or
# Debian's rustc-web, whose std is built from source (rust-web-src) with -Zbuild-std.
CARGO=(cargo)
BUILD_STD=()
if command -v rustup >/dev/null 2>&1 \
  && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "toolchain: rustup's, with wasm32-unknown-unknown installed"
else
  for pkg in rustc-web cargo-web rust-web-src rust-web-llvm lld-22; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
  CARGO=(/usr/bin/cargo)
  BUILD_STD=(-Zbuild-std=std,panic_abort)
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  echo "toolchain: Debian's rustc-web with -Zbuild-std"
fi

if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi
[ -z "${RUSTC:-}" ] || echo "$($RUSTC --version), $("${CARGO[@]}" --version)"

# --- wasm-bindgen-cli, the version Cargo.lock pins --------------------------------------------
WB_VERSION="$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
[ -n "$WB_VERSION" ] || { echo "no wasm-bindgen in web/Cargo.lock" >&2; exit 1; }
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ] \
  || ! command -v wasm-bindgen-test-runner >/dev/null 2>&1; then
  log "cargo install wasm-bindgen-cli --version $WB_VERSION"
  # Native build: use the host cargo/rustc, not the wasm toolchain settings.
  env -u RUSTC -u RUSTC_BOOTSTRAP cargo install wasm-bindgen-cli --version "$WB_VERSION" --locked \
    || env -u RUSTC -u RUSTC_BOOTSTRAP cargo install wasm-bindgen-cli --version "$WB_VERSION" --force
fi
echo "$(wasm-bindgen --version), $(wasm-bindgen-test-runner --version 2>/dev/null || true)"

# --- playwright-core (never a browser download) ------------------------------------------------
if [ "$RUN_E2E" -eq 1 ] && [ ! -f node_modules/playwright-core/package.json ]; then
  log "npm ci (playwright-core)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi

TARGET=wasm32-unknown-unknown
# One profile for the tests and the page, so dependencies are built once.
PROFILE=release
passed=0
failed=0

# --- wasm-bindgen tests in headless Chromium --------------------------------------------------
if [ "$RUN_TESTS" -eq 1 ]; then
  log "wasm-bindgen tests (web/tests/web.rs) in headless Chromium"
  export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
  export WASM_BINDGEN_TEST_TIMEOUT="${WEB_TEST_TIMEOUT:-900}"
  mkdir -p "$WEB/target"
  test_log="$WEB/target/web-test.log"
  set +e
  "${CARGO[@]}" test --profile "$PROFILE" --target "$TARGET" "${BUILD_STD[@]}" --test web 2>&1 | tee "$test_log"
  status=${PIPESTATUS[0]}
  set -e
  result="$(grep -E '^test result: ' "$test_log" | tail -1 || true)"
  if [ -n "$result" ]; then
    n_pass=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$result")
    n_fail=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$result")
    passed=$((passed + n_pass))
    failed=$((failed + n_fail))
  fi
  if [ "$status" -ne 0 ] && { [ -z "$result" ] || [ "${n_fail:-0}" -eq 0 ]; }; then
    failed=$((failed + 1)) # the build or the runner failed before reporting
  fi
  echo "browser tests: ${result:-no result line (status $status)}"
fi

# The package's entry, index.js and index.d.ts in $1: the wasm-bindgen module and the
# CompattnError class of web/js/errors.js, which wasm-bindgen copies under snippets/ (a path with
# a hash in it; the entry re-exports that very module, so `instanceof` holds).
write_entry() {
  local dir="$1" snippet
  snippet="$(cd "$dir" && find snippets -name errors.js | head -1)"
  if [ -z "$snippet" ]; then
    echo "no snippets/**/errors.js in web/$dir" >&2
    exit 1
  fi
  cat > "$dir/index.js" <<EOF
// The package's entry (written by web/test.sh): the layer's API and its error class.
export * from './compattn_web.js';
export { default } from './compattn_web.js';
export { CompattnError } from './$snippet';
EOF
  cat > "$dir/index.d.ts" <<'EOF'
/// <reference types="@webgpu/types" />
export * from './compattn_web';
export { default } from './compattn_web';
import type { CompattnErrorCode } from './compattn_web';
/** What every failing call of the package throws: an `Error` with a stable `code` and the
 *  crate's message (web/README.md lists the codes). */
export declare class CompattnError extends Error {
  readonly name: 'CompattnError';
  readonly code: CompattnErrorCode;
  constructor(code: CompattnErrorCode, message: string);
}
EOF
}

# --- the demo page's module and the npm package ----------------------------------------------
if [ "$RUN_E2E" -eq 1 ] || [ "$RUN_TESTS" -eq 0 ]; then
  # The page (app.js, e2e.mjs): the tests' profile with the `page` feature (Session: the f64
  # reference and random problems), into web/pkg-page/.
  log "building the page's module into web/pkg-page/"
  "${CARGO[@]}" build --lib --profile "$PROFILE" --target "$TARGET" "${BUILD_STD[@]}"
  wasm-bindgen --target web --out-dir pkg-page "target/$TARGET/$PROFILE/compattn_web.wasm"
  # The npm package, lean: no `page` feature, the `npm` profile (LTO, one codegen unit, opt-level
  # s), no name or producers section, then binaryen's wasm-opt -Oz (web/package.json pins it).
  log "building the npm package into web/pkg/"
  if [ ! -x node_modules/.bin/wasm-opt ]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
  fi
  "${CARGO[@]}" build --lib --profile npm --no-default-features --target "$TARGET" "${BUILD_STD[@]}"
  wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir pkg \
    "target/$TARGET/npm/compattn_web.wasm"
  node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals \
    pkg/compattn_web_bg.wasm -o pkg/compattn_web_bg.wasm
  write_entry pkg
  write_entry pkg-page
  wasm_bytes="$(stat -c %s pkg/compattn_web_bg.wasm)"
  echo "npm package wasm: $wasm_bytes bytes ($(gzip -9 -c pkg/compattn_web_bg.wasm | wc -c) gzipped)"
  if [ "$wasm_bytes" -gt 1000000 ]; then
    echo "web/pkg/compattn_web_bg.wasm is $wasm_bytes bytes, over the 1 000 000 the package allows" >&2
    exit 1
  fi
  # The npm package's manifest; its version must be the crate's.
  crate_version="$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)"
  pkg_version="$(node -p 'require("./package.pkg.json").version')"
  if [ "$crate_version" != "$pkg_version" ]; then
    echo "web/package.pkg.json has version $pkg_version, web/Cargo.toml $crate_version" >&2
    exit 1
  fi
  cp package.pkg.json pkg/package.json
  cp README.md pkg/README.md
  # The project's license goes into the package once the repository has one (npm packs a
  # LICENSE file whatever `files` says). There is none yet: choosing it is the owners' call.
  for license in ../LICENSE*; do
    if [ -f "$license" ]; then cp "$license" pkg/; fi
  done
  ls -l pkg
fi

# Runs a node script that ends with "<name>: N passed, M failed" and counts it.
run_node_test() {
  local name="$1" script="$2"
  set +e
  node "$script" 2>&1 | tee "target/$name.log"
  local status=${PIPESTATUS[0]}
  set -e
  # (PIPESTATUS is read above, before `set -e` resets it.)
  local result
  result="$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed$" "target/$name.log" | tail -1 || true)"
  if [ -n "$result" ]; then
    passed=$((passed + $(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$result")))
    failed=$((failed + $(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$result")))
  fi
  if [ "$status" -ne 0 ] && { [ -z "$result" ] || grep -q ' 0 failed$' <<<"$result"; }; then
    failed=$((failed + 1))
  fi
}

if [ "$RUN_E2E" -eq 1 ]; then
  log "end-to-end test of the page (web/e2e.mjs)"
  run_node_test e2e e2e.mjs
  log "the packed package in an outside consumer (web/consumer.mjs, examples/js-consumer/)"
  run_node_test consumer consumer.mjs
  log "the packed package through Vite (build, dev server), webpack 5 and module Workers (web/bundlers.mjs)"
  run_node_test bundlers bundlers.mjs
fi

echo
echo "web: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
