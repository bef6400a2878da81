#!/usr/bin/env bash
# Installs batchfs system-wide (run as root): the binary in /usr/local/bin, the mount(8)
# helper /sbin/mount.fuse.batchfs (so `mount -t fuse.batchfs` and fstab lines work), and
# /etc/batchfs for the accounts file. Builds the release binary first unless BATCHFS_BIN
# names one (e.g. a binary shipped to compute nodes as a resource file).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v fusermount3 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
}
bin=${BATCHFS_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=target/release/batchfs
fi
install -m 0755 "$bin" /usr/local/bin/batchfs
ln -sf /usr/local/bin/batchfs /sbin/mount.fuse.batchfs
install -d -m 0755 /etc/batchfs
echo "installed: /usr/local/bin/batchfs, /sbin/mount.fuse.batchfs; accounts go in /etc/batchfs/accounts.toml"
