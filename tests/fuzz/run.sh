#!/usr/bin/env bash
# Builds the fuzz targets (tests/fuzz/README.md) with libFuzzer on the stable toolchain and runs
# each for a bounded time; prints executions and coverage per target; exits non-zero if any
# target crashed (a panic, a failed check, a hang, an out-of-memory), naming the file that
# keeps the input.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   # default: 15 s each, every target
#
# Build directory: $P2PDNS_FUZZ_TARGET_DIR, else target/fuzz of the repository. New inputs go
# to a scratch copy of the corpus (tests/fuzz/corpus stays as committed); crashing inputs to
# $P2PDNS_FUZZ_ARTIFACTS, else <build directory>/artifacts/<target>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-15}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dns_query upstream_answer name_record stun_message control_line zone_text)

export CARGO_TARGET_DIR="${P2PDNS_FUZZ_TARGET_DIR:-$here/../../target/fuzz}"
artifacts="${P2PDNS_FUZZ_ARTIFACTS:-$CARGO_TARGET_DIR/artifacts}"
host="$(rustc -vV | sed -n 's/^host: //p')"
# --target: the coverage flags reach the target crates only, never build scripts or proc
# macros; the wrapper adds them to the crates the targets exercise (see rustc-sancov.sh).
started=$SECONDS
RUSTC_WRAPPER="$here/rustc-sancov.sh" cargo build --release --locked --quiet \
    --manifest-path "$here/Cargo.toml" --target "$host" --bins
echo "fuzz targets built in $((SECONDS - started)) s"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
printf '%-16s %12s %9s %8s %9s %7s\n' target executions exec/s edges features corpus
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "$artifacts/$target"
    options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/$target/")
    [ -f "$here/dict/$target.dict" ] && options+=(-dict="$here/dict/$target.dict")
    log="$scratch/$target.log"
    status=0
    "$CARGO_TARGET_DIR/$host/release/$target" "${options[@]}" \
        "$scratch/$target" "$here/corpus/$target" >"$log" 2>&1 || status=$?
    final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    # The last status line: "#N DONE cov: E ft: F corp: C/..." (or the last pulse before a crash).
    line="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)"
    field() { sed -n "s/.* $1: \([0-9]*\).*/\1/p" <<<"$line"; }
    printf '%-16s %12s %9s %8s %9s %7s\n' "$target" "$(final_stat number_of_executed_units)" \
        "$(final_stat average_exec_per_sec)" "$(field cov)" "$(field ft)" "$(field corp)"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "--- $target failed (exit $status):"
        grep -E -A3 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -20 || tail -20 "$log"
        grep -E "Test unit written to|written to" "$log" | sed 's/^/    /' || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs kept under $artifacts)"
    echo "replay one: $CARGO_TARGET_DIR/$host/release/TARGET INPUT_FILE"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, no crash"
