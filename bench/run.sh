#!/bin/bash
# sparsebak benchmark: times and ratios, side by side with the machine's
# limit and with borg, on generated data. A benchmark, not a test: it
# asserts nothing and is not part of scripts/test.sh.
#
#   bash bench/run.sh            # 2 GiB image (as in the performance issue)
#   SIZE_MIB=512 bash bench/run.sh
#
# Needs root (loop-mounted XFS for reflink incrementals); installs xfsprogs
# and borgbackup if missing. Everything lives in one scratch dir, removed at
# the end. The source image is warmed in the page cache before each backup
# (so reading it costs CPU, not disk, like the limit it is compared with).
# The archive and borg's repository share a second XFS on a loop device
# with direct I/O to its backing file: a disk of its own, like a backup
# qube's, written at this machine's real disk speed and not cached twice.
# Restores read that disk cold (caches dropped), as they would days later.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
SIZE_MIB=${SIZE_MIB:-2048}
[ "$(id -u)" = 0 ] || { echo "run as root (loop XFS)" >&2; exit 1; }
need_cargo
need_pkgs mkfs.xfs xfsprogs borg borgbackup
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-bench.XXXXXX")
MNT=$W/xfs ARCH=$W/archfs
cleanup() {
    umount "$MNT" "$ARCH" 2>/dev/null || true
    [ -n "${ALOOP:-}" ] && losetup -d "$ALOOP" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
truncate -s $((SIZE_MIB * 10 + 20480))M "$W/xfs.img"
mkfs.xfs -q -m reflink=1 "$W/xfs.img"; mkdir -p "$MNT"; mount -o loop "$W/xfs.img" "$MNT"
truncate -s $((SIZE_MIB * 4 + 4096))M "$W/arch.img"
ALOOP=$(losetup --direct-io=on -f --show "$W/arch.img")
mkfs.xfs -q "$ALOOP"; mkdir -p "$ARCH"; mount "$ALOOP" "$ARCH"
VOLS=$MNT/vols; mkdir -p "$VOLS"
printf 'bench passphrase\n' > "$W/passphrase"
SB=("$BIN/sparsebak" --dest "file://$ARCH/archive" --meta-dir "$MNT/meta" --local "$VOLS" --passphrase-file "$W/passphrase")
export BORG_REPO=$ARCH/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
now() { date +%s.%N; }
timed() { local t; t=$(now); "$@" >/dev/null; awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
# What a run costs beside how long it takes: busy CPU-seconds of the whole
# machine (every process and kernel thread: the receiver, loop and
# writeback workers too) and the time the hypervisor stole, from /proc/stat.
ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
costed() {
    local b w; b=$(ticks); w=$("$@")
    awk -v w="$w" -v b="$b" -v a="$(ticks)" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        printf "%s %.2f %.2f", w, (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }'
}
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }   # peak RSS, KiB
warm() { cat "$@" >/dev/null; sync; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
command -v /usr/bin/time >/dev/null || need_pkgs /usr/bin/time time

# This VM's speed drifts by a third within minutes: every figure is the
# best of ROUNDS runs, each from the same starting state.
ROUNDS=${ROUNDS:-3}
# The fastest run's line (its time and, where costed, its CPU figures).
best() { local r; for r in $(seq "$ROUNDS"); do "$@"; echo; done | awk 'NF && (m == "" || $1 < m) { m = $1; l = $0 } END { printf "%s", l }'; }
BORG_OPTS=(--chunker-params fixed,262144 --compression zstd,3)

echo "== data: ${SIZE_MIB} MiB semi-compressible image, $(nproc) cores, best of $ROUNDS"
"$BIN/gen-image" create "$VOLS/img" "$SIZE_MIB" 1
limit() { warm "$VOLS/img"; costed "$BIN/bench-limit" "$VOLS/img" 262144 3 on; }
limit_off() { warm "$VOLS/img"; costed "$BIN/bench-limit" "$VOLS/img" 262144 3 off; }
read -r T_LIMIT C_LIMIT S_LIMIT <<<"$(best limit)"
read -r T_LIMIT_OFF C_LIMIT_OFF S_LIMIT_OFF <<<"$(best limit_off)"

# Full backups, each into a new archive / repository.
sb_full() {
    rm -rf "$ARCH/archive" "$MNT/meta" "$VOLS/.sparsebak"
    "${SB[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
    warm "$VOLS/img"; costed timed "${SB[@]}" backup img
}
borg_full() {
    rm -rf "$ARCH/borg"; borg init -e none >/dev/null
    warm "$VOLS/img"; costed timed borg create "${BORG_OPTS[@]}" ::full "$VOLS/img"
}
# The same with --encrypt off (chunks in the clear, still authenticated),
# into an archive of its own on the same disk.
SBO=("$BIN/sparsebak" --dest "file://$ARCH/archive-clear" --meta-dir "$MNT/meta-clear" --local "$VOLS" --passphrase-file "$W/passphrase")
sb_full_off() {
    rm -rf "$ARCH/archive-clear" "$MNT/meta-clear" "$VOLS/.sparsebak"
    "${SBO[@]}" arch-init --chunk-size 256K --compression zstd:3 --encrypt off >/dev/null
    warm "$VOLS/img"; costed timed "${SBO[@]}" backup img
}
read -r T_FULL_OFF C_FULL_OFF S_FULL_OFF <<<"$(best sb_full_off)"
read -r T_FULL C_FULL S_FULL <<<"$(best sb_full)"
read -r T_BFULL C_BFULL S_BFULL <<<"$(best borg_full)"

# Incrementals: each round rewrites 1 % of the image (64 KiB blocks), then
# both tools back it up.
INC=$W/inc; : >"$INC"
for r in $(seq "$ROUNDS"); do
    "$BIN/gen-image" rewrite "$VOLS/img" 1 $((r + 1)) >/dev/null
    warm "$VOLS/img"; a=$(timed "${SB[@]}" backup img)
    warm "$VOLS/img"; b=$(timed borg create "${BORG_OPTS[@]}" "::inc$r" "$VOLS/img")
    echo "$a $b" >>"$INC"
done
T_INC=$(awk 'NR == 1 || $1 < m { m = $1 } END { printf "%.3f", m }' "$INC")
T_BINC=$(awk 'NR == 1 || $2 < m { m = $2 } END { printf "%.3f", m }' "$INC")

# The same full backups with archive and repository in RAM (tmpfs): the
# pipeline-bound figure, apart from the archive disk's write speed, which
# is measured too.
SHM=$(mktemp -d /dev/shm/sparsebak-bench.XXXXXX)
trap 'rm -rf "$SHM"; cleanup' EXIT
SBM=("$BIN/sparsebak" --dest "file://$SHM/archive" --meta-dir "$SHM/meta" --local "$VOLS" --passphrase-file "$W/passphrase")
sb_full_ram() {
    rm -rf "$SHM/archive" "$SHM/meta" "$VOLS/.sparsebak"
    "${SBM[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
    warm "$VOLS/img"; costed timed "${SBM[@]}" backup img
}
borg_full_ram() {
    rm -rf "$SHM/borg"; borg init -e none "$SHM/borg" >/dev/null
    warm "$VOLS/img"; costed timed borg create "${BORG_OPTS[@]}" "$SHM/borg::full" "$VOLS/img"
}
read -r T_FULL_RAM C_FULL_RAM S_FULL_RAM <<<"$(best sb_full_ram)"
read -r T_BFULL_RAM C_BFULL_RAM S_BFULL_RAM <<<"$(best borg_full_ram)"
rm -rf "$SHM"/* "$VOLS/.sparsebak"
"${SB[@]}" backup img >/dev/null   # re-base the disk archive's snapshot
disk() { timed dd if=/dev/zero of="$ARCH/ddtest" bs=1M count=512 oflag=direct conv=fsync status=none; rm -f "$ARCH/ddtest"; }
T_DISK=$(best disk)

# Restores go to the scratch dir's own disk, caches dropped first; borg
# extract does not fsync what it wrote, sparsebak's restore does (so borg
# is also timed followed by sync).
R=$W/restore; mkdir -p "$R"
sb_restore() { rm -f "$R/img"; cold; timed "${SB[@]}" restore img --save-to "$R/img"; }
borg_extract() { rm -rf "${R:?}"/*; cold; (cd "$R" && timed borg extract "::inc$ROUNDS"); }
borg_extract_sync() { rm -rf "${R:?}"/*; cold; (cd "$R" && timed sh -c "borg extract ::inc$ROUNDS && sync"); }
sb_verify() { cold; timed "${SB[@]}" verify img; }
sb_restore_off() { rm -f "$R/img"; cold; timed "${SBO[@]}" restore img --save-to "$R/img"; }
sb_verify_off() { cold; timed "${SBO[@]}" verify img; }
# Interleaved, so that drift hits both alike.
RV=$W/rv; : >"$RV"
for r in $(seq "$ROUNDS"); do
    echo "$(sb_restore) $(sb_restore_off) $(sb_verify) $(sb_verify_off)" >>"$RV"
done
col_min() { awk -v c="$1" 'NR == 1 || $c < m { m = $c } END { printf "%.3f", m }' "$RV"; }
T_REST=$(col_min 1) T_REST_OFF=$(col_min 2) T_VER=$(col_min 3) T_VER_OFF=$(col_min 4)
rm -f "$R/img"
T_BREST=$(best borg_extract); T_BRESTS=$(best borg_extract_sync); rm -rf "${R:?}"/*
RSS_B=$(rss "${SB[@]}" backup img); RSS_R=$(rss "${SB[@]}" verify img)
RSS_BO=$(rss "${SBO[@]}" backup img); RSS_RO=$(rss "${SBO[@]}" verify img)

# 16 GiB sparse volume with the same absolute change
truncate -s 16G "$VOLS/big"; dd if="$VOLS/img" of="$VOLS/big" bs=1M conv=notrunc 2>/dev/null
"${SB[@]}" backup big >/dev/null
n=$(( SIZE_MIB * 16 / 100 )); [ $n -gt 0 ] || n=1   # as many 64 KiB blocks as 1 % of the image
for i in $(seq 1 "$n"); do
    dd if=/dev/urandom of="$VOLS/big" bs=64K seek=$(( (RANDOM * 32768 + RANDOM) % (SIZE_MIB * 16) )) count=1 conv=notrunc 2>/dev/null
done
sync
T_BIG=$(timed "${SB[@]}" backup big)
# 1 TiB sparse volume, small delta: memory
truncate -s 1T "$VOLS/huge"; dd if=/dev/urandom of="$VOLS/huge" bs=1M count=16 conv=notrunc 2>/dev/null
"${SB[@]}" backup huge >/dev/null
dd if=/dev/urandom of="$VOLS/huge" bs=1M seek=500000 count=4 conv=notrunc 2>/dev/null
RSS_HB=$(rss "${SB[@]}" backup huge); RSS_HR=$(rss "${SB[@]}" verify huge)
# 40 volumes in one run (32 MiB, 4 MiB written each; then 10 of them with
# 5 blocks rewritten): memory does not grow with the number of volumes.
mkdir -p "$VOLS/many"
for i in $(seq -w 1 40); do
    truncate -s 32M "$VOLS/many/v$i"
    dd if=/dev/urandom of="$VOLS/many/v$i" bs=1M count=4 conv=notrunc status=none
done
SBV=("$BIN/sparsebak" --dest "file://$ARCH/many" --meta-dir "$MNT/meta-many" --local "$VOLS/many" --passphrase-file "$W/passphrase")
"${SBV[@]}" arch-init --chunk-size 128K >/dev/null
mapfile -t MANY < <(cd "$VOLS/many" && ls)
RSS_MF=$(rss "${SBV[@]}" backup "${MANY[@]}")
for i in $(seq -w 1 10); do
    dd if=/dev/urandom of="$VOLS/many/v$i" bs=64K seek=100 count=5 conv=notrunc status=none
done
RSS_MI=$(rss "${SBV[@]}" backup "${MANY[@]}")

# Recovery: an archive of IMPORT_SESSIONS sessions (the full one, then 1 %
# rewritten each time) in RAM, dom0's records deleted, arch-import with
# the passphrase (Argon2id included), then a verify of the newest session.
IMPORT_SESSIONS=${IMPORT_SESSIONS:-100}
rm -rf "$SHM"/* "$VOLS/.sparsebak"
"${SBM[@]}" arch-init --chunk-size 256K --compression zstd:3 >/dev/null
"${SBM[@]}" backup img >/dev/null
for i in $(seq 2 "$IMPORT_SESSIONS"); do
    "$BIN/gen-image" rewrite "$VOLS/img" 1 $((i + 100)) >/dev/null
    "${SBM[@]}" backup img >/dev/null
done
rm -rf "$SHM/meta"
T_IMPORT=$(timed "${SBM[@]}" arch-import)
T_IMPORT_VER=$(timed "${SBM[@]}" verify img)
rm -rf "$SHM"/*

printf '\n== sparsebak benchmark (%s MiB image, %s cores, best of %s)\n' "$SIZE_MIB" "$(nproc)" "$ROUNDS"
printf '%-44s %9s\n' "what" "seconds"
printf '%-44s %9s\n' "machine limit: BLAKE3 id + zstd-3 + XChaCha20" "$T_LIMIT" \
    "machine limit, --encrypt off (no cipher)" "$T_LIMIT_OFF" \
    "sparsebak full backup (encrypted)" "$T_FULL" "sparsebak full backup, --encrypt off" "$T_FULL_OFF" \
    "borg create (full)" "$T_BFULL" \
    "sparsebak incremental (1 %, reflink XFS)" "$T_INC" "borg create (incremental)" "$T_BINC" \
    "sparsebak incremental, 16 GiB sparse volume" "$T_BIG" \
    "sparsebak restore (ends with fsync)" "$T_REST" "borg extract (no fsync)" "$T_BREST" \
    "borg extract, then sync" "$T_BRESTS" "sparsebak verify" "$T_VER" \
    "sparsebak restore, --encrypt off" "$T_REST_OFF" "sparsebak verify, --encrypt off" "$T_VER_OFF" \
    "arch-import of $IMPORT_SESSIONS sessions (passphrase)" "$T_IMPORT" "verify right after arch-import" "$T_IMPORT_VER" \
    "sparsebak full backup, archive in RAM" "$T_FULL_RAM" "borg create (full), repository in RAM" "$T_BFULL_RAM" \
    "archive disk: write 512 MiB direct + fsync (dd)" "$T_DISK"
printf '\n%-52s %7s %s\n' "ratio" "value" "target"
printf '%-52s %7s %s\n' "full / machine limit" "$(ratio "$T_FULL" "$T_LIMIT")" "<= 1.3" \
    "encrypted full / --encrypt off full" "$(ratio "$T_FULL" "$T_FULL_OFF")" "<= 1.10" \
    "encrypted restore / --encrypt off restore" "$(ratio "$T_REST" "$T_REST_OFF")" "<= 1.10" \
    "encrypted verify / --encrypt off verify" "$(ratio "$T_VER" "$T_VER_OFF")" "" \
    "limit with cipher / limit without" "$(ratio "$T_LIMIT" "$T_LIMIT_OFF")" "" \
    "borg full / sparsebak full" "$(ratio "$T_BFULL" "$T_FULL")" ">= 1.8" \
    "borg incremental / sparsebak incremental" "$(ratio "$T_BINC" "$T_INC")" ">= 10" \
    "16 GiB incremental / ${SIZE_MIB} MiB incremental" "$(ratio "$T_BIG" "$T_INC")" "<= 1.5" \
    "borg extract / sparsebak restore" "$(ratio "$T_BREST" "$T_REST")" ">= 1.5" \
    "(borg extract + sync) / sparsebak restore" "$(ratio "$T_BRESTS" "$T_REST")" "" \
    "sparsebak verify / sparsebak restore" "$(ratio "$T_VER" "$T_REST")" "< 1" \
    "full in RAM / machine limit (pipeline-bound)" "$(ratio "$T_FULL_RAM" "$T_LIMIT")" "(<= 1.3)" \
    "borg full / sparsebak full, both in RAM" "$(ratio "$T_BFULL_RAM" "$T_FULL_RAM")" "(>= 1.8)"
printf '\n%-44s %9s %10s %9s\n' "CPU cost (whole machine, $(nproc) cores)" "seconds" "busy CPU-s" "stolen"
printf '%-44s %9s %10s %9s\n' "machine limit" "$T_LIMIT" "$C_LIMIT" "$S_LIMIT" \
    "machine limit, --encrypt off" "$T_LIMIT_OFF" "$C_LIMIT_OFF" "$S_LIMIT_OFF" \
    "sparsebak full backup" "$T_FULL" "$C_FULL" "$S_FULL" \
    "sparsebak full backup, --encrypt off" "$T_FULL_OFF" "$C_FULL_OFF" "$S_FULL_OFF" \
    "borg create (full)" "$T_BFULL" "$C_BFULL" "$S_BFULL" \
    "sparsebak full backup, archive in RAM" "$T_FULL_RAM" "$C_FULL_RAM" "$S_FULL_RAM" \
    "borg create (full), repository in RAM" "$T_BFULL_RAM" "$C_BFULL_RAM" "$S_BFULL_RAM"
printf '\n%-52s %7s\n' "peak RSS (MiB)" ""
printf '%-52s %7s\n' "backup, ${SIZE_MIB} MiB image (no change)" "$((RSS_B / 1024))" "verify, ${SIZE_MIB} MiB image" "$((RSS_R / 1024))" \
    "backup, --encrypt off" "$((RSS_BO / 1024))" "verify, --encrypt off" "$((RSS_RO / 1024))" \
    "backup, 1 TiB sparse volume, 4 MiB delta" "$((RSS_HB / 1024))" "verify, 1 TiB sparse volume" "$((RSS_HR / 1024))" \
    "backup of 40 volumes in one run (full)" "$((RSS_MF / 1024))" "backup of 40 volumes in one run (10 changed)" "$((RSS_MI / 1024))"

# Where the full backup's CPU goes, stage by stage, and the projection to
# more cores (see bench/stages.sh).
SIZE_MIB=$SIZE_MIB ROUNDS=$ROUNDS bash "$ROOT/bench/stages.sh"
# Opened sessions, in a scratch dir of their own (see bench/open.sh).
cleanup; trap - EXIT
SIZE_MIB=$SIZE_MIB ROUNDS=$ROUNDS bash "$ROOT/bench/open.sh"
# Whole-qube restore, likewise (see bench/qubes.sh).
SIZE_MIB=$SIZE_MIB ROUNDS=$ROUNDS bash "$ROOT/bench/qubes.sh"
# Side by side with Wyng on Btrfs (see bench/wyng.sh; skipped with a
# message where Wyng's script is absent).
SIZE_MIB=$SIZE_MIB ROUNDS=$ROUNDS bash "$ROOT/bench/wyng.sh"
# 40 thin volumes on real dm-thin, with Wyng (see bench/many-volumes.sh).
if [ "${MANY_VOLUMES:-1}" = 1 ]; then bash "$ROOT/bench/many-volumes.sh"; fi
