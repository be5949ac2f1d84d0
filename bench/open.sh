#!/bin/bash
# Opened sessions (`sparsebak open`), against restore of the same session:
#
# - sequential read of the whole opened volume, cold (a fresh mount, the
#   archive disk's cache dropped), against restore and verify of the same
#   session, interleaved, best of ROUNDS;
# - latency of random 4 KiB reads (median and 99th percentile), cold;
# - time from the command to a mounted filesystem for a 16 GiB ext4
#   volume: open, losetup -r, mount -o ro.
#
#   bash bench/open.sh               # 1 GiB image
#   SIZE_MIB=256 ROUNDS=2 bash bench/open.sh
#
# A benchmark, not a test: it asserts nothing. Needs root (loop devices,
# FUSE). The archive is on an XFS of its own on a loop device with direct
# I/O to its backing file (a disk, as in bench/run.sh), so cold reads are
# real disk reads.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
[ "$(id -u)" = 0 ] || { echo "run as root (loop devices, FUSE)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "no /dev/fuse: modprobe fuse" >&2; exit 1; }
need_cargo
need_pkgs mkfs.xfs xfsprogs mkfs.ext4 e2fsprogs
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-open.XXXXXX")
ARCH=$W/archfs MNT=$W/mnt RO=$W/ro VOLS=$W/vols
mkdir -p "$ARCH" "$MNT" "$RO" "$VOLS"
cleanup() {
    umount "$RO" 2>/dev/null || true
    [ -n "${FLOOP:-}" ] && losetup -d "$FLOOP" 2>/dev/null
    "${SB[@]}" close --lazy "$MNT" >/dev/null 2>&1 || true
    umount "$ARCH" 2>/dev/null || true
    [ -n "${ALOOP:-}" ] && losetup -d "$ALOOP" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
truncate -s $((SIZE_MIB * 2 + 4096))M "$W/arch.img"
ALOOP=$(losetup --direct-io=on -f --show "$W/arch.img")
mkfs.xfs -q "$ALOOP"; mount "$ALOOP" "$ARCH"
printf 'bench passphrase\n' > "$W/passphrase"
SB=("$BIN/sparsebak" --dest "file://$ARCH/archive" --meta-dir "$W/meta" --local "$VOLS" --passphrase-file "$W/passphrase")
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null; awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
col_min() { awk -v c="$1" 'NR == 1 || $c < m { m = $c } END { printf "%.3f", m }' "$2"; }

"${SB[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
"$BIN/gen-image" create "$VOLS/img" "$SIZE_MIB" 1 >/dev/null
"${SB[@]}" backup img >/dev/null

R=$W/restored
sb_restore() { rm -f "$R"; cold; timed "${SB[@]}" restore img --save-to "$R"; rm -f "$R"; }
sb_verify() { cold; timed "${SB[@]}" verify img; }
open_seq() {
    "${SB[@]}" open img "$MNT" >/dev/null; cold
    timed dd if="$MNT/img" of=/dev/null bs=4M status=none
    "${SB[@]}" close "$MNT" >/dev/null
}
open_rand() {
    "${SB[@]}" open img "$MNT" >/dev/null; cold
    "$BIN/bench-randread" "$MNT/img" 2000 "$1"
    "${SB[@]}" close "$MNT" >/dev/null
}
SEQ=$W/seq; : >"$SEQ"
RND=$W/rnd; : >"$RND"
for r in $(seq "$ROUNDS"); do
    echo "$(open_seq) $(sb_restore) $(sb_verify)" >>"$SEQ"
    open_rand "$r" >>"$RND"
done
T_OSEQ=$(col_min 1 "$SEQ") T_REST=$(col_min 2 "$SEQ") T_VER=$(col_min 3 "$SEQ")
LAT_MED=$(col_min 1 "$RND") LAT_P99=$(col_min 2 "$RND")

# A 16 GiB ext4 volume holding a copy of the image as a file.
truncate -s 16G "$VOLS/fs16"
mkfs.ext4 -q -F "$VOLS/fs16"
mkdir -p "$W/rw"; mount -o loop "$VOLS/fs16" "$W/rw"
cp "$VOLS/img" "$W/rw/data.bin"; umount "$W/rw"
"${SB[@]}" backup fs16 >/dev/null
mount_fs() {
    "${SB[@]}" open fs16 "$MNT" >/dev/null
    FLOOP=$(losetup -r -f --show "$MNT/fs16")
    mount -o ro,noload "$FLOOP" "$RO"
}
unmount_fs() {
    umount "$RO"; losetup -d "$FLOOP"; FLOOP=
    "${SB[@]}" close "$MNT" >/dev/null
}
MT=$W/mt; : >"$MT"
for r in $(seq "$ROUNDS"); do
    cold
    timed mount_fs >>"$MT"; echo >>"$MT"
    ls "$RO" >/dev/null
    unmount_fs
done
T_MOUNT=$(col_min 1 "$MT")
# Reading the file back through it, cold: a whole-stack figure.
mount_fs; cold
T_FILE=$(timed cat "$RO/data.bin")
unmount_fs

mibs() { awk -v s="$SIZE_MIB" -v t="$1" 'BEGIN { printf "%.0f", s / t }'; }
printf '\n== opened sessions (%s MiB image, %s cores, best of %s, archive on its own disk)\n' "$SIZE_MIB" "$(nproc)" "$ROUNDS"
printf '%-56s %9s %8s\n' "what" "seconds" "MiB/s"
printf '%-56s %9s %8s\n' "open: sequential read of the volume, cold" "$T_OSEQ" "$(mibs "$T_OSEQ")" \
    "restore of the same session (ends with fsync)" "$T_REST" "$(mibs "$T_REST")" \
    "verify of the same session (no writes)" "$T_VER" "$(mibs "$T_VER")" \
    "open 16 GiB ext4: command to a mounted filesystem" "$T_MOUNT" "" \
    "cat a ${SIZE_MIB} MiB file from that filesystem, cold" "$T_FILE" "$(mibs "$T_FILE")"
printf '\n%-56s %9s\n' "random 4 KiB reads of an opened session, cold" "ms"
printf '%-56s %9s\n' "median" "$LAT_MED" "99th percentile" "$LAT_P99"
printf '\n%-56s %9s\n' "ratio" "value"
printf '%-56s %9s\n' "open sequential / restore" "$(ratio "$T_OSEQ" "$T_REST")" \
    "open sequential / verify" "$(ratio "$T_OSEQ" "$T_VER")"
