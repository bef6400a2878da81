#!/usr/bin/env bash
# Runs the third-party POSIX suite pjdfstest (the Rust port, crate `pjdfstest`) over a real
# batchfs mount on a private, in-memory Azurite, and checks the pass counts against a baseline.
#
#   scripts/pjdfstest.sh                  the groups chmod ftruncate mkdir open rename rmdir
#                                         truncate unlink utimensat
#   scripts/pjdfstest.sh GROUP|CASE...    some groups (open) or cases (open::etxtbsy)
#
# Installs pjdfstest into .tools/pjdfstest the first time (cargo install, a few minutes). A run
# takes about a minute. Not run: symlink, link, chown, mkfifo, mknod, posix_fallocate, chflags
# (batchfs does not support them); the erofs cases skip (they need a remount).
#
# Environment:
#   BATCHFS          the batchfs binary (default target/release/batchfs; built if missing)
#   BATCHFS_AZURITE  Azurite's blob main.js (default .tools/azurite/..., installed by setup.sh)
#   PJDFSTEST        a pjdfstest binary to use instead of .tools/pjdfstest/bin/pjdfstest
#   PJD_TIMEOUT      seconds the suite may run (default 240)
#   PJD_MOUNT_OPTS   extra `batchfs mount` flags (e.g. "--attr-timeout 0")
#   PJD_BACKTRACE    1: keep pjdfstest's backtraces in the log (they show which step failed)
#
# Prints "GROUP: N passed, M failed, K skipped" per group and a total, and exits non-zero
# only if a whole group passes fewer cases than tests/pjdfstest/baseline.txt says, the run
# times out, or the harness itself fails. Every failing case and why it fails is in tests/pjdfstest/known.md. The full
# output of the last run is kept in target/pjdfstest/last-run.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

PJD_VERSION=0.2.2
DEFAULT_GROUPS=(chmod ftruncate mkdir open rename rmdir truncate unlink utimensat)
GROUPS_RUN=("$@")
[ "${#GROUPS_RUN[@]}" -gt 0 ] || GROUPS_RUN=("${DEFAULT_GROUPS[@]}")
BASELINE=$ROOT/tests/pjdfstest/baseline.txt
TIMEOUT=${PJD_TIMEOUT:-240}
LOGDIR=$ROOT/target/pjdfstest
mkdir -p "$LOGDIR"
LOG=$LOGDIR/last-run.log

# --- what it needs ------------------------------------------------------------------------
AZURITE_MAIN=${BATCHFS_AZURITE:-$ROOT/.tools/azurite/node_modules/azurite/dist/src/blob/main.js}
if [ ! -f "$AZURITE_MAIN" ] || ! command -v fusermount3 >/dev/null || ! command -v findmnt >/dev/null; then
    scripts/setup.sh
fi

PJD=${PJDFSTEST:-$ROOT/.tools/pjdfstest/bin/pjdfstest}
if [ ! -x "$PJD" ] || [ "$("$PJD" --version 2>/dev/null)" != "pjdfstest $PJD_VERSION" ]; then
    [ -z "${PJDFSTEST:-}" ] || { echo "pjdfstest: PJDFSTEST=$PJDFSTEST is not pjdfstest $PJD_VERSION" >&2; exit 2; }
    command -v cargo >/dev/null || { echo "pjdfstest: cargo is needed to install pjdfstest" >&2; exit 2; }
    # exacl (a dependency) links against libacl.
    if ! dpkg -s libacl1-dev >/dev/null 2>&1; then
        echo "pjdfstest: installing libacl1-dev"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libacl1-dev >/dev/null
    fi
    echo "pjdfstest: installing pjdfstest $PJD_VERSION into .tools/pjdfstest (a few minutes, once)"
    nice -n 10 cargo install pjdfstest --version "$PJD_VERSION" --locked --quiet \
        --root "$ROOT/.tools/pjdfstest"
fi

BIN=${BATCHFS:-$ROOT/target/release/batchfs}
if [ ! -x "$BIN" ]; then
    [ -z "${BATCHFS:-}" ] || { echo "pjdfstest: BATCHFS=$BATCHFS is not executable" >&2; exit 2; }
    echo "pjdfstest: building batchfs"
    nice -n 10 cargo build --release --quiet --bin batchfs
fi

# Two users besides root, each with its own primary group, for the tests that switch users.
users=()
for u in tests nobody daemon bin; do
    if g=$(id -gn "$u" 2>/dev/null) && [ "$(id -u "$u")" != 0 ]; then
        users+=("[\"$u\", \"$g\"]")
    fi
    [ "${#users[@]}" -lt 2 ] || break
done
[ "${#users[@]}" -eq 2 ] || { echo "pjdfstest: needs two unprivileged users (nobody, daemon)" >&2; exit 2; }

# --- Azurite, a config, a mount -----------------------------------------------------------
# Short paths: the socket cases bind(2) a name deep inside the mount, and sun_path holds 107
# bytes. Searchable by all: the cases that switch users walk this path as those users.
WORK=$(mktemp -d /tmp/bfs-pjd.XXXXXX)
chmod 755 "$WORK"
MP=$WORK/m
AZ_PID=
FS_PID=
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    set +e
    if [ -n "$FS_PID" ]; then
        # The daemon unmounts itself on SIGTERM; detach lazily if something still holds it.
        kill -TERM "$FS_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$FS_PID" 2>/dev/null || break; sleep 0.1; done
        if findmnt -M "$MP" >/dev/null 2>&1; then
            "$BIN" unmount --lazy "$MP" >/dev/null 2>&1 || umount -l "$MP" 2>/dev/null
        fi
        for _ in $(seq 30); do kill -0 "$FS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$FS_PID" 2>/dev/null
        wait "$FS_PID" 2>/dev/null
    fi
    if [ -n "$AZ_PID" ]; then
        kill -TERM "$AZ_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$AZ_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$AZ_PID" 2>/dev/null
        wait "$AZ_PID" 2>/dev/null
    fi
    [ -f "$WORK/batchfs.log" ] && cp "$WORK/batchfs.log" "$LOGDIR/batchfs.log"
    findmnt -M "$MP" >/dev/null 2>&1 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    port_free "$port" || continue
    node "$AZURITE_MAIN" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
        --extentMemoryLimit 4096 --skipApiVersionCheck --loose --disableTelemetry \
        >"$WORK/azurite.log" 2>&1 &
    AZ_PID=$!
    for _ in $(seq 150); do
        port_free "$port" || break
        kill -0 "$AZ_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$AZ_PID" 2>/dev/null && ! port_free "$port"; then break; fi
    wait "$AZ_PID" 2>/dev/null || true # the port was taken meanwhile: try another
    AZ_PID=
done
[ -n "$AZ_PID" ] || { echo "pjdfstest: Azurite did not start" >&2; cat "$WORK/azurite.log" >&2; exit 2; }

DEV_ACCOUNT=devstoreaccount1
DEV_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
(umask 077; cat >"$WORK/accounts.toml" <<TOML
[[account]]
name = "pjd"
[account.storage]
account = "$DEV_ACCOUNT"
endpoint = "http://127.0.0.1:$port/$DEV_ACCOUNT"
key = "$DEV_KEY"
TOML
)

mkdir "$MP"
# --allow-other: the suite switches to other users (seteuid) for its permission cases; the
# mount uses default_permissions, so the kernel still checks every mode.
# shellcheck disable=SC2086
"$BIN" mount --foreground --allow-other --config "$WORK/accounts.toml" \
    --log-file "$WORK/batchfs.log" ${PJD_MOUNT_OPTS:-} "$MP" >"$WORK/batchfs.out" 2>&1 &
FS_PID=$!
for _ in $(seq 300); do
    findmnt -M "$MP" >/dev/null 2>&1 && break
    kill -0 "$FS_PID" 2>/dev/null || break
    sleep 0.1
done
findmnt -M "$MP" >/dev/null 2>&1 || {
    echo "pjdfstest: the mount failed" >&2
    cat "$WORK/batchfs.out" "$WORK/batchfs.log" >&2 2>/dev/null
    exit 2
}

# A container to run in, and a second one as the "other file system" (rename across
# containers fails with EXDEV, which is what the suite's exdev cases check).
STORE=$MP/pjd/storage
mkdir "$STORE/pjdfstest" "$STORE/pjdfstest-other"
mkdir "$STORE/pjdfstest/run"

cat >"$WORK/pjdfstest.toml" <<TOML
# Not enabled: chflags, nfsv4_acls, stat_st_birthtime (not Linux), rename_ctime (batchfs keeps
# no ctime), posix_fallocate (not one of the groups run). No remounts (the erofs cases skip).
[features]
utimensat = {}
utime_now = {}
secondary_fs = "$STORE/pjdfstest-other"

[settings]
# Blob Last-Modified times have 1 s granularity: the cases that check a time changed nap this long.
naptime = 1.1
allow_remount = false

[dummy_auth]
entries = [${users[0]}, ${users[1]}]
TOML

# An argument is a group (chmod) or the start of a case's name (open::interact_2gb).
# Only whole groups are held to the baseline.
patterns=()
groups=()
whole=" "
for g in "${GROUPS_RUN[@]}"; do
    case $g in *::*) patterns+=("$g") ;; *) patterns+=("$g::"); whole+="$g " ;; esac
    case " ${groups[*]} " in *" ${g%%::*} "*) ;; *) groups+=("${g%%::*}") ;; esac
done
echo "pjdfstest $PJD_VERSION over batchfs ($BIN), Azurite on 127.0.0.1:$port, groups: ${GROUPS_RUN[*]}"
status=0
(cd / && NO_COLOR=1 RUST_BACKTRACE=${PJD_BACKTRACE:-0} timeout -k 10 "$TIMEOUT" "$PJD" -c "$WORK/pjdfstest.toml" \
    -p "$STORE/pjdfstest/run" "${patterns[@]}") >"$LOG" 2>&1 || status=$?
sed -i 's/\x1b\[[0-9;]*m//g' "$LOG"
timed_out=0
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "pjdfstest: TIMED OUT after ${TIMEOUT}s; counts below are of the cases that ran" >&2
    timed_out=1
fi

# --- counts and the baseline --------------------------------------------------------------
results=$(awk '
    / (ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)$/ {
        split($1, p, "::"); g = p[1]
        if ($NF == "ok") pass[g]++
        else if ($NF == "skipped") skip[g]++
        else fail[g]++
        seen[g] = 1
    }
    END { for (g in seen) printf "%s %d %d %d\n", g, pass[g], fail[g], skip[g] }' "$LOG" | sort)

regressed=0
tp=0; tf=0; ts=0
for g in "${groups[@]}"; do
    read -r _ p f s < <(awk -v g="$g" '$1 == g' <<<"$results"; echo "$g 0 0 0") || true
    tp=$((tp + p)); tf=$((tf + f)); ts=$((ts + s))
    want=$(awk -v g="$g" '$1 == g { print $2 }' "$BASELINE" 2>/dev/null || true)
    note=
    if [[ $whole == *" $g "* ]] && [ -n "$want" ] && [ "$p" -lt "$want" ]; then
        note="   << below the baseline of $want"
        regressed=1
    fi
    printf '%-10s %3d passed, %3d failed, %3d skipped%s\n' "$g:" "$p" "$f" "$s" "$note"
done
printf '%-10s %3d passed, %3d failed, %3d skipped\n' "total:" "$tp" "$tf" "$ts"
echo "(every case and the reasons for failures: $LOG)"

# Failures that tests/pjdfstest/known.md does not explain: new defects, or new flakes.
KNOWN=$ROOT/tests/pjdfstest/known.md
unknown=$(awk '/ FAILED$/ { print $1 }' "$LOG" | while read -r c; do
    grep -qF "\`$c\`" "$KNOWN" 2>/dev/null || echo "  $c"
done)
if [ -n "$unknown" ]; then
    echo "failing cases not listed in tests/pjdfstest/known.md:"
    echo "$unknown"
fi

if [ "$tp" -eq 0 ]; then
    echo "pjdfstest: nothing passed; the harness is broken:" >&2
    tail -20 "$LOG" >&2
    exit 2
fi
if [ "$timed_out" = 1 ]; then
    exit 1
fi
if [ "$regressed" = 1 ]; then
    echo "pjdfstest: fewer cases pass than tests/pjdfstest/baseline.txt records" >&2
    exit 1
fi
exit 0
