#!/bin/bash
# run-in-vm.sh SCRIPT [ARGS...]
#
# Runs SCRIPT with bash inside a small VM under QEMU that has real
# device-mapper: Debian's kernel with dm-thin, lvm2, dmsetup and
# thin-provisioning-tools, plus the host-built programs named in
# $VM_BINS (copied into /usr/local/bin with the libraries they need).
# Exits with SCRIPT's status (124 on timeout, 125 if the VM died).
#
# The host directory $VM_SHARE (default $PWD) is shared over 9p at the same
# path; SCRIPT runs there. $VM_DISKS (default 1) blank sparse disks of
# $VM_DISK_SIZE (default 4G) appear as /dev/vda, /dev/vdb, ...
# The image (kernel + initramfs) is built once into $VM_CACHE (default
# target/vmcache) from Debian packages fetched with `apt-get download`.
#
# VM_HOSTROOT=1 also shares the host's / read-only at /host; `inhost CMD`
# then runs CMD chrooted into it (the host's python, for a peer tool in the
# benchmark), with the VM's /dev, /proc, /sys, the share, and the VM's own
# root at /run/vm; LVM_SYSTEM_DIR points at the VM's lvm.conf.
#
# Written for this project after ../shared/dmthin-vm (which we learn from,
# not depend on): software emulation unless the host has real VT-x/AMD-V.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${VM_CACHE:-$ROOT/target/vmcache}
SHARE=$(cd "${VM_SHARE:-$PWD}" && pwd -P)
TIMEOUT=${VM_TIMEOUT:-1200}
VERSION=6 # bump when the recipe below changes

die() { echo "run-in-vm: $*" >&2; exit 125; }
[ $# -ge 1 ] || { echo "usage: $0 SCRIPT [ARGS...]" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
SCRIPT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift

MODS="virtio_pci virtio_blk virtio_console 9pnet_virtio 9p crc32c_generic dm-thin-pool dm-snapshot loop"
STAMP="v$VERSION bins=[$(for b in ${VM_BINS:-}; do sha256sum "$b" | cut -c1-16; done | tr '\n' ' ')]"

build() {
    local B=$CACHE/build R kpkg kver f
    rm -rf "$B"; mkdir -p "$B/debs" "$B/x" "$B/k"; R=$B/root
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (apt-get update first)"
    echo "run-in-vm: building the VM image ($kpkg)" >&2
    (cd "$B/debs" && apt-get download -q "$kpkg" busybox-static lvm2 dmsetup libdevmapper1.02.1 \
        libdevmapper-event1.02.1 thin-provisioning-tools libaio1 >/dev/null 2>"$B/apt.err") ||
        { cat "$B/apt.err" >&2; die "apt-get download failed"; }
    dpkg -x "$B"/debs/linux-image-*.deb "$B/k"
    for f in "$B"/debs/*.deb; do case $f in */linux-image-*) ;; *) dpkg -x "$f" "$B/x" ;; esac; done
    kver=$(ls "$B/k/lib/modules")
    mkdir -p "$R"/{bin,sbin,usr/sbin,usr/local/bin,lib/x86_64-linux-gnu,lib64,dev,proc,sys,run,tmp,etc/lvm,root} "$R/lib/modules/$kver"
    cp "$B/x/bin/busybox" "$R/bin/busybox"
    for f in $("$R/bin/busybox" --list); do [ -e "$R/bin/$f" ] || ln -s busybox "$R/bin/$f"; done
    for f in modprobe insmod lsmod depmod poweroff; do ln -sf ../bin/busybox "$R/sbin/$f"; done
    cp -a "$B/x/sbin/lvm" "$B/x/sbin/dmsetup" "$R/sbin/"
    find "$B/x/sbin" -type l -lname lvm -exec cp -a {} "$R/sbin/" \;
    cp -a "$B/x/usr/sbin/pdata_tools" "$R/usr/sbin/"
    find "$B/x/usr/sbin" -type l -lname pdata_tools -exec cp -a {} "$R/usr/sbin/" \;
    rm -f "$R/bin/bash"; cp /bin/bash "$R/bin/bash"   # busybox ash would shadow real tools
    for f in ${VM_BINS:-}; do cp -L "$f" "$R/usr/local/bin/"; done
    # libraries: the downloaded debs' first, then the host's
    local lp="$B/x/lib/x86_64-linux-gnu:$B/x/usr/lib/x86_64-linux-gnu"
    for f in "$R/sbin/lvm" "$R/sbin/dmsetup" "$R/usr/sbin/pdata_tools" "$R/bin/bash" $(find "$R/usr/local/bin" -type f); do
        LD_LIBRARY_PATH=$lp ldd "$f" | awk '/not found/ {print "MISSING " $1} /=> \// {print $3}'
    done | sort -u > "$B/libs"
    ! grep MISSING "$B/libs" >&2 || die "unresolved libraries"
    while read -r f; do cp -L "$f" "$R/lib/x86_64-linux-gnu/"; done < "$B/libs"
    cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
    # kernel modules and everything they depend on
    local M=$B/k/lib/modules/$kver todo=$MODS seen=" " m p
    while [ -n "${todo// /}" ]; do
        set -- $todo; m=$1; shift; todo="$*"
        case "$seen" in *" $m "*) continue ;; esac; seen="$seen$m "
        p=$(find "$M/kernel" \( -name "$m.ko" -o -name "${m//-/_}.ko" -o -name "${m//_/-}.ko" \) | head -1)
        [ -n "$p" ] || die "module $m not in $kver"
        mkdir -p "$R/lib/modules/$kver/$(dirname "${p#$M/}")"; cp "$p" "$R/lib/modules/$kver/${p#$M/}"
        todo="$todo $(tr '\0' '\n' < "$p" | sed -n 's/^depends=//p' | tr ',' ' ')"
    done
    cp "$M"/modules.order "$M"/modules.builtin* "$R/lib/modules/$kver/" 2>/dev/null || true
    "$R/bin/busybox" depmod -b "$R" "$kver"
    # LVM without udev or lvmetad
    cat > "$R/etc/lvm/lvm.conf" <<'CONF'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" use_devicesfile = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
CONF
    echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"; echo "root:x:0:" > "$R/etc/group"
    cat > "$R/bin/inhost" <<'INHOST'
#!/bin/sh
# inhost CMD [ARGS...]: CMD chrooted into the host's root (VM_HOSTROOT=1).
[ -d /host/proc/self ] || { echo "inhost: the host root is not shared (VM_HOSTROOT=1)" >&2; exit 127; }
exec chroot /host /usr/bin/env LVM_SYSTEM_DIR=/run/vm/etc/lvm \
    /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' inhost "$PWD" "$@"
INHOST
    chmod +x "$R/bin/inhost"
    cat > "$R/init" <<'INIT'
#!/bin/sh
export PATH=/usr/local/bin:/usr/sbin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp; mkdir -p /run/lock /run/lvm /run/ctl
for m in virtio_pci virtio_blk virtio_console 9pnet_virtio 9p dm-thin-pool dm-snapshot loop; do modprobe -q $m; done
O="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o $O ctl /run/ctl || poweroff -f
. /run/ctl/env.sh
mkdir -p "$VM_SHARE" && mount -t 9p -o $O share "$VM_SHARE"
if [ "$VM_HOSTROOT" = 1 ]; then
    mkdir -p /host; mount -t 9p -o $O,ro hostroot /host
    mount -t devtmpfs dev /host/dev; mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
    mount -t tmpfs run /host/run; mount -t tmpfs tmp /host/tmp
    mkdir -p /host/run/lock /host/run/lvm /host/run/vm; mount --bind / /host/run/vm
    mount --bind "$VM_SHARE" "/host$VM_SHARE"
fi
out=/dev/console err=/dev/console i=0
while [ $i -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do
        case "$(cat $p/name 2>/dev/null)" in out) out=/dev/${p##*/} ;; err) err=/dev/${p##*/} ;; esac
    done
    [ "$out" != /dev/console ] && [ "$err" != /dev/console ] && break
    i=$((i+1)); sleep 0.1
done
cd "$VM_SHARE"
bash /run/ctl/cmd.sh </dev/null >"$out" 2>"$err"
echo $? > /run/ctl/rc
sync; umount -a -r 2>/dev/null; poweroff -f
INIT
    chmod +x "$R/init"
    (cd "$R" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null) > "$B/initramfs"
    mv "$B/initramfs" "$CACHE/initramfs"; cp "$B/k/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
    echo "$STAMP" > "$CACHE/stamp"; rm -rf "$B"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"; flock 9
[ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$STAMP" ] || build
flock -u 9

RUN=$(mktemp -d "${TMPDIR:-/tmp}/sbk-vm.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
mkdir "$RUN/ctl"
cp "$SCRIPT" "$RUN/ctl/script.sh"   # the VM sees ctl/ and the share only
{ printf 'set -- '; printf '%q ' "$@"; echo; echo 'exec bash /run/ctl/script.sh "$@"'; } > "$RUN/ctl/cmd.sh"
{ printf 'VM_SHARE=%q\n' "$SHARE"; printf 'VM_HOSTROOT=%q\n' "${VM_HOSTROOT:-0}"; } > "$RUN/ctl/env.sh"
hostroot=()
[ "${VM_HOSTROOT:-0}" = 1 ] &&
    hostroot=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then accel=(-accel kvm -cpu host); else accel=(-accel tcg,thread=multi -cpu max); fi
disks=()
for ((i = 0; i < ${VM_DISKS:-1}; i++)); do
    truncate -s "${VM_DISK_SIZE:-4G}" "$RUN/disk$i"
    disks+=(-drive "file=$RUN/disk$i,format=raw,if=virtio,cache=unsafe,discard=unmap")
done
mkfifo "$RUN/out" "$RUN/err"
cat "$RUN/out" & c1=$!
cat "$RUN/err" >&2 & c2=$!
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -nographic -machine q35 "${accel[@]}" \
    -smp "$(nproc)" -m "${VM_MEM:-2048}" -no-reboot -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initramfs" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" -serial "file:$RUN/console.log" -monitor none \
    -device virtio-serial-pci \
    -chardev file,id=out,path="$RUN/out" -device virtserialport,chardev=out,name=out \
    -chardev file,id=err,path="$RUN/err" -device virtserialport,chardev=err,name=err \
    -virtfs "local,path=$RUN/ctl,mount_tag=ctl,security_model=passthrough" \
    -virtfs "local,path=$SHARE,mount_tag=share,security_model=passthrough" \
    "${hostroot[@]}" "${disks[@]}" </dev/null
q=$?
: <>"$RUN/out"; : <>"$RUN/err"
wait $c1 $c2
set -e
[ -f "$RUN/ctl/rc" ] && exit "$(cat "$RUN/ctl/rc")"
echo "run-in-vm: the VM ended without a status (qemu exit $q); console:" >&2
tail -n 30 "$RUN/console.log" >&2
[ $q = 124 ] && exit 124
exit 125
