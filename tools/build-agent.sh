#!/usr/bin/env bash
# Builds the guest agent as a static binary, to be copied into guest images, and checks that
# it really is static (no ELF interpreter): the guest's libc, if it has one at all, may not be
# the host's.
#
#   tools/build-agent.sh [--profile PROFILE]      (default: release)
#
# Prints the path of the binary as its last line of output. Honours CARGO_TARGET_DIR.
#
# It builds `banger-guest-agent` of the lean `banger-agent` package (src/agent), alone, so none
# of the daemon's dependencies (redb, rtnetlink, clap, tokio's fs and time) is compiled or
# linked; it is the same program as the `banger-agent` that `cargo install` installs. Whoever
# puts it in an image names it as the image needs (banger-agent, or init).
#
# `+crt-static` links glibc statically. The explicit `--target` matters: with it, RUSTFLAGS
# apply only to the target's crates and not to build scripts and proc macros, which must stay
# ordinary dynamic host binaries (a static proc macro cannot be loaded by rustc).
set -euo pipefail

profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-agent.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir="$profile" ;;
esac

# Debug info is stripped (symbols stay, for backtraces): it would make the binary that goes
# into every image ten times larger.
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static -C strip=debuginfo" \
    cargo build --manifest-path "$root/Cargo.toml" --package banger-agent \
    --bin banger-guest-agent --target "$target" --profile "$profile" >&2

binary="$target_dir/$target/$profile_dir/banger-guest-agent"
if [ ! -x "$binary" ]; then
    echo "build-agent.sh: cargo finished but $binary is missing" >&2
    exit 1
fi

# A dynamically linked ELF names its loader in a PT_INTERP program header.
if command -v readelf >/dev/null 2>&1; then
    if readelf -lW "$binary" | grep -q 'INTERP'; then
        echo "build-agent.sh: $binary has an ELF interpreter: it is not static" >&2
        readelf -lW "$binary" | grep -A1 INTERP >&2
        exit 1
    fi
elif command -v file >/dev/null 2>&1; then
    if ! file -L "$binary" | grep -Eq 'statically linked|static-pie linked'; then
        echo "build-agent.sh: $binary is not statically linked: $(file -L "$binary")" >&2
        exit 1
    fi
else
    echo "build-agent.sh: neither readelf nor file is installed; cannot check $binary" >&2
    exit 1
fi

echo "build-agent.sh: $binary is static" >&2
echo "$binary"
