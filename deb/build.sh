#!/bin/bash
# Builds the template side of sparsebak as a Debian package, with Debian's
# own dpkg-deb, offline, from the release receiver and the source tree:
#   bash deb/build.sh [OUTDIR]   (default: target/deb)
# Many backup qubes run on Debian templates; this is the sparsebak-vm RPM's
# content (receiver, qrexec services, rpc-config, post-install hook, example
# config) plus its man page and completions. Then, like the RPM's %check,
# it runs a real backup, restore, verify and recovery through the packaged
# receiver (extracted from the .deb) and prints "deb-check: ... OK".
OUT=$(realpath -m "${1:-$(dirname "${BASH_SOURCE[0]}")/../target/deb}")
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
need_release_bins
arch=$(dpkg --print-architecture)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
st=$top/sparsebak-vm
docs=$top/docs
target/release/sparsebak-docgen "$docs"
# The maintainer address (lintian refuses one at localhost).
maint=${SPARSEBAK_MAINTAINER:-sparsebak developers <sparsebak@users.noreply.github.com>}
install -D -m 0755 target/release/sparsebak-receiver "$st/usr/bin/sparsebak-receiver"
# Stripped as dh_strip does (the release build keeps line tables).
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    "$st/usr/bin/sparsebak-receiver"
for s in Backup Restore Admin SshRelay; do
    install -D -m 0755 "qubes-rpc/sparsebak.$s" "$st/etc/qubes-rpc/sparsebak.$s"
    install -D -m 0644 "qubes-rpc/rpc-config/sparsebak.$s" "$st/etc/qubes/rpc-config/sparsebak.$s"
done
install -D -m 0755 qubes-rpc/post-install.d/30-sparsebak-features.sh \
    "$st/etc/qubes/post-install.d/30-sparsebak-features.sh"
install -D -m 0644 vm-receiver/receiver.toml.example "$st/etc/sparsebak/receiver.toml"
for m in "$docs"/man/sparsebak-receiver/*.1; do
    install -D -m 0644 "$m" "$st/usr/share/man/man1/$(basename "$m")"
    gzip -9n "$st/usr/share/man/man1/$(basename "$m")"
done
install -D -m 0644 "$docs/bash/sparsebak-receiver" \
    "$st/usr/share/bash-completion/completions/sparsebak-receiver"
install -D -m 0644 "$docs/zsh/_sparsebak-receiver" \
    "$st/usr/share/zsh/vendor-completions/_sparsebak-receiver"
install -D -m 0644 "$docs/fish/sparsebak-receiver.fish" \
    "$st/usr/share/fish/vendor_completions.d/sparsebak-receiver.fish"
install -D -m 0644 README.md "$st/usr/share/doc/sparsebak-vm/README.md"
cat > "$top/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sparsebak

Files: *
Copyright: 2025-2026 sparsebak developers
License: GPL-3.0-or-later
 On Debian systems the full text is in /usr/share/common-licenses/GPL-3.
COPY
install -D -m 0644 "$top/copyright" "$st/usr/share/doc/sparsebak-vm/copyright"
# Debian's changelog, of this build (a non-native package must have one).
when=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cat > "$top/changelog.Debian" <<CL
sparsebak ($version-1) unstable; urgency=medium

  * Built from the sparsebak source tree with deb/build.sh; what changed
    is in the project's README and its version history.

 -- $maint  $(LC_ALL=C date -R -u -d "@$when")
CL
gzip -9n -c "$top/changelog.Debian" > "$top/changelog.Debian.gz"
install -D -m 0644 "$top/changelog.Debian.gz" "$st/usr/share/doc/sparsebak-vm/changelog.Debian.gz"
# Findings kept on purpose, each with why (lintian reads this).
install -D -m 0644 deb/lintian-overrides "$st/usr/share/lintian/overrides/sparsebak-vm"
# The shared libraries the receiver links (libc, libgcc), as Debian's
# own dpkg-shlibdeps finds them.
mkdir -p "$top/debian"
printf 'Source: sparsebak\n\nPackage: sparsebak-vm\nArchitecture: any\n' > "$top/debian/control"
shlibs=$(cd "$top" && dpkg-shlibdeps -O -e "$st/usr/bin/sparsebak-receiver" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "dpkg-shlibdeps found no libraries" >&2; exit 1; }
mkdir -p "$st/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$st" | cut -f1)
cat > "$st/DEBIAN/control" <<CTRL
Package: sparsebak-vm
Version: $version-1
Architecture: $arch
Maintainer: $maint
Installed-Size: $size
Depends: $shlibs, qubes-core-agent-qrexec
Recommends: openssh-client
Section: admin
Priority: optional
Description: fast incremental backups of Qubes and thin-LVM volumes (receiver)
 The backup-qube half of sparsebak: receives encrypted chunk streams over
 qrexec (or ssh) and writes a sparse-bundle archive, one directory per
 session and one file per chunk; prunes by renames; streams sessions back
 for restore and verify. Runs unprivileged and never sees the key.
CTRL
# Everything under /etc is the admin's to change, and kept across
# upgrades (Debian policy 10.7.2): the config, the services, their
# rpc-config and the post-install hook.
echo /etc/sparsebak/receiver.toml > "$st/DEBIAN/conffiles"
for s in Backup Restore Admin SshRelay; do
    echo "/etc/qubes-rpc/sparsebak.$s" >> "$st/DEBIAN/conffiles"
    echo "/etc/qubes/rpc-config/sparsebak.$s" >> "$st/DEBIAN/conffiles"
done
echo /etc/qubes/post-install.d/30-sparsebak-features.sh >> "$st/DEBIAN/conffiles"
cat > "$st/DEBIAN/postinst" <<'POST'
#!/bin/sh
# Tells dom0 which services this template offers (Qubes runs the hook on
# template updates too; this covers the install itself). Outside Qubes
# the hook does nothing.
set -e
if [ "$1" = configure ]; then
    /etc/qubes/post-install.d/30-sparsebak-features.sh || true
fi
POST
chmod 0755 "$st/DEBIAN/postinst"
mkdir -p "$OUT"
deb="$OUT/sparsebak-vm_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$st" "$deb" >/dev/null
# The check: the packaged receiver, extracted, through a real backup.
x=$top/extracted
dpkg-deb -x "$deb" "$x"
sh rpm/rpm-check.sh target/release/sparsebak "$x/usr/bin/sparsebak-receiver" |
    sed 's/^rpm-check:/deb-check:/' | grep '^deb-check:'
echo "$deb"
