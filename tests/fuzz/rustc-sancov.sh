#!/bin/sh
# RUSTC_WRAPPER for the fuzz build (run.sh): cargo runs it as `rustc-sancov.sh rustc ARGS...`.
# It adds libFuzzer's coverage instrumentation (SanitizerCoverage, with comparison tracing) to
# the crates whose code the targets exercise, and only to them: the rest of the dependency tree
# (libp2p, QUIC, TLS...) builds faster without it, and libFuzzer scans fewer counters after each
# run. Build scripts and proc macros (built for the host, without --target) are left alone.
# Every flag is a stable -C flag: no nightly toolchain is needed.
rustc="$1"
shift
case "$CARGO_PKG_NAME" in
p2pdns | p2pdns-fuzz | hickory-proto | hickory-server | hickory-net | serde_json)
    case " $* " in
    *" --target "*)
        exec "$rustc" "$@" --cfg fuzzing \
            -Cpasses=sancov-module \
            -Cllvm-args=-sanitizer-coverage-level=4 \
            -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
            -Cllvm-args=-sanitizer-coverage-pc-table \
            -Cllvm-args=-sanitizer-coverage-trace-compares
        ;;
    esac
    ;;
esac
exec "$rustc" "$@"
