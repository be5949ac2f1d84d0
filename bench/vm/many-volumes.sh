# bench/vm/many-volumes.sh WORKDIR N CHANGED ROUNDS [WYNG [before]] — runs
# inside the VM (bench/many-volumes.sh starts it), as root, with the
# project's release binaries on PATH. A Qubes-like thin pool of N volumes
# (32 MiB, 4 MiB written each); a full backup, then ROUNDS incrementals with
# CHANGED volumes 1 % rewritten, by sparsebak, by Wyng when WYNG names its
# script (VM_HOSTROOT=1), and by `sparsebak-before` when "before" is given:
# each on the same pool and the same changes, interleaved. Every LVM and
# thin tool each one runs is counted. Prints one table.
set -euo pipefail
W=$1 N=$2 C=$3 ROUNDS=$4 WYNG=${5:-} BEFORE=${6:-}
rm -rf "$W"; mkdir -p "$W"
now() { cut -d' ' -f1 /proc/uptime; }
printf 'a bench passphrase\n' > "$W/passphrase"
# Archives and records in RAM, for every tool alike (the share is 9p, slow
# under emulation and without mmap, which Wyng needs).
R=$W/ram; mkdir -p "$R"; mount -t tmpfs -o size=1500m ram "$R"
SB=(sparsebak --dest "file://$R/sbk" --meta-dir "$R/meta" --local vg/pool --passphrase-file "$W/passphrase")
OLD=(sparsebak-before --dest "file://$R/sbk-before" --meta-dir "$R/meta-before" --local vg/pool --passphrase-file "$W/passphrase")

pvcreate -q /dev/vda >/dev/null; vgcreate -q vg /dev/vda >/dev/null
lvcreate -q -L 3G -T vg/pool >/dev/null 2>&1
vols=()
for i in $(seq -w 1 "$N"); do
    v=vm-q$i-private; vols+=("$v")
    lvcreate -q -V 32M -T vg/pool -n "$v" >/dev/null 2>&1
    dd if=/dev/urandom of="/dev/vg/$v" bs=1M count=4 seek=$((10#$i % 28)) conv=fsync 2>/dev/null
done

# Counting: sparsebak finds its tools on PATH; Wyng runs them by absolute
# path inside the host root, where a shim is bound over each.
CALLS=$W/calls
mkdir -p "$W/shims"
for t in lvs lvcreate lvremove lvchange lvrename dmsetup thin_delta thin_dump; do
    printf '#!/bin/bash\necho %s >> %q\nexec %q "$@"\n' $t "$CALLS" "$(command -v $t)" > "$W/shims/$t"
done
chmod +x "$W/shims/"*
if [ -n "$WYNG" ]; then
    for t in lvm dmsetup thin_delta; do
        real=$(command -v $t)
        printf '#!/bin/sh\necho "%s $1" >> %q\nLD_LIBRARY_PATH=/run/vm/lib/x86_64-linux-gnu exec /run/vm%s "$@"\n' \
            $t "$CALLS" "$real" > "/run/shim-$t"
        chmod +x "/run/shim-$t"
        mount --bind "/run/shim-$t" "/host/usr/sbin/$t"
    done
    # Wyng keeps state in /var/lib/wyng (made on the host, read-only here).
    mount -t tmpfs wyng-var /host/var/lib/wyng
    mount --bind "$R" "/host$R"
    WY=(inhost /usr/bin/python3 "$WYNG" --dest "file:$R/wyng" --local vg/pool -u
        --passcmd 'echo PASSPHRASE10+')
fi

# run NAME CMD...: times CMD, counts its tools; one table row
printf '%-10s %-12s %8s %6s  %s\n' tool step seconds tools "tools by name"
run() {
    local who=$1 step=$2; shift 2
    : > "$CALLS"
    local t0 t1; t0=$(now)
    PATH="$W/shims:$PATH" "$@" > "$W/out.$who" 2>&1 || { cat "$W/out.$who"; echo "BENCH FAILED: $who $step" >&2; exit 1; }
    t1=$(now)
    printf '%-10s %-12s %8.2f %6d  %s\n' "$who" "$step" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" \
        "$(wc -l < "$CALLS")" "$(sort "$CALLS" | uniq -c | awk '{c=$1; $1=""; printf "%s:%s ", substr($0,2), c}')"
}
"${SB[@]}" arch-init --chunk-size 64K >/dev/null
"${SB[@]}" add "${vols[@]}" >/dev/null
if [ -n "$BEFORE" ]; then
    "${OLD[@]}" arch-init --chunk-size 64K >/dev/null
    "${OLD[@]}" add "${vols[@]}" >/dev/null
fi
[ -n "$WYNG" ] && { "${WY[@]}" arch-init >/dev/null; "${WY[@]}" add "${vols[@]}" >/dev/null 2>&1 || for v in "${vols[@]}"; do "${WY[@]}" add "$v" >/dev/null; done; }
run sparsebak full "${SB[@]}" backup
[ -n "$BEFORE" ] && run before full "${OLD[@]}" backup
[ -n "$WYNG" ] && run wyng full "${WY[@]}" send --all
for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq -w 1 "$C"); do   # 1 % of each changed volume: 5 x 64 KiB
        for k in 1 2 3 4 5; do
            dd if=/dev/urandom of="/dev/vg/vm-q$i-private" bs=64K seek=$(( (RANDOM * 7 + k * 97) % 512 )) count=1 conv=notrunc,fsync 2>/dev/null
        done
    done
    run sparsebak "incr-$r" "${SB[@]}" backup
    [ -n "$BEFORE" ] && run before "incr-$r" "${OLD[@]}" backup
    [ -n "$WYNG" ] && run wyng "incr-$r" "${WY[@]}" send --all
done
for v in "${vols[@]:0:$C}"; do   # both restore what they stored
    want=$(sha256sum < "/dev/vg/$v" | cut -d' ' -f1)
    "${SB[@]}" restore "$v" --to-lv "r-$v" >/dev/null
    [ "$(sha256sum < "/dev/vg/r-$v" | cut -d' ' -f1)" = "$want" ] || { echo "BENCH FAILED: sparsebak restore of $v differs" >&2; exit 1; }
    lvremove -q -f "vg/r-$v" >/dev/null
done
echo "BENCH OK"
