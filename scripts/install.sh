#!/bin/bash
# Installs sparsebak on plain Linux (not Qubes): both binaries, their man
# pages and bash/zsh/fish completions, an example config and the systemd
# service and timer (the timer disabled).
#   bash scripts/install.sh [PREFIX]        default PREFIX: /usr/local
# DESTDIR=/some/root stages everything under that root instead (packaging,
# and the test that checks this script). Builds the release binaries first
# if they are missing; run as root for a real install.
PREFIX=${1:-/usr/local}
D=${DESTDIR:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_release_bins
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
target/release/sparsebak-docgen "$docs"
install -D -m 0755 target/release/sparsebak "$D$PREFIX/bin/sparsebak"
install -D -m 0755 target/release/sparsebak-receiver "$D$PREFIX/bin/sparsebak-receiver"
install -d -m 0755 "$D$PREFIX/share/man/man1"
install -m 0644 "$docs"/man/*/*.1 "$D$PREFIX/share/man/man1/"
for n in sparsebak sparsebak-receiver; do
    install -D -m 0644 "$docs/bash/$n" "$D$PREFIX/share/bash-completion/completions/$n"
    install -D -m 0644 "$docs/zsh/_$n" "$D$PREFIX/share/zsh/site-functions/_$n"
    install -D -m 0644 "$docs/fish/$n.fish" "$D$PREFIX/share/fish/vendor_completions.d/$n.fish"
done
# The config is the admin's: never overwritten.
if [ ! -e "$D/etc/sparsebak/sparsebak.toml" ]; then
    install -D -m 0644 dom0-agent/sparsebak.toml.example "$D/etc/sparsebak/sparsebak.toml"
fi
install -d -m 0700 "$D/var/lib/sparsebak"
# The units, pointing at this PREFIX's binary.
install -d -m 0755 "$D/etc/systemd/system"
sed "s|/usr/bin/sparsebak|$PREFIX/bin/sparsebak|; s|file:///usr/share/doc/sparsebak-dom0/README.md|man:sparsebak(1)|" \
    dom0-agent/systemd/sparsebak-backup.service > "$D/etc/systemd/system/sparsebak-backup.service"
sed "s|file:///usr/share/doc/sparsebak-dom0/README.md|man:sparsebak(1)|" \
    dom0-agent/systemd/sparsebak-backup.timer > "$D/etc/systemd/system/sparsebak-backup.timer"
chmod 0644 "$D/etc/systemd/system/sparsebak-backup."{service,timer}
echo "installed sparsebak under ${D:-/}$PREFIX (config /etc/sparsebak/sparsebak.toml, timer disabled)"
