# thin-e2e.sh WORKDIR — runs inside the VM (tests/vm/run-in-vm.sh), as root,
# with the project's release binaries on PATH. Real dm-thin, real LVM, real
# thin_delta: full backup, incrementals after random writes and discards,
# growth, a backup killed mid-stream, restores of every session into new
# LVs compared byte for byte (by SHA-256 of the whole LV), verify, and the
# configured/missing listing. Prints "E2E OK" at the end.
set -euo pipefail
W=$1
rm -rf "$W"; mkdir -p "$W"
t0=$(cut -d' ' -f1 /proc/uptime)
log() { echo "[$(cut -d' ' -f1 /proc/uptime)s] $*"; }
fail() { echo "E2E FAILED: $*" >&2; exit 1; }
printf 'a vm test passphrase\n' > "$W/passphrase"
SB=(sparsebak --dest "file://$W/archive" --meta-dir "$W/meta" --local vg/pool --passphrase-file "$W/passphrase")

# Every storage tool sparsebak runs is counted: a shim first on PATH logs
# its name, then runs the real one.
mkdir -p "$W/shims"; CALLS=$W/calls
for t in lvs lvcreate lvremove lvchange lvrename dmsetup thin_delta thin_dump; do
    real=$(command -v $t)
    printf '#!/bin/bash\necho %s >> %q\nexec %q "$@"\n' $t "$CALLS" "$real" > "$W/shims/$t"
    chmod +x "$W/shims/$t"
done
counted() { # counted N CMD...: runs CMD with the shims; fails if a backup of N volumes ran more than 2N+6 tools
    local n=$1; shift; : > "$CALLS"
    PATH="$W/shims:$PATH" "$@"
    local total; total=$(wc -l < "$CALLS")
    echo "tools run: $total ($(sort "$CALLS" | uniq -c | awk '{printf "%s %s, ", $2, $1}'))"
    [ "$(grep -c '^lvcreate$' "$CALLS")" -le "$n" ] || fail "more than one lvcreate per volume"
    [ "$(grep -c '^thin_delta$' "$CALLS")" -le "$n" ] || fail "more than one thin_delta per volume"
    [ "$total" -le $((2 * n + 6)) ] || fail "$total tools for $n volumes (at most 2N+6)"
}

pvcreate -q /dev/vda; vgcreate -q vg /dev/vda
lvcreate -q -L 1G -T vg/pool 2>/dev/null            # 64 KiB pool blocks
lvcreate -q -V 48M -T vg/pool -n work-private 2>/dev/null
lvcreate -q -V 16M -T vg/pool -n sys-root 2>/dev/null
dd if=/dev/urandom of=/dev/vg/work-private bs=1M count=8 conv=fsync 2>/dev/null
dd if=/dev/urandom of=/dev/vg/work-private bs=1M seek=30 count=4 conv=fsync 2>/dev/null
dd if=/dev/urandom of=/dev/vg/sys-root bs=1M count=16 conv=fsync 2>/dev/null
lvcreate -q -s -n foreign-snap vg/work-private 2>/dev/null   # not ours: must survive
log "pool ready"

"${SB[@]}" arch-init --chunk-size 128K
"${SB[@]}" add work-private sys-root
declare -A SUM SIZE
record() { # after a backup: remember each volume's content for its newest session
    local v s
    for v in work-private sys-root; do
        s=$("${SB[@]}" list "$v" --json | grep -o '"name":"S_[0-9-]*"' | tail -1 | cut -d'"' -f4)
        SUM[$v/$s]=$(sha256sum < "/dev/vg/$v" | cut -d' ' -f1)
        SIZE[$v/$s]=$(blockdev --getsize64 "/dev/vg/$v")
    done
}
out=$("${SB[@]}" backup); echo "$out"; record
echo "$out" | grep -q "work-private: session .* (thin snapshot, mapped blocks): volume 48.0 MiB, read 12.0 MiB" ||
    fail "the first backup must read only the 12 MiB of mapped blocks"
log "full backup done"

rw() { # random writes of 64..320 KiB at random places in volume $1 (MiB size $2)
    local i
    for i in 1 2 3 4; do
        dd if=/dev/urandom of="/dev/vg/$1" bs=64K seek=$((RANDOM % ($2 * 16 - 5))) count=$((1 + RANDOM % 5)) \
            conv=notrunc,fsync 2>/dev/null
    done
}
for round in 1 2 3; do
    rw work-private 48; rw sys-root 16
    [ $round = 2 ] && blkdiscard -o $((31 * 1048576)) -l 1048576 /dev/vg/work-private   # left_only ranges
    out=$(counted 2 "${SB[@]}" backup); echo "$out"; record
    echo "$out" | grep -q "work-private: session .* (thin delta)" || fail "round $round did not use thin_delta"
    echo "$out" | grep -q "sys-root: session .* (thin delta)" || fail "round $round did not use thin_delta"
done
log "incrementals done"

lvextend -q -L 64M vg/work-private 2>/dev/null
dd if=/dev/urandom of=/dev/vg/work-private bs=1M seek=60 count=2 conv=fsync 2>/dev/null
"${SB[@]}" backup; record
log "growth done"

# A backup killed mid-stream leaves the last good base; the next one is right.
# Killed at 1 s (snapshot / metadata phase) and at 4 s (streaming).
for delay in 1 4; do
    dd if=/dev/urandom of=/dev/vg/work-private bs=1M seek=10 count=16 conv=notrunc,fsync 2>/dev/null
    "${SB[@]}" backup work-private & pid=$!
    sleep $delay; kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    sleep 1
    "${SB[@]}" backup; record
done
dmsetup status vg-pool-tpool | awk '{ if ($7 != "-") { print "metadata snapshot still held: " $0; exit 1 } }' ||
    fail "a metadata snapshot was left reserved"
log "interrupted backup recovered"

n=0
for key in "${!SUM[@]}"; do
    v=${key%/*} s=${key#*/}; n=$((n + 1))
    "${SB[@]}" restore "$v" --session "$s" --to-lv "r$n" >/dev/null
    [ "$(blockdev --getsize64 /dev/vg/r$n)" = "${SIZE[$key]}" ] || fail "$key: restored size differs"
    [ "$(sha256sum < /dev/vg/r$n | cut -d' ' -f1)" = "${SUM[$key]}" ] || fail "$key: restored content differs"
    [ $((n % 3)) = 1 ] && "${SB[@]}" verify "$v" --session "$s" >/dev/null   # restore verifies too
    lvremove -q -f "vg/r$n" >/dev/null
done
log "restored and compared $n sessions"

# Restoring over an existing LV needs --force; then it is replaced.
"${SB[@]}" restore sys-root 2>/dev/null && fail "restore over sys-root without --force succeeded"
dd if=/dev/urandom of=/dev/vg/sys-root bs=64K count=3 conv=notrunc,fsync 2>/dev/null
last=$("${SB[@]}" list sys-root --json | grep -o '"name":"S_[0-9-]*"' | tail -1 | cut -d'"' -f4)
"${SB[@]}" restore sys-root --force
[ "$(sha256sum < /dev/vg/sys-root | cut -d' ' -f1)" = "${SUM[sys-root/$last]}" ] || fail "forced restore differs"

lvs vg/foreign-snap >/dev/null 2>&1 || fail "a snapshot that is not ours was touched"
# Between runs each volume keeps exactly one snapshot: the base, tagged
# with its newest session, inactive.
for v in work-private sys-root; do
    last=$("${SB[@]}" list "$v" --json | grep -o '"name":"S_[0-9-]*"' | tail -1 | cut -d'"' -f4)
    snaps=$(lvs --noheadings -o lv_name,lv_attr,lv_tags vg | awk -v p="$v.sbk-" 'index($1, p) == 1')
    [ "$(echo "$snaps" | wc -l)" = 1 ] || fail "$v: snapshots left: $snaps"
    echo "$snaps" | grep -q "sbks_$last" || fail "$v: the base is not tagged with $last: $snaps"
    [ "$(echo "$snaps" | awk '{print substr($2, 5, 1)}')" = - ] || fail "$v: the base is left active: $snaps"
done
lvremove -q -f vg/sys-root >/dev/null
"${SB[@]}" list | tee "$W/list.txt"
grep -q "MISSING from the source (configured but not present): sys-root" "$W/list.txt" || fail "list does not report the missing volume"
lvs -o lv_name,lv_tags vg
t1=$(cut -d' ' -f1 /proc/uptime)
echo "E2E OK: $n sessions restored byte-exact in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}') s of VM time"
