#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the tools the lab tests drive
# (dig, kdig, nsd, ip, curl, chromium, python3, systemd-analyze, debootstrap and
# systemd-nspawn, dpkg with cargo-deb), checks
# formatting, lints and docs, runs the unit and integration tests (what plain `cargo test` runs,
# as any user), then the lab tests (tests/lab: root, network namespaces, packaging).
#
#   tests/run.sh            # as root: the lab tests need it and fail (not skip) without it
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bind9-dnsutils knot-dnsutils nsd iproute2 curl chromium python3 systemd procps binutils nftables stun-client miniupnpd-nftables debootstrap systemd-container)
commands=(dig kdig nsd ip curl chromium python3 systemd-analyze kill strip nft stun miniupnpd debootstrap systemd-nspawn)
missing=()
for i in "${!commands[@]}"; do
    command -v "${commands[$i]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${commands[$i]}" ] || missing+=("${packages[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian nsd package starts a system nsd on port 53; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nsd 2>/dev/null; then
    systemctl stop nsd || true
fi

# The packaging test builds the .deb with cargo-deb (about 3 minutes to install, once).
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb"
    cargo install cargo-deb --locked --version 3.8.0
fi

cargo fmt --check
cargo clippy --locked --all-targets --all-features -- -D warnings
cargo clippy --locked --test lab -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps
cargo test --locked
# The live systemd test (tests/lab/systemd_live.rs) installs the release binary in a booted
# Debian container (debootstrap's root cached in /var/cache/p2pdns-test, about 2 min to build).
cargo build --locked --release
cargo test --locked --test lab
# The foreign implementation (tests/foreign/README.md: JavaScript on js-libp2p, written from
# docs/PROTOCOL.md only) checks the protocol vectors and works with the daemon built above.
tests/foreign/run.sh
# Fuzzing (tests/fuzz/README.md): builds the libFuzzer targets (about 5 minutes) and runs each
# for 10 s; fails on any crash. Longer runs: tests/fuzz/run.sh 600.
tests/fuzz/run.sh 10
