#!/bin/bash
# Deduplication, side by side: a template image and two reflink clones of
# it, each clone with 1 % rewritten, backed up to one archive by sparsebak
# (one dedup group), Wyng (`send --dedup`) and borg 1.2 (fixed 256 KiB
# chunks, zstd-3), all on one Btrfs. Prints each archive's size; the time
# of the clones' first backups against reading and hashing them (the
# floor: what a chunk already stored still costs); a full backup of a
# volume with no duplicates, against an older sparsebak when SBK_BEFORE
# names its binary (interleaved); and dom0's peak RSS and the index's
# size on disk with an index of INDEX_ENTRIES chunks (default 16 million).
#
#   bash bench/dedup.sh                      # 512 MiB template
#   SIZE_MIB=256 ROUNDS=2 SBK_BEFORE=/tmp/old/sparsebak bash bench/dedup.sh
#
# Wyng's script is looked for beside the checkout (../shared/peers/wyng) or
# in $WYNG (left out, and said so, without it). A benchmark, not a test: it
# asserts nothing. Needs root.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-512}
ROUNDS=${ROUNDS:-3}
INDEX_ENTRIES=${INDEX_ENTRIES:-16000000}
WYNG=${WYNG:-$ROOT/../shared/peers/wyng}
[ "$(id -u)" = 0 ] || { echo "run as root (loop Btrfs, drop_caches)" >&2; exit 1; }
need_cargo
need_pkgs mkfs.btrfs btrfs-progs borg borgbackup /usr/bin/time time
HAVE_WYNG=1
if [ ! -f "$WYNG" ]; then
    echo "== Wyng left out: no Wyng script at $WYNG (set WYNG=/path/to/wyng)"
    HAVE_WYNG=0
else
    need_pkgs gawk gawk
    /usr/bin/python3 -c 'import zstd, Cryptodome' 2>/dev/null || {
        echo "== installing python3-zstd python3-pycryptodome"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3-zstd python3-pycryptodome >/dev/null
    }
fi
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-dedup.XXXXXX")
MNT=$W/btrfs
cleanup() {
    umount "$MNT" 2>/dev/null || true
    [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
truncate -s $((SIZE_MIB * 12 + 4096))M "$W/btrfs.img"
LOOP=$(losetup --direct-io=on -f --show "$W/btrfs.img")
mkfs.btrfs -q "$LOOP" >/dev/null; mkdir -p "$MNT"; mount "$LOOP" "$MNT"
btrfs -q subvolume create "$MNT/vols"
mkdir -p /var/lib/wyng "$W/wyng-meta"
printf 'bench passphrase\n' > "$W/passphrase"
SB=("$BIN/sparsebak" --dest "file://$MNT/sbk" --meta-dir "$W/sbk-meta" --local "$MNT/vols" --passphrase-file "$W/passphrase")
WY=(/usr/bin/python3 "$WYNG" --dest "file:$MNT/wyng" --meta-dir "$W/wyng-meta" --local "$MNT/vols" -u --passcmd 'echo bench-passphrase')
export BORG_REPO=$MNT/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; echo "bench: $* failed" >&2; exit 1; }
    awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
best() { sort -g | head -1; }
spread() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f-%.2f", v[1], v[NR] }'; }
mib() { du -s --block-size=1 "$1" | awk '{ printf "%.1f", $1 / 1048576 }'; }

echo "== dedup: a ${SIZE_MIB} MiB template and two reflink clones (1 % rewritten each), Btrfs, $(nproc) cores, best of $ROUNDS"
"$BIN/gen-image" create "$MNT/vols/tpl" "$SIZE_MIB" 1
for c in c1 c2; do
    cp --reflink=always "$MNT/vols/tpl" "$MNT/vols/$c"
done
"$BIN/gen-image" rewrite "$MNT/vols/c1" 1 2 >/dev/null
"$BIN/gen-image" rewrite "$MNT/vols/c2" 1 3 >/dev/null
sync

# One round of each tool: the template, then each clone (its first
# backup), timed cold; the archive's size after.
sb_round() {
    rm -rf "$MNT/sbk" "$W/sbk-meta" "$MNT/vols/.sparsebak"
    "${SB[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null 2>&1
    "${SB[@]}" add --dedup-group tpl tpl c1 c2 >/dev/null
    cold; local t; t=$(timed "${SB[@]}" backup tpl)
    cold; local a; a=$(timed "${SB[@]}" backup c1)
    cold; local b; b=$(timed "${SB[@]}" backup c2)
    echo "$t $a $b $(mib "$MNT/sbk")"
}
wy_round() {
    rm -rf "$MNT/wyng" "$W/wyng-meta"/* /var/lib/wyng/*
    find "$MNT/vols" -maxdepth 1 -name '*.wyng*' -exec rm -rf {} + 2>/dev/null || true
    "${WY[@]}" arch-init >/dev/null 2>&1
    "${WY[@]}" add tpl >/dev/null 2>&1; "${WY[@]}" add c1 >/dev/null 2>&1; "${WY[@]}" add c2 >/dev/null 2>&1
    cold; local t; t=$(timed "${WY[@]}" --dedup send tpl)
    cold; local a; a=$(timed "${WY[@]}" --dedup send c1)
    cold; local b; b=$(timed "${WY[@]}" --dedup send c2)
    echo "$t $a $b $(mib "$MNT/wyng")"
}
borg_round() {
    rm -rf "$MNT/borg"
    borg init -e none >/dev/null 2>&1
    local o=(--chunker-params fixed,262144 --compression zstd,3)
    cold; local t; t=$(timed borg create "${o[@]}" ::tpl "$MNT/vols/tpl")
    cold; local a; a=$(timed borg create "${o[@]}" ::c1 "$MNT/vols/c1")
    cold; local b; b=$(timed borg create "${o[@]}" ::c2 "$MNT/vols/c2")
    echo "$t $a $b $(mib "$MNT/borg")"
}
S=$W/sb; Y=$W/wy; B=$W/borg; H=$W/hash; : > "$S"; : > "$Y"; : > "$B"; : > "$H"
for r in $(seq "$ROUNDS"); do
    sb_round >> "$S"
    [ "$HAVE_WYNG" = 1 ] && wy_round >> "$Y"
    borg_round >> "$B"
    # The floor of a clone's backup: read it and hash every chunk (keyed
    # BLAKE3, all cores, cold), nothing compressed, sealed or sent.
    cold; echo "$(timed "$BIN/bench-limit" "$MNT/vols/c1" 262144 3 hash)" >> "$H"
done
col() { awk -v c="$2" '{ print $c }' "$1"; }
printf '\n%-40s %10s %10s %10s\n' "template + 2 clones, ${SIZE_MIB} MiB" sparsebak wyng borg
WYS=-; [ "$HAVE_WYNG" = 1 ] && WYS=$(col "$Y" 4 | best)
printf '%-40s %10s %10s %10s\n' "archive size (MiB)" "$(col "$S" 4 | best)" "$WYS" "$(col "$B" 4 | best)"
[ "$HAVE_WYNG" = 1 ] && printf '%-40s %10s %10s  (target <= 1.05)\n' "  sparsebak / wyng" "$(ratio "$(col "$S" 4 | best)" "$WYS")" ""
printf '%-40s %10s %10s  (target <= 1.05)\n' "  sparsebak / borg" "$(ratio "$(col "$S" 4 | best)" "$(col "$B" 4 | best)")" ""
for k in 1 2 3; do
    label=$(echo "template (full)|clone 1, first backup|clone 2, first backup" | cut -d'|' -f$k)
    WYT=-; [ "$HAVE_WYNG" = 1 ] && WYT=$(col "$Y" $k | best)
    printf '%-40s %10s %10s %10s   spread %s\n' "$label (s)" "$(col "$S" $k | best)" "$WYT" "$(col "$B" $k | best)" "$(col "$S" $k | spread)"
done
HASH=$(col "$H" 1 | best)
printf '%-40s %10s\n' "read + hash one clone, cold (s)" "$HASH"
printf '%-40s %10s  (target <= 1.2)\n' "  clone's first backup / that" "$(ratio "$(col "$S" 2 | best)" "$HASH")"

# A volume with no duplicates: a full backup, against an older sparsebak
# (SBK_BEFORE) when given, interleaved.
"$BIN/gen-image" create "$MNT/vols/solo" "$SIZE_MIB" 7
N=$W/nodup; : > "$N"
full_with() { # binary
    rm -rf "$MNT/sbk1" "$W/meta1" "$MNT/vols/.sparsebak"
    local b=("$1" --dest "file://$MNT/sbk1" --meta-dir "$W/meta1" --local "$MNT/vols" --passphrase-file "$W/passphrase")
    "${b[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null 2>&1
    cold; timed "${b[@]}" backup solo
}
for r in $(seq "$ROUNDS"); do
    if [ -n "${SBK_BEFORE:-}" ]; then
        echo "$(full_with "$BIN/sparsebak") $(full_with "$SBK_BEFORE")" >> "$N"
    else
        echo "$(full_with "$BIN/sparsebak")" >> "$N"
    fi
done
printf '%-40s %10s   spread %s\n' "full backup, no duplicates (s)" "$(col "$N" 1 | best)" "$(col "$N" 1 | spread)"
if [ -n "${SBK_BEFORE:-}" ]; then
    printf '%-40s %10s   spread %s\n' "  the same, SBK_BEFORE (s)" "$(col "$N" 2 | best)" "$(col "$N" 2 | spread)"
    printf '%-40s %10s  (target <= 1.05)\n' "  this / before" "$(ratio "$(col "$N" 1 | best)" "$(col "$N" 2 | best)")"
fi

# dom0 with a big index: INDEX_ENTRIES chunks in the group's index (as if
# the group stored them), then an incremental of a clone: peak RSS, and
# the index's size on disk.
ID=$(ls "$W/sbk-meta/archives")
echo "== filling the group's index with $INDEX_ENTRIES entries"
"$BIN/bench-dedup-index" "$W/sbk-meta/archives/$ID" tpl "$INDEX_ENTRIES"
"$BIN/gen-image" rewrite "$MNT/vols/c1" 1 9 >/dev/null
cold; /usr/bin/time -f '%M %e' -o "$W/rss" "${SB[@]}" backup c1 >/dev/null
printf '%-40s %10s\n' "dom0 peak RSS, incremental (MiB)" "$(awk '{ printf "%.1f", $1 / 1024 }' "$W/rss")"
printf '%-40s %10s  (target < 64)\n' "  with an index of" "$INDEX_ENTRIES"
printf '%-40s %10s\n' "  index on disk (MiB)" "$(mib "$W/sbk-meta/archives/$ID/dedup")"
printf '%-40s %10s\n' "  that backup (s)" "$(awk '{ print $2 }' "$W/rss")"
