#!/bin/bash
# Side by side with Wyng, the closest peer (Python; thin LVM and reflink
# files; encrypted by default): full backup, 1 % incremental, restore,
# verify and prune of the same image on the same Btrfs, and arch-check
# against the disk's own read speed.
#
#   bash bench/wyng.sh                       # 1 GiB image
#   SIZE_MIB=512 ROUNDS=2 WYNG=/path/to/wyng bash bench/wyng.sh
#
# Wyng's script is looked for beside the checkout (../shared/peers/wyng) or
# in $WYNG; without it this prints why and does nothing. Both tools work
# on one Btrfs on a loop device with direct I/O (a disk of its own, not
# cached twice): the image in a subvolume (Wyng's reflink path needs one),
# both archives beside it, both encrypted. Caches are dropped before each
# step; each figure is the best of ROUNDS, the two tools interleaved.
# Restores end with sync for both. A benchmark, not a test: it asserts
# nothing. Needs root.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
WYNG=${WYNG:-$ROOT/../shared/peers/wyng}
[ "$(id -u)" = 0 ] || { echo "run as root (loop Btrfs, drop_caches)" >&2; exit 1; }
if [ ! -f "$WYNG" ]; then
    echo "== side by side with Wyng: skipped, no Wyng script at $WYNG (set WYNG=/path/to/wyng)"
    exit 0
fi
need_cargo
need_pkgs mkfs.btrfs btrfs-progs gawk gawk /usr/sbin/lvm lvm2
/usr/bin/python3 -c 'import zstd, Cryptodome' 2>/dev/null || {
    echo "== installing python3-zstd python3-pycryptodome"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3-zstd python3-pycryptodome >/dev/null
}
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-wyng.XXXXXX")
MNT=$W/btrfs
cleanup() {
    umount "$MNT" 2>/dev/null || true
    [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
truncate -s $((SIZE_MIB * 8 + 4096))M "$W/btrfs.img"
LOOP=$(losetup --direct-io=on -f --show "$W/btrfs.img")
mkfs.btrfs -q "$LOOP" >/dev/null; mkdir -p "$MNT"; mount "$LOOP" "$MNT"
btrfs -q subvolume create "$MNT/vols"
mkdir -p "$MNT/r" /var/lib/wyng "$W/wyng-meta"
printf 'bench passphrase\n' > "$W/passphrase"
SB=("$BIN/sparsebak" --dest "file://$MNT/sbk" --meta-dir "$W/sbk-meta" --local "$MNT/vols" --passphrase-file "$W/passphrase")
WY=(/usr/bin/python3 "$WYNG" --dest "file:$MNT/wyng" --meta-dir "$W/wyng-meta" --local "$MNT/vols" -u --passcmd 'echo bench-passphrase')
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; echo "bench: $* failed" >&2; exit 1; }
    awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
best() { sort -g | head -1; }
spread() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f-%.2f", v[1], v[NR] }'; }

echo "== side by side with Wyng: ${SIZE_MIB} MiB image on Btrfs, $(nproc) cores, best of $ROUNDS"
"$BIN/gen-image" create "$MNT/vols/img" "$SIZE_MIB" 1
sb_full() {
    rm -rf "$MNT/sbk" "$W/sbk-meta" "$MNT/vols/.sparsebak"
    "${SB[@]}" arch-init --chunk-size 128K --compression zstd:3 >/dev/null
    cold; timed "${SB[@]}" backup img
}
wy_full() {
    rm -rf "$MNT/wyng" "$W/wyng-meta"/* /var/lib/wyng/*
    find "$MNT/vols" -maxdepth 1 -name '*.wyng*' -exec rm -rf {} + 2>/dev/null || true
    "${WY[@]}" arch-init >/dev/null 2>&1; "${WY[@]}" add img >/dev/null 2>&1
    cold; timed "${WY[@]}" send img
}
F=$W/full; : > "$F"
for r in $(seq "$ROUNDS"); do echo "$(sb_full) $(wy_full)" >> "$F"; done
# Incrementals: 1 % of the image rewritten (64 KiB blocks), then each tool.
I=$W/inc; : > "$I"
for r in $(seq "$ROUNDS"); do
    "$BIN/gen-image" rewrite "$MNT/vols/img" 1 $((r + 1)) >/dev/null
    sync; echo "$(cold; timed "${SB[@]}" backup img) $(cold; timed "${WY[@]}" send img)" >> "$I"
done
# Restores (with sync) and verifies of the newest session, cold.
V=$W/rv; : > "$V"
for r in $(seq "$ROUNDS"); do
    rm -f "$MNT/r/"*; cold; a=$(timed sh -c "$(printf '%q ' "${SB[@]}") restore img --save-to $MNT/r/sbk.img && sync")
    rm -f "$MNT/r/"*; cold; b=$(timed sh -c "$(printf '%q ' "${WY[@]}") receive img --save-to $MNT/r/wyng.img && sync")
    cold; c=$(timed "${SB[@]}" verify img)
    cold; d=$(timed "${WY[@]}" verify img)
    echo "$a $b $c $d" >> "$V"
done
rm -f "$MNT/r/"*
# arch-check, and what reading the same chunk files costs this disk.
cold; T_CHECK=$(timed "${SB[@]}" arch-check)
cold; T_READ=$(timed sh -c "find '$MNT/sbk' -type f -print0 | xargs -0 cat > /dev/null")
ARCH_MIB=$(du -sm "$MNT/sbk" | cut -f1)
# This disk's own time for a step's reads and writes, both at once: a full
# backup reads the image and writes the archive's bytes; a restore reads
# the chunk files and writes the image (direct, then fsync). Best of ROUNDS.
both() { # files-to-read MiB-to-write
    rm -f "$MNT/r/dd"; cold
    timed sh -c "find $1 -type f -print0 | xargs -0 cat > /dev/null & dd if=/dev/zero of='$MNT/r/dd' bs=1M count=$2 oflag=direct conv=fsync status=none; wait"
}
D=$W/disk; : > "$D"
for r in $(seq "$ROUNDS"); do
    echo "$(both "'$MNT/vols/img'" "$ARCH_MIB") $(both "'$MNT/sbk'" "$SIZE_MIB")" >> "$D"
done
rm -f "$MNT/r/dd"
# Prune of the full session (into the first incremental): once each.
first_wy=$("${WY[@]}" list img 2>/dev/null | grep -oE '[0-9]{8}-[0-9]{6}' | head -1)
cold; T_PRUNE=$(timed "${SB[@]}" prune img --session S_000000000001)
cold; T_WPRUNE=$(timed "${WY[@]}" prune img --session="$first_wy")

col() { awk -v c="$2" '{ print $c }' "$1"; }
row() { # label file column-of-sparsebak column-of-wyng target
    local a b; a=$(col "$2" "$3" | best) b=$(col "$2" "$4" | best)
    printf '%-34s %9s %9s %7s  %-8s  %s / %s\n' "$1" "$a" "$b" "$(ratio "$b" "$a")" "$5" \
        "$(col "$2" "$3" | spread)" "$(col "$2" "$4" | spread)"
}
printf '\n%-34s %9s %9s %7s  %-8s  %s\n' "${SIZE_MIB} MiB, Btrfs, encrypted" sparsebak wyng "wyng/sb" target "spread (s): sparsebak / wyng"
row "full backup" "$F" 1 2 ">= 5"
row "incremental (1 %)" "$I" 1 2 ">= 15"
row "restore, then sync" "$V" 1 2 ">= 3"
row "verify" "$V" 3 4 ">= 4"
DISK_F=$(col "$D" 1 | best) DISK_R=$(col "$D" 2 | best)
SB_F=$(col "$F" 1 | best) SB_R=$(col "$V" 1 | best)
printf '%-34s %9s %9s %7s  %-8s\n' "the disk's own: read image + write archive" "$DISK_F" "" "" ""
printf '%-34s %9s %9s %7s  %-8s\n' "  full backup / that" "$(ratio "$SB_F" "$DISK_F")" "" "" "(1 = the disk)"
printf '%-34s %9s %9s %7s  %-8s\n' "the disk's own: read chunks + write image" "$DISK_R" "" "" ""
printf '%-34s %9s %9s %7s  %-8s\n' "  restore / that" "$(ratio "$SB_R" "$DISK_R")" "" "" "<= 1.2 (or 3x wyng)"
printf '%-34s %9s %9s %7s  %-8s  %s\n' "prune of the full session" "$T_PRUNE" "$T_WPRUNE" "$(ratio "$T_WPRUNE" "$T_PRUNE")" ">= 10" "(one run each)"
printf '\n%-44s %9s %s\n' "arch-check (all chunks re-read, CRC)" "$T_CHECK" "s"
printf '%-44s %9s %s\n' "cat of the same ${ARCH_MIB} MiB of chunk files" "$T_READ" "s"
printf '%-44s %9s\n' "arch-check / cat (1 = the disk's speed)" "$(ratio "$T_CHECK" "$T_READ")"
