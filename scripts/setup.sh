#!/usr/bin/env bash
# Installs what batchfs needs on a bare Debian machine (run as root): FUSE 3, Node.js with a
# project-local Azurite (the Azure Storage emulator used by the demo and the tests), and the
# release build. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# 3.35 is the newest release that declares support for the Node.js of Debian 12 (18).
AZURITE_VERSION=3.35.0
AZURITE_MAIN=.tools/azurite/node_modules/azurite/dist/src/blob/main.js
# Microsoft's Python SDK, the independent client of tests/corpus.rs.
AZURE_BLOB_PY_VERSION=12.31.1
# Microsoft's Batch SDK: tests/batch_standin.py checks Shared Key signatures with its signing
# code (azure.batch._patch.BatchSharedKeyAuthPolicy), and the benchmark uses it as the reference
# client.
AZURE_BATCH_PY_VERSION=15.1.0

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
{ command -v setpriv && command -v findmnt; } >/dev/null || missing+=(util-linux)
command -v pgrep >/dev/null || missing+=(procps)
command -v diff >/dev/null || missing+=(diffutils)
# The write-path tests run these as a user would.
command -v rsync >/dev/null || missing+=(rsync)
command -v tar >/dev/null || missing+=(tar)
# tests/xattrs.rs reads and sets extended attributes as a user would.
command -v getfattr >/dev/null || missing+=(attr)
command -v cc >/dev/null || missing+=(gcc)
# The Entra ID tests run Azurite and a stand-in token endpoint over HTTPS, with a
# certificate they make.
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
# `mount -t fuse.batchfs` goes through mount(8).
command -v mount >/dev/null || missing+=(mount)
# tests/corpus.rs writes and checks blobs with Microsoft's Python SDK (azure-storage-blob), in
# a project-local venv made by Debian's Python (whatever other python3 is first on PATH).
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2; exit 1; }

installed=$(node -e "try{console.log(require('./.tools/azurite/node_modules/azurite/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ ! -f "$AZURITE_MAIN" ] || [ "$installed" != "$AZURITE_VERSION" ]; then
    echo "setup: installing azurite@$AZURITE_VERSION into .tools/azurite"
    mkdir -p .tools/azurite
    npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi

# Each pinned package is installed into the venv unless that version is there already.
py_pin() { # PACKAGE MODULE VERSION
    local have
    have=$(.tools/py/bin/python -c "import $2 as m; print(m.__version__)" 2>/dev/null || true)
    if [ "$have" != "$3" ]; then
        echo "setup: installing $1==$3 into .tools/py"
        [ -x .tools/py/bin/python ] || /usr/bin/python3 -m venv .tools/py
        .tools/py/bin/python -m pip install --quiet --disable-pip-version-check "$1==$3" >/dev/null
    fi
}
py_pin azure-storage-blob azure.storage.blob "$AZURE_BLOB_PY_VERSION"
py_pin azure-batch azure.batch "$AZURE_BATCH_PY_VERSION"

if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: cargo is missing; install a Rust toolchain (1.88 or newer)" >&2
        exit 1
    fi
fi
if [ "${1:-}" = "--build" ]; then
    cargo build --release --quiet --bin batchfs --example seed
fi
