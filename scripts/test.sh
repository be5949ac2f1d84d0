#!/bin/bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Installs what the tests need (xfsprogs, btrfs-progs, thin tools, strace for
# fault injection, openssh-server for the ssh transport, rpm for rpmbuild,
# lintian and rpmlint for the packages' own linters,
# qemu for the dm-thin VM; e2fsprogs for the ext4 images that `open` is
# tested with, through the kernel's FUSE), checks format and lints, builds
# once in release mode, runs every test, then every fuzz target for a
# bounded time. Tests that mount loop filesystems need root and fail with a
# clear message without it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_cargo
need_pkgs mkfs.xfs xfsprogs mkfs.btrfs btrfs-progs thin_restore thin-provisioning-tools \
    strace strace mkfs.ext4 e2fsprogs /usr/sbin/sshd openssh-server ssh openssh-client \
    rpmbuild rpm cpio cpio dpkg-deb dpkg-dev lintian lintian rpmlint rpmlint file file
if ! command -v qemu-system-x86_64 >/dev/null; then
    # qemu-system-x86 and qemu-utils must come from the same release: a newer
    # preinstalled qemu-utils is brought to qemu-system-x86's version.
    echo "== installing qemu-system-x86 (for the dm-thin VM test)"
    as_root apt-get update -q >/dev/null
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
        "qemu-system-x86=$v" "qemu-utils=$v" >/dev/null
fi
if [ "$(id -u)" = 0 ]; then
    modprobe loop 2>/dev/null || true
    [ -e /dev/loop-control ] || echo "WARNING: no /dev/loop-control: the XFS/Btrfs tests will fail" >&2
    modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || echo "WARNING: no /dev/fuse: the open/close tests will fail" >&2
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "== build (release)"
cargo build -q --release --workspace --all-targets
echo "== tests"
cargo test --release --workspace 2>&1
echo "== fuzzing (${FUZZ_SECONDS:-30} s per target)"
bash scripts/fuzz.sh
