#!/bin/bash
# Many volumes on real dm-thin, as a Qubes dom0 has them: a benchmark, not a
# test (it asserts only that both tools ran and that restores are exact).
#
#   bash bench/many-volumes.sh            # 40 volumes, 10 changed, 2 rounds
#   N=40 CHANGED=10 ROUNDS=3 bash bench/many-volumes.sh
#   SBK_BEFORE=/path/to/an/older/sparsebak bash bench/many-volumes.sh
#
# Boots the project's dm-thin VM (tests/vm/run-in-vm.sh) and runs
# bench/vm/many-volumes.sh in it: a thin pool of N volumes of 32 MiB with
# 4 MiB written in each; a full backup, then ROUNDS incrementals with
# CHANGED volumes 1 % rewritten. Side by side, on the same pool and the same
# changes, interleaved: Wyng (when ../shared/peers/wyng or $WYNG exists;
# skipped with a message otherwise) and, when SBK_BEFORE names one, an older
# sparsebak binary. Prints each run's wall time and every LVM and thin tool
# it ran. Everything runs under software emulation here, where one LVM
# command costs about 0.3 s: the counts carry over to real hardware, the
# seconds do not.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
N=${N:-40} CHANGED=${CHANGED:-10} ROUNDS=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need_cargo
need_pkgs qemu-system-x86_64 qemu-system-x86 qemu-img qemu-utils
cargo build -q --release --workspace --bins
BIN=$ROOT/target/release
WYNG=${WYNG:-$ROOT/../shared/peers/wyng}
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/sparsebak-many.XXXXXX")
trap 'rm -rf "$W"' EXIT
bins="$BIN/sparsebak $BIN/sparsebak-receiver"
args=("$W/w" "$N" "$CHANGED" "$ROUNDS")
if [ -f "$WYNG" ]; then
    # Wyng runs on the host's python, chrooted into the host's root from
    # inside the VM; its packages and the tool paths it hard-codes
    # (/usr/sbin/lvm, /sbin/dmsetup) come from Debian.
    need_pkgs /usr/sbin/lvm lvm2 /sbin/dmsetup dmsetup gawk gawk
    /usr/bin/python3 -c 'import zstd, Cryptodome' 2>/dev/null || {
        echo "== installing python3-zstd python3-pycryptodome"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3-zstd python3-pycryptodome >/dev/null
    }
    mkdir -p /var/lib/wyng   # Wyng's fixed state dir: the VM binds a scratch dir over it
    cp "$WYNG" "$W/wyng"
    args+=("$W/wyng")
    export VM_HOSTROOT=1
else
    echo "many-volumes: Wyng not found at $WYNG: comparing with nothing but the machine" >&2
    args+=("")
fi
if [ -n "${SBK_BEFORE:-}" ]; then
    cp "$SBK_BEFORE" "$W/sparsebak-before"
    bins="$bins $W/sparsebak-before"
    args+=(before)
fi
VM_SHARE=$W VM_CACHE=$ROOT/target/vmcache-bench VM_BINS=$bins VM_MEM=${VM_MEM:-3072} VM_TIMEOUT=${VM_TIMEOUT:-3000} \
    bash "$ROOT/tests/vm/run-in-vm.sh" "$ROOT/bench/vm/many-volumes.sh" "${args[@]}"
