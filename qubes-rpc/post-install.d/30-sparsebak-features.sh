#!/bin/sh
# Run by qubes-core-agent in the template after package changes (installed as
# /etc/qubes/post-install.d/30-sparsebak-features.sh by sparsebak-vm): tells
# dom0 which sparsebak services this template's qubes offer, so dom0 can check
# a qube before using it:
#   qvm-features backup-qube supported-rpc.sparsebak.Backup   # prints 1
if [ -n "$(command -v qvm-features-request)" ]; then
    qvm-features-request \
        supported-rpc.sparsebak.Backup=1 \
        supported-rpc.sparsebak.Restore=1 \
        supported-rpc.sparsebak.Admin=1 \
        supported-rpc.sparsebak.SshRelay=1
fi
