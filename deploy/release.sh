#!/usr/bin/env bash
# Builds the release `weir` binary: static (musl), stripped (profile.release), from the
# locked dependency graph. The Dockerfile runs this script, and so does CI, which then
# checks that the binary runs and stays small.
#
#   deploy/release.sh [--out PATH]
#
# Installs what the build needs when it is missing: the Rust musl target (rustup) and
# musl-gcc (Debian's musl-tools; aws-lc, the TLS crypto, is C).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=x86_64-unknown-linux-musl
max_bytes=$((20 * 1024 * 1024))
out=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        *) echo "usage: deploy/release.sh [--out PATH]" >&2; exit 2 ;;
    esac
done

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
if ! command -v x86_64-linux-musl-gcc >/dev/null; then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi

cargo build --release --locked -p weir --bin weir --target "$target"

binary="${CARGO_TARGET_DIR:-target}/$target/release/weir"
"$binary" --version
bytes=$(stat -c %s "$binary")
# A static binary has no program interpreter (ld.so) to name.
linking=static
if grep -qa 'ld-linux' "$binary"; then linking=dynamic; fi
echo "release binary: $binary, $bytes bytes ($((bytes / 1024 / 1024)) MiB), $linking"
if [[ $linking != static ]]; then
    echo "the release binary is dynamically linked; it must be static to run FROM scratch" >&2
    exit 1
fi
if ((bytes > max_bytes)); then
    echo "the release binary is $bytes bytes, over the $max_bytes-byte budget" >&2
    exit 1
fi
if [[ -n "$out" ]]; then
    mkdir -p "$(dirname "$out")"
    cp "$binary" "$out"
fi
