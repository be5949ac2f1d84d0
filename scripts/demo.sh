#!/bin/bash
# The main job, end to end, on a sample volume: builds sparsebak, makes a
# 256 MiB sample image, backs it up to a local archive through the real
# receiver process, rewrites 1 % of it, backs up again, restores and
# verifies both sessions, compares them byte for byte with the volume as it
# was, and prints the figures. No Qubes or LVM needed.
#
# As root (or with sudo) the image lives on a loop-mounted XFS, so backups
# use reflink snapshots and the incremental reads only what changed;
# otherwise a plain directory is used and the incremental re-reads and
# hash-compares the whole image. SIZE_MIB=N changes the image size.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIZE_MIB=${SIZE_MIB:-256}
need_cargo
echo "== building (release)"
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${TMPDIR:-/tmp}/sparsebak-demo.XXXXXX")
MNT=
cleanup() {
    [ -n "$MNT" ] && as_root umount "$MNT" 2>/dev/null || true
    rm -rf "$W" 2>/dev/null || as_root rm -rf "$W"
}
trap cleanup EXIT
VOLS=$W/vols
if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    need_pkgs mkfs.xfs xfsprogs
    truncate -s $((SIZE_MIB * 3 + 300))M "$W/xfs.img"
    mkfs.xfs -q -m reflink=1 "$W/xfs.img"
    mkdir -p "$VOLS"
    as_root mount -o loop "$W/xfs.img" "$VOLS" && MNT=$VOLS
    [ "$(id -u)" = 0 ] || as_root chown "$(id -u)" "$VOLS"
    echo "== volumes on a loop-mounted XFS (reflink snapshots)"
else
    mkdir -p "$VOLS"
    echo "== volumes in a plain directory (not root: no loop XFS; incrementals hash-compare)"
fi
# Interactively, arch-init asks for the passphrase twice; a script gives a file.
printf 'demo passphrase: keep yours somewhere safe\n' > "$W/passphrase"
SB=("$BIN/sparsebak" --dest "file://$W/archive" --meta-dir "$W/meta" --local "$VOLS"
    --passphrase-file "$W/passphrase")
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

echo "== making a ${SIZE_MIB} MiB sample image (half random, half text per block)"
"$BIN/gen-image" create "$VOLS/sample.img" "$SIZE_MIB" 1
cp "$VOLS/sample.img" "$W/expect-1.img"
"${SB[@]}" arch-init
t=$(now); "${SB[@]}" backup sample.img; T_FULL=$(secs "$t" "$(now)")
"$BIN/gen-image" rewrite "$VOLS/sample.img" 1 2
cp "$VOLS/sample.img" "$W/expect-2.img"
t=$(now); "${SB[@]}" backup sample.img; T_INC=$(secs "$t" "$(now)")
"${SB[@]}" list sample.img
mapfile -t S < <("${SB[@]}" list sample.img --json | grep -o '"name":"S_[0-9-]*"' | cut -d'"' -f4)
[ ${#S[@]} = 2 ] || { echo "expected 2 sessions, got ${#S[@]}" >&2; exit 1; }
t=$(now); "${SB[@]}" restore sample.img --session "${S[0]}" --save-to "$W/restored-1.img"; T_R1=$(secs "$t" "$(now)")
t=$(now); "${SB[@]}" restore sample.img --session "${S[1]}" --save-to "$W/restored-2.img"; T_R2=$(secs "$t" "$(now)")
t=$(now); "${SB[@]}" verify sample.img --session "${S[0]}"; T_V1=$(secs "$t" "$(now)")
t=$(now); "${SB[@]}" verify sample.img --session "${S[1]}"; T_V2=$(secs "$t" "$(now)")
cmp "$W/restored-1.img" "$W/expect-1.img"
cmp "$W/restored-2.img" "$W/expect-2.img"
echo "== disaster drill: dom0's records are lost; recover from the archive and the passphrase"
rm -rf "$W/meta"
t=$(now); "${SB[@]}" arch-import; T_IMP=$(secs "$t" "$(now)")
"${SB[@]}" restore sample.img --save-to "$W/restored-3.img"
cmp "$W/restored-3.img" "$W/expect-2.img"
ARCH=$(du -sb "$W/archive" | cut -f1)
echo
echo "== sparsebak demo: ${SIZE_MIB} MiB image, $(nproc) cores"
printf '%-34s %8s s\n' "full backup" "$T_FULL" "incremental backup (1 % rewritten)" "$T_INC" \
    "restore session 1" "$T_R1" "restore session 2" "$T_R2" "verify session 1" "$T_V1" "verify session 2" "$T_V2" \
    "arch-import (passphrase only)" "$T_IMP"
printf '%-34s %8s MiB\n' "archive size (2 sessions)" "$((ARCH / 1048576))"
echo "both sessions restored byte-identical to the volume as it was, and again after recovery: OK"
