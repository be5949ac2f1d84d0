#!/bin/sh
# %check of both specs: a real backup, change, backup, restore and verify
# of a small image with the given agent and receiver binaries, then a
# recovery from the archive and the passphrase alone.
set -eu
agent=$1 receiver=$2
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
"$agent" --version
"$receiver" --version
mkdir "$t/vols"
head -c 3000000 /dev/urandom > "$t/vols/disk.img"
echo "rpm check passphrase" > "$t/passphrase"
S="$agent --dest file://$t/archive --meta-dir $t/meta --local $t/vols --remote-receiver $receiver --passphrase-file $t/passphrase"
$S arch-init --chunk-size 64K
$S backup disk.img
dd if=/dev/urandom of="$t/vols/disk.img" bs=4096 count=10 seek=100 conv=notrunc 2>/dev/null
$S backup disk.img
$S restore disk.img --save-to "$t/restored.img"
cmp "$t/vols/disk.img" "$t/restored.img"
$S verify disk.img
$S arch-check
rm -rf "$t/meta"
$S arch-import
$S verify disk.img
echo "rpm-check: backup, restore, verify and recovery OK"
