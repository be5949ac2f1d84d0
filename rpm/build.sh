#!/bin/bash
# Builds both RPMs offline from the release binaries and the source tree:
#   bash rpm/build.sh [OUTDIR]   (default: target/rpm)
# Needs rpmbuild (Debian/Fedora package `rpm`/`rpm-build`) and a release
# build (`cargo build --release`; done here if missing).
OUT=$(realpath -m "${1:-$(dirname "${BASH_SOURCE[0]}")/../target/rpm}")
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
need_release_bins
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
src=$top/SOURCES
mkdir -p "$src" "$OUT"
cp target/release/sparsebak target/release/sparsebak-receiver "$src/"
cp qubes-rpc/sparsebak.Backup qubes-rpc/sparsebak.Restore qubes-rpc/sparsebak.Admin \
   qubes-rpc/sparsebak.SshRelay qubes-rpc/policy.d/30-sparsebak.policy \
   qubes-rpc/post-install.d/30-sparsebak-features.sh "$src/"
tar -C qubes-rpc/rpc-config -cf "$src/rpc-config.tar" .
# Man pages and completions, from the binaries' own clap definitions.
target/release/sparsebak-docgen "$top/docs"
tar -C "$top/docs" -cf "$src/docs.tar" .
cp dom0-agent/sparsebak.toml.example vm-receiver/receiver.toml.example \
   dom0-agent/systemd/sparsebak-backup.service dom0-agent/systemd/sparsebak-backup.timer \
   README.md rpm/rpm-check.sh "$src/"
for spec in rpm/sparsebak-dom0.spec rpm/sparsebak-vm.spec; do
    log=$top/$(basename "$spec").log
    if ! rpmbuild -bb \
        --define "_topdir $top" \
        --define "_sourcedir $src" \
        --define "_rpmdir $OUT" \
        --define "_build_id_links none" \
        --define "sb_version $version" \
        "$spec" >"$log" 2>&1; then
        cat "$log" >&2
        echo "rpmbuild of $spec failed" >&2
        exit 1
    fi
    # The %check result, so callers see it ran.
    echo "$(basename "$spec"): $(grep '^rpm-check:' "$log")"
done
find "$OUT" -name '*.rpm' -newer "$src/sparsebak" -print
