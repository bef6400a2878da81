#!/usr/bin/env bash
# Benchmarks: batchfs against rclone mount and against the ceiling, the project's own blob
# client doing the same transfer without FUSE. Every system moves the same data to and from
# the same Azurite in the same run, on two backends:
#   R  Azurite on loopback
#   S  the same Azurite behind a shaping proxy: +20 ms before each response, 25 MiB/s per
#      connection (a compute node talking to cloud storage)
# The case `batch` measures the Batch service instead: `ls -l` of a job's 10,000 tasks and `cat`
# of 1,000 tasks' stderr.txt through batchfs, against Microsoft's azure-batch SDK doing the same
# (benches/batch_sdk.py), both on tests/batch_standin.py with 20 ms before each response (B).
# It needs neither Azurite nor rclone.
# The case `disk` measures the disk tier (--disk-cache) on a directory on the same disk as the
# rest of the run's files: random reads with whole-blob fills against rclone's full VFS cache,
# a re-read of a blob 4 x BENCH_SIZE (larger than the RAM cache) from the tier, after a
# remount too, and a warm read by kernel passthrough, against reading the tier's data file
# itself.
# It prints a table of medians and writes it to docs/benchmarks.md.
#
# Settings (environment): BENCH_SIZE (bytes per large blob, default 1 GiB), REPEAT (runs per
# measurement, default 3), RANDOM_SECS (random-read duration, default 30), BENCH_OUT (default
# docs/benchmarks.md), BENCH_RAW (default docs/benchmarks.raw, or BENCH_OUT with .raw for .md
# when BENCH_OUT is set, so a trial run never touches docs/), BACKENDS (default "R S"), CASES
# (default "read write batch disk"), REPEAT_SMALL (runs of the many-small-files cases and of
# the batch case, default 1: rclone takes minutes for each), TMPDIR (where the run's files
# go, default /tmp; the disk case needs it on a disk, not tmpfs).
# Raw figures are kept in docs/benchmarks.raw: a run replaces the figures it measured and
# keeps the others, so `CASES=write` refreshes the write rows of the table only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE=${BENCH_SIZE:-$((1 << 30))}
REPEAT=${REPEAT:-3}
export REPEAT_SMALL=${REPEAT_SMALL:-1}
RANDOM_SECS=${RANDOM_SECS:-30}
OUT=${BENCH_OUT:-docs/benchmarks.md}
BACKENDS=${BACKENDS:-R S}
CASES=${CASES:-read write batch disk}
if [ -n "${BENCH_RAW:-}" ]; then
    RAW=$BENCH_RAW
elif [ -n "${BENCH_OUT:-}" ]; then
    RAW=${OUT%.md}.raw
else
    RAW=docs/benchmarks.raw
fi
has_case() { [[ " $CASES " == *" $1 "* ]]; }
# The cases on storage (Azurite, rclone, the blob client); `batch` needs none of it.
storage_cases() { has_case read || has_case write || has_case disk; }

scripts/setup.sh --build
export PATH="$HOME/.cargo/bin:$PATH"
missing=()
tools=(python3)
if storage_cases; then tools+=(rclone fio bindfs); fi
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if storage_cases; then cargo build --release --quiet --example benchtool; fi
BIN=$ROOT/target/release/batchfs
TOOL=$ROOT/target/release/examples/benchtool

WORK=$(mktemp -d "${TMPDIR:-/tmp}/batchfs-bench.XXXXXX")
MP=$WORK/mnt
mkdir -p "$MP"
PIDS=()
cleanup() {
    fusermount3 -u -z "$MP" 2>/dev/null || true
    fusermount3 -u -z "$WORK/bind" 2>/dev/null || true
    umount "$WORK/tmpfs" 2>/dev/null || true
    umount "$WORK/src" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
if has_case disk && [[ "$(stat -f -c %T "$WORK")" =~ ^(tmpfs|ramfs)$ ]]; then
    echo "bench: $WORK is in memory ($(stat -f -c %T "$WORK")); the disk case needs a disk: set TMPDIR" >&2
    exit 1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export BENCH_ACCOUNT=devstoreaccount1
export BENCH_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
endpoint() { if [ "$1" = R ]; then echo "http://127.0.0.1:$AZ_PORT/devstoreaccount1"; else echo "http://127.0.0.1:$SHAPE_PORT/devstoreaccount1"; fi; }

# Starts a fresh Azurite (in memory) and the shaping proxy in front of it, with the container
# `bench`, and writes the batchfs and rclone configs for both backends. Azurite frees the
# memory of deleted blobs late, so each write backend starts from a fresh one.
AZ_PID=""
start_backends() {
    if [ -n "$AZ_PID" ]; then
        kill "$AZ_PID" "$SHAPE_PID" 2>/dev/null || true
        wait "$AZ_PID" "$SHAPE_PID" 2>/dev/null || true
    fi
    AZ_PORT=$(free_port)
    node .tools/azurite/node_modules/azurite/dist/src/blob/main.js --blobHost 127.0.0.1 \
        --blobPort "$AZ_PORT" --inMemoryPersistence --extentMemoryLimit 12000 \
        --skipApiVersionCheck --loose --disableTelemetry >"$WORK/azurite.log" 2>&1 &
    AZ_PID=$!
    PIDS+=("$AZ_PID")
    SHAPE_PORT=$(free_port)
    "$TOOL" shaper "$SHAPE_PORT" "$AZ_PORT" 20 $((25 << 20)) &
    SHAPE_PID=$!
    PIDS+=("$SHAPE_PID")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$AZ_PORT") 2>/dev/null && break; sleep 0.1; done
    export BENCH_ENDPOINT; BENCH_ENDPOINT=$(endpoint R)
    "$TOOL" put bench seed 1
    # `local`: the callers' own loops over backends use `b` too (the write case measured S
    # twice while this loop overwrote its `b`).
    local b
    for b in R S; do
        cat >"$WORK/batchfs-$b.toml" <<EOF
[[account]]
name = "bench"
[account.storage]
account = "devstoreaccount1"
endpoint = "$(endpoint "$b")"
key = "$BENCH_KEY"
container = "bench"
EOF
        chmod 600 "$WORK/batchfs-$b.toml"
        # rclone 1.60 takes no endpoint URL with a key (only a domain suffix, or the emulator
        # on port 10000), so it gets a container SAS URL on the same endpoint.
        cat >"$WORK/rclone-$b.conf" <<EOF
[az]
type = azureblob
sas_url = $(endpoint "$b")/bench?$("$TOOL" sas)
EOF
    done
}
if storage_cases; then start_backends; fi

if has_case read; then
    echo "bench: seeding 4 x $((SIZE >> 20)) MiB"
    for i in 0 1 2 3; do "$TOOL" put bench "big$i" "$SIZE"; done
fi

RCLONE_BEST=(--vfs-cache-mode full --vfs-read-ahead 512M --buffer-size 64M
    --vfs-read-chunk-size 32M --vfs-read-chunk-size-limit 512M)

# mount SYSTEM BACKEND: a fresh, cold mount at $MP whose files are at $DATA.
mount_fs() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    case $1 in
    batchfs) # more options for batchfs may follow the backend; BATCHFS_CACHE, the RAM cache
        "$BIN" mount --config "$WORK/batchfs-$2.toml" --cache-size "${BATCHFS_CACHE:-256M}" "${@:3}" "$MP"
        DATA=$MP/bench/storage
        ;;
    rclone-default | rclone-best)
        local extra=()
        [ "$1" = rclone-best ] && extra=("${RCLONE_BEST[@]}" --cache-dir "$WORK/rc-cache")
        rm -rf "$WORK/rc-cache"
        rclone mount "az:bench" "$MP" --config "$WORK/rclone-$2.conf" --read-only --daemon \
            "${extra[@]}"
        for _ in $(seq 100); do mountpoint -q "$MP" && break; sleep 0.1; done
        DATA=$MP
        ;;
    rclone-writes)
        rm -rf "$WORK/rc-cache"
        # Uploads start at close, 16 at a time: rclone's fastest way to storage.
        rclone mount "az:bench" "$MP" --config "$WORK/rclone-$2.conf" --daemon \
            --vfs-cache-mode writes --cache-dir "$WORK/rc-cache" --vfs-write-back 0 --transfers 16
        for _ in $(seq 100); do mountpoint -q "$MP" && break; sleep 0.1; done
        DATA=$MP
        ;;
    esac
}
unmount_fs() {
    fusermount3 -u "$MP" 2>/dev/null || fusermount3 -u -z "$MP"
    for _ in $(seq 50); do mountpoint -q "$MP" || break; sleep 0.1; done
}

now() { date +%s.%N; }
secs_since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
cpu_median() { # "busy daemon azurite;..." of each run -> the median of each column
    python3 -c 'import sys, statistics
runs = [r.split() for r in sys.argv[1].split(";") if r.strip()]
print("/".join(f"{statistics.median(float(r[i]) for r in runs):g}" for i in range(3)))' "$1"
}
median() { python3 -c 'import sys, statistics; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }
mibs() { python3 -c "import sys; print(f'{float(sys.argv[1]) / 1048576 / float(sys.argv[2]):.1f}')" "$1" "$2"; }

RESULTS=$WORK/results
: >"$RESULTS"
record() { echo "$*" >>"$RESULTS"; echo "  $*"; } # case backend system value unit
# What the table says of a case's run (its date, its number of runs), as `KIND CASE - VALUE
# UNIT`, merged like the figures: a run of one case leaves the others' as they were.
meta() { echo "$1 $2 - $3 $4" >>"$RESULTS"; }
TODAY=$(date +%Y%m%d)
if has_case read; then meta date read "$TODAY" date; meta repeat read "$REPEAT" runs; fi
if has_case write; then
    meta date write "$TODAY" date; meta repeat write "$REPEAT" runs
    meta repeat_small write "$REPEAT_SMALL" runs
fi
if has_case batch; then meta date batch "$TODAY" date; meta repeat_small batch "$REPEAT_SMALL" runs; fi
# The disk case's RAM cache: 256 MiB, a quarter of the 1 GiB blob and a sixteenth of the 4 GiB
# one; as small a share of the blobs in a trial run with a smaller BENCH_SIZE, so that its
# re-read comes from the disk tier there too and not from RAM.
DISK_RAM=$(((SIZE / 4) < (256 << 20) ? (SIZE / 4) : (256 << 20)))
if has_case disk; then
    meta date disk "$TODAY" date; meta repeat disk "$REPEAT" runs
    meta size disk "$SIZE" bytes; meta rsecs disk "$RANDOM_SECS" s; meta ram disk "$DISK_RAM" bytes
fi
if storage_cases; then meta version rclone "$(rclone version | awk 'NR == 1 {print $2}')" -; fi

seq_read() { # system backend readers -> seconds
    mount_fs "$1" "$2"
    local start m0; start=$(now); m0=$(cpu_mark)
    local pids=()
    for i in $(seq 0 $(($3 - 1))); do cat "$DATA/big$i" >/dev/null & pids+=($!); done
    wait "${pids[@]}"
    secs_since "$start"
    cpu_use "$m0" "$(cpu_mark)" $((SIZE * $3)) >"$WORK/cpu"
    [ "$1" = batchfs ] && "$BIN" stats "$MP" | awk '$1 == "get_requests" {print $2}' >"$WORK/gets"
    if [ "$1" = batchfs ] && [ "$3" = 4 ]; then
        local pid; pid=$(pgrep -f -- "batchfs mount .*$MP\$")
        awk '/VmHWM/ {print $2}' "/proc/$pid/status" >"$WORK/rss"
    fi
    unmount_fs
}

daemon_hwm_mib() { # peak RSS of the batchfs daemon serving $MP, in MiB
    local pid; pid=$(pgrep -f -- "batchfs mount .*$MP\$")
    echo $(( $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") / 1024 ))
}

# CPU time spent so far, in jiffies (1/100 s): machine-wide busy and total, then the daemon
# serving $MP (0 when none) and Azurite. Two marks around a measurement say what bounded it.
cpu_mark() {
    local pid daemon=0
    pid=$(pgrep -f -- "batchfs mount .*$MP\$" || true)
    [ -n "$pid" ] && daemon=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    echo "$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat) $daemon $(awk '{print $14 + $15}' "/proc/$AZ_PID/stat")"
}
# FROM TO BYTES: "busy% daemon-s/GiB azurite-s/GiB" between two cpu_marks.
cpu_use() {
    python3 -c 'import sys
a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]
gib = float(sys.argv[3]) / 1073741824
d = [y - x for x, y in zip(a, b)]
print(f"{100 * d[0] / max(d[1], 1):.0f} {d[2] / 100 / gib:.2f} {d[3] / 100 / gib:.2f}")' "$1" "$2" "$3"
}

has_case read && for b in $BACKENDS; do
    echo "bench: backend $b"
    export BENCH_ENDPOINT; BENCH_ENDPOINT=$(endpoint "$b")
    for readers in 1 4; do
        names=(); for i in $(seq 0 $((readers - 1))); do names+=("big$i"); done
        # The ceiling is the best of several shapes: many small ranges, fewer large ones, and
        # one GET of each whole blob. Every shape and system runs once per round, so that a
        # drift of the machine over the run touches them all alike.
        shapes=("$((2 << 20)) 16" "$((8 << 20)) 8" "$((32 << 20)) 4" "$SIZE $readers")
        declare -A t=() cpu=()
        g=()
        for _ in $(seq "$REPEAT"); do
            for shape in "${shapes[@]}"; do
                read -r chunk par <<<"$shape"
                m0=$(cpu_mark)
                t[$shape]+=" $("$TOOL" ceiling "$chunk" "$par" bench "${names[@]}")"
                cpu[$shape]+="$(cpu_use "$m0" "$(cpu_mark)" $((SIZE * readers)));"
            done
            for sys in batchfs rclone-default rclone-best; do
                t[$sys]+=" $(seq_read "$sys" "$b" "$readers")"
                cpu[$sys]+="$(cat "$WORK/cpu");"
                [ "$sys" = batchfs ] && g+=("$(cat "$WORK/gets")")
            done
        done
        best=0; best_shape=""
        for shape in "${shapes[@]}"; do
            read -r chunk par <<<"$shape"
            # shellcheck disable=SC2086 # the times are a list
            rate=$(mibs $((SIZE * readers)) "$(median ${t[$shape]})")
            echo "  ceiling $((chunk >> 20)) MiB x $par: $rate MiB/s; CPU (busy %, Azurite s/GiB): ${cpu[$shape]}"
            if python3 -c "import sys; sys.exit(not float('$rate') > float('$best'))"; then
                best=$rate; best_shape=$shape
            fi
        done
        record "seq$readers $b ceiling $best MiB/s"
        read -r chunk par <<<"$best_shape"
        [ "$chunk" = "$SIZE" ] && chunk=whole || chunk="$((chunk >> 20))MiB"
        record "seqshape$readers $b ceiling ${chunk}x$par shape"
        record "seqcpu$readers $b ceiling $(cpu_median "${cpu[$best_shape]}") cpu"
        for sys in batchfs rclone-default rclone-best; do
            # shellcheck disable=SC2086
            record "seq$readers $b $sys $(mibs $((SIZE * readers)) "$(median ${t[$sys]})") MiB/s"
            record "seqcpu$readers $b $sys $(cpu_median "${cpu[$sys]}") cpu"
        done
        # Requests per GiB read: what the transaction bill and a pool's throttling see.
        record "seqgets$readers $b batchfs $(python3 -c "print(round($(median "${g[@]}") * 1073741824 / ($SIZE * $readers), 1))") GETs/GiB"
        [ "$readers" = 4 ] && record "rss $b batchfs $(( $(cat "$WORK/rss") / 1024 )) MiB"
        unset t cpu
    done

    for sys in batchfs rclone-default rclone-best; do
        mount_fs "$sys" "$b"
        [ "$sys" = batchfs ] && "$BIN" stats "$MP" >"$WORK/stats.before"
        fio --name=rand --filename="$DATA/big0" --readonly --rw=randread --bs=4k --numjobs=4 \
            --time_based --runtime="$RANDOM_SECS" --ioengine=psync --group_reporting \
            --output-format=json >"$WORK/fio.json" 2>/dev/null
        read -r iops ios < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print("%.0f %d" % (r["iops"], r["total_ios"]))' "$WORK/fio.json")
        record "rand $b $sys $iops IOPS"
        if [ "$sys" = batchfs ]; then
            "$BIN" stats "$MP" >"$WORK/stats.after"
            counter() { awk -v k="$1" '$1==k {print $2}' "$WORK/stats.$2"; }
            fetched=$(($(counter bytes_fetched after) - $(counter bytes_fetched before)))
            gets=$(($(counter get_requests after) - $(counter get_requests before)))
            micros=$(($(counter request_micros after) - $(counter request_micros before)))
            record "randbytes $b batchfs $((fetched / (ios > 0 ? ios : 1) / 1024)) KiB/read"
            record "randgets $b batchfs $gets GETs"
            record "randlat $b batchfs $((micros / (gets > 0 ? gets : 1) / 1000)) ms/GET"
        fi
        unmount_fs
    done
done

# The many small blobs of the listing cases go in only now: Azurite's in-memory store finds a
# blob by scanning them all, so with these 20,000 present every request of the cases above
# cost several times more (16 x 2 MiB GETs of one 512 MiB blob: 200 MiB/s beside no other
# blob, 86 beside 10,000, 60 beside 20,000), a cost no storage account has.
if has_case read; then
    echo "bench: seeding 20,000 small blobs"
    BENCH_ENDPOINT=$(endpoint R) "$TOOL" put-many bench dir10k 1 10000
    BENCH_ENDPOINT=$(endpoint R) "$TOOL" put-many bench tree 100 100
fi
has_case read && for b in $BACKENDS; do
    export BENCH_ENDPOINT; BENCH_ENDPOINT=$(endpoint "$b")
    t=(); for _ in $(seq "$REPEAT"); do t+=("$("$TOOL" list bench dir10k/)"); done
    record "ls $b raw-list $(median "${t[@]}") s"
    for sys in batchfs rclone-default; do
        t=(); f=()
        for _ in $(seq "$REPEAT"); do
            mount_fs "$sys" "$b"
            start=$(now); ls -l "$DATA/dir10k" >/dev/null; t+=("$(secs_since "$start")")
            unmount_fs
            mount_fs "$sys" "$b"
            start=$(now); find "$DATA/tree" -type f | wc -l >/dev/null; f+=("$(secs_since "$start")")
            unmount_fs
        done
        record "ls $b $sys $(median "${t[@]}") s"
        record "find $b $sys $(median "${f[@]}") s"
    done
done

if has_case read; then
echo "bench: warm re-read"
warm() { # prints seconds for a second read of $1
    cat "$1" >/dev/null
    local start; start=$(now); cat "$1" >/dev/null; secs_since "$start"
}
for sys in batchfs rclone-best; do
    t=(); for _ in $(seq "$REPEAT"); do mount_fs "$sys" R; t+=("$(warm "$DATA/big0")"); unmount_fs; done
    record "warm R $sys $(mibs "$SIZE" "$(median "${t[@]}")") MiB/s"
done
mkdir -p "$WORK/tmpfs" "$WORK/bind"
mount -t tmpfs -o size=$((SIZE + (64 << 20))) tmpfs "$WORK/tmpfs"
BENCH_ENDPOINT=$(endpoint R) "$TOOL" ceiling $((2 << 20)) 16 bench big0 >/dev/null
mount_fs batchfs R; cp "$DATA/big0" "$WORK/tmpfs/big0"; unmount_fs
bindfs "$WORK/tmpfs" "$WORK/bind"
t=(); for _ in $(seq "$REPEAT"); do t+=("$(warm "$WORK/bind/big0")"); done
record "warm R bindfs-tmpfs $(mibs "$SIZE" "$(median "${t[@]}")") MiB/s"
fusermount3 -u "$WORK/bind"
umount "$WORK/tmpfs"
fi

if has_case disk; then
# A fresh Azurite for the disk case: its 4 x BENCH_SIZE blob, held in Azurite's memory beside
# the read case's blobs, slowed every request of that case (76 ms per GET instead of 3).
start_backends
echo "bench: seeding $((SIZE >> 20)) MiB and $((4 * SIZE >> 20)) MiB for the disk tier"
"$TOOL" put bench big0 "$SIZE"
"$TOOL" put bench big4x $((4 * SIZE))
# The disk tier's directory: on the same disk as $WORK, and emptied where a run needs it cold.
DC=$WORK/disk-cache
DISK_TIER_SIZE=$((8 * SIZE))
BIG4=$((4 * SIZE))
fresh_dc() { rm -rf "$DC"; mkdir -p "$DC"; }
mount_disk() { # BACKEND OPTION...: batchfs over a disk tier in $DC
    local b=$1; shift
    BATCHFS_CACHE=$DISK_RAM mount_fs batchfs "$b" --disk-cache "$DC" --disk-cache-size "$DISK_TIER_SIZE" "$@"
}
snap() { "$BIN" stats "$MP" >"$WORK/stats.$1"; } # NAME: the mount's counters now
stat_of() { awk -v k="$1" '$1 == k {v = $2} END {printf "%.0f\n", v + 0}' "$WORK/stats.$2"; } # COUNTER NAME
delta() { echo $(($(stat_of "$1" "$3") - $(stat_of "$1" "$2"))); } # COUNTER FROM TO
per_gib() { python3 -c 'import sys; print(f"{float(sys.argv[1]) * 1073741824 / max(float(sys.argv[2]), 1):.1f}")' "$1" "$2"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Unmounts $MP and waits until the process that served it is gone, so nothing of one run (a
# fill, rclone's read-ahead) still loads the backend during the next.
unmount_wait() {
    local pids; pids=$(pgrep -f -- "mount .*$MP( |\$)" || true)
    unmount_fs
    for p in $pids; do
        for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
}
no_mount() { if mountpoint -q "$MP"; then unmount_wait; fi; }
# Waits until the tier holds a blob whole (0) or stops changing for 3 s without it (1).
settle_tier() {
    local last="" same=0 now_
    for _ in $(seq 1200); do
        snap settle
        [ "$(stat_of disk_whole settle)" -ge 1 ] && return 0
        now_="$(stat_of disk_written_bytes settle) $(stat_of bytes_fetched settle)"
        if [ "$now_" = "$last" ]; then same=$((same + 1)); else same=0; last=$now_; fi
        [ "$same" -ge 6 ] && return 1
        sleep 0.5
    done
    return 1
}
data_file() { # the tier's data file of SIZE bytes (a blob held whole is a plain copy of it)
    local f; f=$(find "$DC" -maxdepth 1 -name '*.data' -size "$1c" | head -1)
    if [ -z "$f" ]; then echo "bench: no data file of $1 bytes in $DC" >&2; ls -l "$DC" >&2; exit 1; fi
    echo "$f"
}
rand_fio() { # FILE: 4 KiB random reads, 4 threads, RANDOM_SECS; sets IOPS and IOS
    fio --name=rand --filename="$1" --readonly --rw=randread --bs=4k --numjobs=4 \
        --time_based --runtime="$RANDOM_SECS" --ioengine=psync --group_reporting \
        --output-format=json >"$WORK/fio.json" 2>/dev/null
    read -r IOPS IOS < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print("%.0f %d" % (r["iops"], r["total_ios"]))' "$WORK/fio.json")
}
seq_fio() { # FILE: one sequential reader, 1 MiB reads; prints MiB/s
    fio --name=seq --filename="$1" --readonly --rw=read --bs=1M --ioengine=psync \
        --output-format=json >"$WORK/fio.json" 2>/dev/null
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print("%.1f" % (r["bw_bytes"] / 1048576))' "$WORK/fio.json"
}
timed_cat() { local start; start=$(now); cat "$1" >/dev/null || return 1; secs_since "$start"; }

for b in $BACKENDS; do
    echo "bench: disk tier, backend $b"
    # 10. Random 4 KiB reads: batchfs pulling the blob whole into a fresh tier, against
    # rclone's full VFS cache, alternating within each run.
    bf=(); rb=(); kib=(); gets=(); gpg=(); fills=(); rss1=()
    for _ in $(seq "$REPEAT"); do
        for sys in batchfs rclone-best; do
            no_mount
            if [ "$sys" = batchfs ]; then
                fresh_dc
                mount_disk "$b" --disk-cache-fill whole
                snap before
            else
                mount_fs rclone-best "$b"
            fi
            rand_fio "$DATA/big0"
            if [ "$sys" = batchfs ]; then
                snap after
                bf+=("$IOPS")
                fetched=$(delta bytes_fetched before after); g=$(delta get_requests before after)
                kib+=("$(python3 -c 'import sys; print(f"{int(sys.argv[1]) / max(int(sys.argv[2]), 1) / 1024:.2f}")' "$fetched" "$IOS")")
                gets+=("$g"); gpg+=("$(per_gib "$g" $((IOS * 4096)))")
                fills+=("$(delta disk_fills before after)")
                rss1+=("$(daemon_hwm_mib)")
                echo "  batchfs: $IOPS IOPS, $((fetched >> 20)) MiB fetched in $g GETs"
            else
                rb+=("$IOPS")
                echo "  rclone-best: $IOPS IOPS"
            fi
            unmount_wait
        done
    done
    record "drand $b batchfs $(median "${bf[@]}") IOPS"
    record "drand $b rclone-best $(median "${rb[@]}") IOPS"
    record "drandbytes $b batchfs $(median "${kib[@]}") KiB/read"
    record "drandgets $b batchfs $(median "${gets[@]}") GETs"
    record "drandgpg $b batchfs $(median "${gpg[@]}") GETs/GiB"
    record "drandfill $b batchfs $(median "${fills[@]}") fills"
    record "drss1 $b batchfs $(median "${rss1[@]}") MiB"

    # 11. Re-read of a blob 4 x BENCH_SIZE, larger than the RAM cache, from the tier (by
    # passthrough once the first pass made it whole), against reading the tier's data file
    # itself; then 12., the same tier after a remount with --no-passthrough: every byte
    # through the daemon.
    cold=(); second=(); ref=(); fetch2=(); gpg2=(); skipped=(); rss2=(); remount=(); fetch3=(); gpg3=(); pt2=()
    round=0
    for _ in $(seq "$REPEAT"); do
        round=$((round + 1))
        no_mount
        fresh_dc
        mount_disk "$b"
        cold+=("$(timed_cat "$DATA/big4x")")
        settle_tier || echo "  (the tier did not come to hold big4x whole)"
        f=$(data_file "$BIG4")
        # As in case 13, the order alternates by round: the first read after the fill meets
        # a disk still busy with it.
        if [ $((round % 2)) = 0 ]; then
            drop_caches
            ref+=("$(seq_fio "$f")")
        fi
        snap cold
        drop_caches
        second+=("$(timed_cat "$DATA/big4x")")
        snap second
        fetch2+=("$(delta bytes_fetched cold second)")
        pt2+=("$(delta passthrough_opens cold second)")
        gpg2+=("$(per_gib "$(delta get_requests cold second)" "$BIG4")")
        skipped+=("$(stat_of disk_skipped cold)")
        rss2+=("$(daemon_hwm_mib)")
        unmount_wait
        if [ $((round % 2)) = 1 ]; then
            drop_caches
            ref+=("$(seq_fio "$f")")
        fi
        echo "  cold ${cold[-1]} s, re-read ${second[-1]} s ($(stat_of disk_read_bytes second) tier bytes read, ${fetch2[-1]} fetched), data file ${ref[-1]} MiB/s"
        mount_disk "$b" --no-passthrough
        snap remount0
        drop_caches
        remount+=("$(timed_cat "$DATA/big4x")")
        snap remount1
        fetch3+=("$(delta bytes_fetched remount0 remount1)")
        gpg3+=("$(per_gib "$(delta get_requests remount0 remount1)" "$BIG4")")
        echo "  after remount ${remount[-1]} s, ${fetch3[-1]} bytes fetched"
        unmount_wait
    done
    record "dcold $b batchfs $(mibs "$BIG4" "$(median "${cold[@]}")") MiB/s"
    record "dreread $b batchfs $(mibs "$BIG4" "$(median "${second[@]}")") MiB/s"
    record "dreread $b data-file $(median "${ref[@]}") MiB/s"
    record "drerfetch $b batchfs $(median "${fetch2[@]}") bytes"
    record "drergpg $b batchfs $(median "${gpg2[@]}") GETs/GiB"
    record "drerskip $b batchfs $(median "${skipped[@]}") fetches"
    record "drerpt $b batchfs $(median "${pt2[@]}") opens"
    record "drss2 $b batchfs $(median "${rss2[@]}") MiB"
    record "dremount $b batchfs $(mibs "$BIG4" "$(median "${remount[@]}")") MiB/s"
    record "dremfetch $b batchfs $(median "${fetch3[@]}") bytes"
    record "dremgpg $b batchfs $(median "${gpg3[@]}") GETs/GiB"

    # 13. A blob held whole, read by kernel passthrough (the default, as root), against `cat`
    # of its data file: after dropping the caches, then again from the kernel's cache.
    pt=(); ptw=(); fc=(); fw=(); opens=(); fetch4=()
    round=0
    for _ in $(seq "$REPEAT"); do
        round=$((round + 1))
        no_mount
        fresh_dc
        mount_disk "$b" --disk-cache-fill whole
        cat "$DATA/big0" >/dev/null
        if ! settle_tier; then
            # Pages the disk could not keep up with: a read elsewhere starts a fill of the rest.
            dd if="$DATA/big0" of=/dev/null bs=4096 count=1 skip=$((SIZE / 8192)) status=none
            settle_tier || echo "  (the tier did not come to hold big0 whole: no passthrough)"
        fi
        f=$(data_file "$SIZE")
        # The order alternates by round: this VM's disk reads the same file at 760-2,450
        # MiB/s from one minute to the next, and whatever runs first after the fill meets
        # the disk still busy with it.
        if [ $((round % 2)) = 0 ]; then
            drop_caches
            fc+=("$(timed_cat "$f")")
            fw+=("$(timed_cat "$f")")
        fi
        snap pt0
        drop_caches
        pt+=("$(timed_cat "$DATA/big0")")
        ptw+=("$(timed_cat "$DATA/big0")")
        snap pt1
        opens+=("$(delta passthrough_opens pt0 pt1)")
        fetch4+=("$(delta bytes_fetched pt0 pt1)")
        if [ $((round % 2)) = 1 ]; then
            drop_caches
            fc+=("$(timed_cat "$f")")
            fw+=("$(timed_cat "$f")")
        fi
        echo "  passthrough ${pt[-1]} s (${opens[-1]} of 2 opens by passthrough), data file ${fc[-1]} s"
        unmount_wait
    done
    record "dpt $b batchfs $(mibs "$SIZE" "$(median "${pt[@]}")") MiB/s"
    record "dpt $b data-file $(mibs "$SIZE" "$(median "${fc[@]}")") MiB/s"
    record "dptwarm $b batchfs $(mibs "$SIZE" "$(median "${ptw[@]}")") MiB/s"
    record "dptwarm $b data-file $(mibs "$SIZE" "$(median "${fw[@]}")") MiB/s"
    record "dptopens $b batchfs $(median "${opens[@]}") opens"
    record "dptfetch $b batchfs $(median "${fetch4[@]}") bytes"
done
rm -rf "$DC"
fi

if has_case write; then
    # The data to write comes from tmpfs, so reading it costs nothing.
    mkdir -p "$WORK/src"
    mount -t tmpfs -o size=$((SIZE + (512 << 20))) tmpfs "$WORK/src"
    "$TOOL" gen "$WORK/src/w.bin" "$SIZE"
    head -c 4096 "$WORK/src/w.bin" >"$WORK/src/4k"
    mkdir -p "$WORK/src/tree"
    python3 - "$WORK/src/tree" <<'PY'
import os, random, sys
random.seed(7)
root = sys.argv[1]
for d in range(50):
    os.makedirs(f"{root}/d{d:02}")
    for f in range(100):
        with open(f"{root}/d{d:02}/f{f:03}", "wb") as out:
            out.write(os.urandom(random.randint(512, 8192)))
PY
    tar -C "$WORK/src/tree" -cf "$WORK/src/small.tar" .
    TAR_BYTES=$(find "$WORK/src/tree" -type f -printf '%s\n' | awk '{n += $1} END {print n}')
    TAR_FILES=$(find "$WORK/src/tree" -type f | wc -l)
    rm -rf "$WORK/src/tree"
    # 1,000 new files of 4 KiB, from one process (open, write, close), as a legacy tool would.
    cat >"$WORK/src/small.py" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
data = open(sys.argv[3], "rb").read()
for i in range(n):
    with open(f"{d}/f{i:04}", "wb") as f:
        f.write(data)
PY
    # run SYSTEM BACKEND NAME COMMAND...: times COMMAND on a fresh mount, then waits until
    # storage holds the result (rclone uploads after close; batchfs has committed by then).
    timed_write() {
        local sys=$1 b=$2 prefix=$3 count=$4 bytes=$5; shift 5
        mount_fs "$sys" "$b"
        local start m0; start=$(now); m0=$(cpu_mark)
        (cd "$DATA" && "$@")
        "$TOOL" wait bench "$prefix" "$count" "$bytes"
        secs_since "$start"
        cpu_use "$m0" "$(cpu_mark)" "$bytes" >"$WORK/cpu"
        [ "$sys" = batchfs ] && daemon_hwm_mib >"$WORK/rss"
        [ "$sys" = batchfs ] && "$BIN" stats "$MP" | awk '$1 == "put_requests" {print $2}' >"$WORK/puts"
        unmount_fs
        # Azurite keeps everything in memory and slows down as it fills: drop the large
        # files (deleting thousands of small ones costs it more than keeping them).
        [ "$count" = 1 ] && "$TOOL" rm bench "$prefix"
        true
    }
    for b in $BACKENDS; do
        echo "bench: writes, backend $b"
        start_backends
        # The ceiling is the best of several block sizes and parallelisms. Every round runs
        # each shape and each system once (A B A B), so a backend that drifts over the case
        # weighs on all of them alike.
        shapes=("$((4 << 20)) 16" "$((16 << 20)) 8" "$((32 << 20)) 4")
        declare -A wt=() wc=()
        r=(); p=()
        for i in $(seq "$REPEAT"); do
            for shape in "${shapes[@]}"; do
                read -r block par <<<"$shape"
                m0=$(cpu_mark)
                s=$(BENCH_ENDPOINT=$(endpoint "$b") "$TOOL" upload "$block" "$par" "$WORK/src/w.bin" bench "wceil-$b-$i")
                wc[$shape]+="$(cpu_use "$m0" "$(cpu_mark)" "$SIZE");"
                wt[$shape]+="$s "
                "$TOOL" rm bench "wceil-$b-$i"
            done
            for sys in batchfs rclone-writes; do
                wt[$sys]+="$(timed_write "$sys" "$b" "w-$sys-$b-$i" 1 "$SIZE" \
                    dd if="$WORK/src/w.bin" of="w-$sys-$b-$i" bs=1M conv=fsync status=none) "
                wc[$sys]+="$(cat "$WORK/cpu");"
                [ "$sys" = batchfs ] && r+=("$(cat "$WORK/rss")") && p+=("$(cat "$WORK/puts")")
            done
        done
        best=0 bestshape=
        for shape in "${shapes[@]}"; do
            read -r block par <<<"$shape"
            # shellcheck disable=SC2086 # a list of figures
            rate=$(mibs "$SIZE" "$(median ${wt[$shape]})")
            echo "  upload ceiling $((block >> 20)) MiB x $par: $rate MiB/s; CPU (busy %, daemon, Azurite s/GiB): ${wc[$shape]}"
            if python3 -c "import sys; sys.exit(not float('$rate') > float('$best'))"; then
                best=$rate bestshape=$shape
            fi
        done
        record "seqw $b ceiling $best MiB/s"
        read -r block par <<<"$bestshape"
        record "seqwshape $b ceiling $((block >> 20))MiBx$par shape"
        record "seqwcpu $b ceiling $(cpu_median "${wc[$bestshape]}") cpu"
        for sys in batchfs rclone-writes; do
            # shellcheck disable=SC2086 # a list of figures
            record "seqw $b $sys $(mibs "$SIZE" "$(median ${wt[$sys]})") MiB/s"
            record "seqwcpu $b $sys $(cpu_median "${wc[$sys]}") cpu"
        done
        record "wrss $b batchfs $(median "${r[@]}") MiB"
        record "seqwputs $b batchfs $(python3 -c "print(round($(median "${p[@]}") * 1073741824 / $SIZE, 1))") PUTs/GiB"
        for sys in batchfs rclone-writes; do
            t=(); for i in $(seq "$REPEAT_SMALL"); do
                t+=("$(timed_write "$sys" "$b" "small-$sys-$b-$i/" 1000 $((1000 * 4096)) \
                    bash -c "mkdir small-$sys-$b-$i && python3 $WORK/src/small.py small-$sys-$b-$i 1000 $WORK/src/4k")")
            done
            record "small $b $sys $(median "${t[@]}") s"
            t=(); for i in $(seq "$REPEAT_SMALL"); do
                t+=("$(timed_write "$sys" "$b" "untar-$sys-$b-$i/" "$TAR_FILES" "$TAR_BYTES" \
                    bash -c "mkdir untar-$sys-$b-$i && tar -C untar-$sys-$b-$i -xf $WORK/src/small.tar")")
            done
            record "untar $b $sys $(median "${t[@]}") s"
        done
    done
    umount "$WORK/src"
fi

if has_case batch; then
    # The stand-in of the Batch service: job `bench` with 10,000 completed tasks, each with a
    # stdout.txt and a stderr.txt of 6 lines; every response comes 20 ms after its request.
    BATCH_ACCOUNT=benchbatch
    BATCH_KEY=$(head -c 64 /dev/urandom | base64 -w0)
    BATCH_TASKS=10000
    BATCH_FILES=1000
    .tools/py/bin/python tests/batch_standin.py --account "$BATCH_ACCOUNT" --key "$BATCH_KEY" \
        --bench-tasks "$BATCH_TASKS" --latency-ms 20 --port-file "$WORK/standin.port" \
        >"$WORK/standin.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 600); do [ -s "$WORK/standin.port" ] && break; sleep 0.1; done
    if [ ! -s "$WORK/standin.port" ]; then
        echo "bench: the Batch stand-in did not start:" >&2
        cat "$WORK/standin.log" >&2
        exit 1
    fi
    BATCH_URL=http://127.0.0.1:$(cat "$WORK/standin.port")
    printf '[[account]]\nname = "%s"\nendpoint = "%s"\nprimary_key = "%s"\n' \
        "$BATCH_ACCOUNT" "$BATCH_URL" "$BATCH_KEY" >"$WORK/batchfs-batch.toml"
    chmod 600 "$WORK/batchfs-batch.toml"
    JOB=$MP/$BATCH_ACCOUNT/jobs/bench
    standin() { # METHOD NAME: the stand-in's control API
        python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "POST" else None)
sys.stdout.write(u.urlopen(r).read().decode())' "$1" "$BATCH_URL/_standin/$2"
    }
    # The data requests since the last reset: "ALL LISTS-OF-TASKS FAILED".
    standin_requests() {
        standin GET requests | python3 -c 'import json, sys
r = json.load(sys.stdin)
lists = sum(1 for x in r if x["path"].rstrip("/").endswith("/tasks"))
print(len(r), lists, sum(1 for x in r if x["status"] >= 400))'
    }
    # batch_fs NAME COMMAND: times COMMAND (bash, in the job's directory) on a fresh mount with
    # default options; sets SECS, and REQS to the data requests the mount made meanwhile.
    batch_fs() {
        "$BIN" mount --config "$WORK/batchfs-batch.toml" "$MP"
        standin POST reset >/dev/null
        local start; start=$(now)
        # Not pipefail: `head` closes the pipe before `ls` is done.
        if ! (cd "$JOB" && bash -c "$2"); then
            echo "bench: batch $1 failed on batchfs" >&2
            exit 1
        fi
        SECS=$(secs_since "$start")
        local failed
        read -r REQS _ failed < <(standin_requests)
        if [ "$failed" != 0 ]; then
            echo "bench: batch $1: $failed requests of batchfs failed" >&2
            exit 1
        fi
        unmount_fs
    }
    echo "bench: Batch service, $BATCH_TASKS tasks, $REPEAT_SMALL run(s)"
    ls_t=(); ls_r=(); cat_t=(); cat_r=(); sdk_ls=(); sdk_dl=(); sdk_cat=(); sdk_lsr=(); sdk_r=()
    for i in $(seq "$REPEAT_SMALL"); do
        batch_fs ls 'ls -l tasks >/dev/null'
        ls_t+=("$SECS"); ls_r+=("$REQS")
        echo "  run $i: batchfs ls -l $SECS s, $REQS requests"
        batch_fs cat "ls tasks | head -$BATCH_FILES | sed 's|^|tasks/|; s|\$|/files/stderr.txt|' | xargs cat >/dev/null"
        cat_t+=("$SECS"); cat_r+=("$REQS")
        echo "  run $i: batchfs cat $SECS s, $REQS requests"
        standin POST reset >/dev/null
        sdk=$(.tools/py/bin/python benches/batch_sdk.py "$BATCH_URL" "$BATCH_ACCOUNT" "$BATCH_KEY" bench "$BATCH_FILES")
        read -r reqs lists failed < <(standin_requests)
        read -r list_s tasks download_s files < <(python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print(r["list_s"], r["tasks"], r["download_s"], r["files"])' "$sdk")
        if [ "$tasks" != "$BATCH_TASKS" ] || [ "$files" != "$BATCH_FILES" ] || [ "$failed" != 0 ]; then
            echo "bench: the SDK run went wrong: $sdk; $failed requests failed" >&2
            exit 1
        fi
        sdk_ls+=("$list_s"); sdk_dl+=("$download_s"); sdk_lsr+=("$lists"); sdk_r+=("$reqs")
        sdk_cat+=("$(python3 -c 'import sys; print(f"{float(sys.argv[1]) + float(sys.argv[2]):.3f}")' "$list_s" "$download_s")")
        echo "  run $i: SDK list $list_s s ($lists requests), downloads $download_s s ($reqs requests in all)"
    done
    violations=$(standin GET violations)
    if [ "$(python3 -c 'import json, sys; print(len(json.loads(sys.argv[1])))' "$violations")" != 0 ]; then
        echo "bench: FAILED: the Batch stand-in recorded violations:" >&2
        echo "$violations" >&2
        exit 1
    fi
    record "batchls B batchfs $(median "${ls_t[@]}") s"
    record "batchls B sdk $(median "${sdk_ls[@]}") s"
    record "batchlsreq B batchfs $(median "${ls_r[@]}") requests"
    record "batchlsreq B sdk $(median "${sdk_lsr[@]}") requests"
    record "batchcat B batchfs $(median "${cat_t[@]}") s"
    record "batchcat B sdk $(median "${sdk_cat[@]}") s"
    record "batchdl B sdk $(median "${sdk_dl[@]}") s"
    record "batchcatreq B batchfs $(median "${cat_r[@]}") requests"
    record "batchcatreq B sdk $(median "${sdk_r[@]}") requests"
fi

# Merge: this run's figures replace the same (case, backend, system) of earlier runs.
touch "$RAW"
python3 - "$RAW" "$RESULTS" <<'PY'
import sys
raw, new = sys.argv[1], sys.argv[2]
key = lambda l: tuple(l.split()[:3])
fresh = [l for l in open(new) if l.strip()]
keys = {key(l) for l in fresh}
kept = [l for l in open(raw) if l.strip() and key(l) not in keys]
open(raw, "w").writelines(kept + fresh)
PY

python3 - "$RAW" "$OUT" "$SIZE" "$REPEAT" "$RANDOM_SECS" <<'PY'
import sys, collections, datetime, platform, os
results, out, size, repeat, rsecs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
r = collections.defaultdict(dict)
for line in open(results):
    case, backend, system, value, unit = line.split()
    try:
        r[(case, backend)][system] = (float(value), unit)
    except ValueError:  # a version
        r[(case, backend)][system] = (value, unit)

def v(case, b, s):
    return r.get((case, b), {}).get(s, (None, ""))[0]

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"

def meta(kind, case):
    return v(kind, case, "-")

def day(case):
    d = meta("date", case)
    if d is None:
        return "an earlier run"
    d = f"{d:.0f}"
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"

def runs(kind, case, default):
    n = meta(kind, case)
    return f"{n:.0f}" if n is not None else default

def n(x):
    return "" if x is None else f"{x:.0f}"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
# The rclone of the last run of the read or write case (a run of `batch` alone needs none).
rclone = f", rclone {meta('version', 'rclone')}" if meta("version", "rclone") else ""
# When each part of the table was measured (the last run of its case).
dates = [f"the {name} rows on {day(case)}" for case, name in
         [("read", "read"), ("write", "write"), ("batch", "Batch service"), ("disk", "disk tier")]
         if meta("date", case) is not None]
lines = [
    "# Benchmarks",
    "",
    f"Run by `scripts/bench.sh` on {os.cpu_count()} cores ({cpu}), "
    f"{int(mem) // 1048576} GiB, Linux {platform.release()}{rclone}"
    + (f": {', '.join(dates)}" if dates else f" on {datetime.date.today()}")
    + f". Large blobs are {size >> 20} MiB; each figure is the median of "
    f"{runs('repeat', 'read', repeat)} runs (random reads: "
    f"{rsecs} s per system). R is Azurite on loopback; S is the same Azurite behind the "
    "shaping proxy (+20 ms before each response, 25 MiB/s per connection). rclone-best is "
    "`--vfs-cache-mode full --vfs-read-ahead 512M --buffer-size 64M --vfs-read-chunk-size 32M "
    "--vfs-read-chunk-size-limit 512M`. The ceiling is the best, in the same run, of the "
    "project's blob client reading the same blobs without FUSE in four shapes: 16 parallel "
    "2 MiB ranged GETs, 8 x 8 MiB, 4 x 32 MiB, and one GET per whole blob.",
    "",
    "| case | backend | batchfs | ceiling / reference | rclone default | rclone best | batchfs vs ceiling | batchfs vs rclone (default; best) | target |",
    "|---|---|---|---|---|---|---|---|---|",
]
read_head = len(lines)
for b in ["R", "S"]:
    for case, name in [("seq1", "1. cold sequential, 1 reader (MiB/s)"), ("seq4", "1. cold sequential, 4 readers (MiB/s)")]:
        bf, c, rd, rb = v(case, b, "batchfs"), v(case, b, "ceiling"), v(case, b, "rclone-default"), v(case, b, "rclone-best")
        if bf is None: continue
        tgt = "≥ 0.8x ceiling, ≥ 1.5x rclone default"
        lines.append(f"| {name} | {b} | {bf} | {c} | {rd} | {rb} | {ratio(bf, c)} | {ratio(bf, rd)}; {ratio(bf, rb)} | {tgt} |")
        gets = v("seqgets" + case[3:], b, "batchfs")
        if gets is not None:
            lines.append(f"| 1. GETs per GiB read, {case[3:]} reader(s) | {b} | {gets:.1f} | | | | | | |")
        # What bounded the read: the machine's two cores shared by the reader, the daemon
        # and Azurite (and rclone or the blob client), as busy % / daemon / Azurite CPU s per GiB.
        cpus = [v("seqcpu" + case[3:], b, s) for s in ("batchfs", "ceiling", "rclone-default", "rclone-best")]
        if cpus[0] is not None:
            shape = v("seqshape" + case[3:], b, "ceiling") or ""
            lines.append(f"| 1. CPU, {case[3:]} reader(s): machine busy %/daemon/Azurite CPU s per GiB | {b} | {cpus[0]} | {cpus[1]} ({shape}) | {cpus[2]} | {cpus[3]} | | | |")
    bf, rd, rb = v("rand", b, "batchfs"), v("rand", b, "rclone-default"), v("rand", b, "rclone-best")
    if bf is not None:
        lines.append(f"| 3. random 4 KiB, 4 threads (IOPS) | {b} | {bf:.0f} | | {rd:.0f} | {rb:.0f} | | {ratio(bf, rb)} | ≥ rclone best |")
        lines.append(f"| 3. bytes fetched per 4 KiB read (KiB) | {b} | {v('randbytes', b, 'batchfs'):.0f} | | | | | | ≤ 64 |")
        if v("randgets", b, "batchfs") is not None:
            lines.append(f"| 3. GETs during the random run; mean time per GET (ms) | {b} | {v('randgets', b, 'batchfs'):.0f}; {v('randlat', b, 'batchfs'):.0f} | | | | | | |")
    bf, raw, rd = v("ls", b, "batchfs"), v("ls", b, "raw-list"), v("ls", b, "rclone-default")
    if bf is not None:
        lines.append(f"| 4. `ls -l` 10,000 entries, cold (s, lower is better) | {b} | {bf} | {raw} (raw list) | {rd} | | {ratio(bf, raw)} | | ≤ 1.5x raw, < rclone |")
        lines.append(f"| 4. `find` 10,000 blobs in 100 dirs, cold (s) | {b} | {v('find', b, 'batchfs')} | | {v('find', b, 'rclone-default')} | | | | |")
    rss = v("rss", b, "batchfs")
    if rss is not None:
        lines.append(f"| 5. peak RSS, case 1 with 4 readers, `--cache-size 256M` (MiB) | {b} | {rss:.0f} | | | | | | ≤ 320 |")
bf, bind, rb = v("warm", "R", "batchfs"), v("warm", "R", "bindfs-tmpfs"), v("warm", "R", "rclone-best")
if bf is not None:
    lines.append(f"| 2. warm re-read (MiB/s) | R | {bf} | {bind} (bindfs over tmpfs) | | {rb} | {ratio(bf, bind)} | {ratio(bf, rb)} | ≥ 0.8x bindfs |")
if len(lines) == read_head:  # no read figures: no empty table
    del lines[read_head - 3:]
small = runs("repeat_small", "write", os.environ.get("REPEAT_SMALL", "1"))
write_head = len(lines)
lines += [
    "",
    f"Cases 7 and 8 are the median of {small} run(s) per system (`REPEAT_SMALL={small}`): rclone "
    "needs minutes for each.",
    "",
    "Writes: each time runs from the command's start until storage holds the result (batchfs",
    "has committed when `close` or `fsync` returns; rclone uploads after `close`). rclone runs",
    "with `--vfs-cache-mode writes --vfs-write-back 0 --transfers 16`. The ceiling is the best,",
    "in the same run, of the project's blob client uploading the same bytes as 4 MiB blocks 16",
    "in parallel, 16 MiB blocks 8 in parallel, and 32 MiB blocks 4 in parallel, then one Put",
    "Block List. Each round runs every shape and system once (A B A B).",
    "",
    "| case | backend | batchfs | ceiling | rclone writes | batchfs vs ceiling | batchfs vs rclone | target |",
    "|---|---|---|---|---|---|---|---|",
]
for b in ["R", "S"]:
    bf, c, rc = v("seqw", b, "batchfs"), v("seqw", b, "ceiling"), v("seqw", b, "rclone-writes")
    if bf is not None:
        tgt = "≥ 0.8x ceiling, ≥ 1.5x rclone"
        lines.append(f"| 6. sequential write {size >> 20} MiB + fsync (MiB/s) | {b} | {bf} | {c} | {rc} | {ratio(bf, c)} | {ratio(bf, rc)} | {tgt} |")
        puts = v("seqwputs", b, "batchfs")
        if puts is not None:
            lines.append(f"| 6. requests per GiB written (Put Block and Put Block List) | {b} | {puts:.1f} | | | | | |")
        cpus = [v("seqwcpu", b, s) for s in ("batchfs", "ceiling", "rclone-writes")]
        if cpus[0] is not None:
            shape = v("seqwshape", b, "ceiling") or ""
            lines.append(f"| 6. CPU during that write: machine busy %/daemon/Azurite CPU s per GiB | {b} | {cpus[0]} | {cpus[1]} ({shape}) | {cpus[2]} | | | |")
    rss = v("wrss", b, "batchfs")
    if rss is not None:
        lines.append(f"| 6. peak RSS during that write, `--cache-size 256M` (MiB) | {b} | {rss:.0f} | | | | | ≤ 320 |")
    for case, name in [("small", "7. 1,000 new files of 4 KiB (s, lower is better)"), ("untar", "8. `tar x` of 5,000 files of 0.5-8 KiB (s)")]:
        bf, rc = v(case, b, "batchfs"), v(case, b, "rclone-writes")
        if bf is not None:
            lines.append(f"| {name} | {b} | {bf} | | {rc} | | {ratio(rc, bf)} faster | faster than rclone |")
if not any(v(c, b, "batchfs") is not None for c in ["seqw", "small", "untar"] for b in ["R", "S"]):
    del lines[write_head:]  # no write figures: neither their notes nor an empty table
if v("batchls", "B", "batchfs") is not None or v("batchcat", "B", "batchfs") is not None:
    lines += [
        "",
        "Batch service: `tests/batch_standin.py --bench-tasks 10000 --latency-ms 20` (B: each "
        "response 20 ms after its request; Shared Key signatures checked with the SDK's code), a "
        "job `bench` of 10,000 completed tasks whose stderr.txt has 6 lines (about 300 bytes). "
        "batchfs runs with its default options on a fresh mount for each measurement: `ls -l` of "
        "`jobs/bench/tasks`, and, from `jobs/bench`, `ls tasks | head -1000 | sed "
        "'s|^|tasks/|; s|$|/files/stderr.txt|' | xargs cat`. The reference is Microsoft's "
        "`azure-batch` 15.1.0 Python SDK as a script would use it (`benches/batch_sdk.py`): "
        "one List Tasks with `$select` of the id and times, then 1,000 Get Task File one after "
        "another; its `cat` figure is that list plus the downloads, as the batchfs command lists "
        "the tasks too. Requests are the data requests in the stand-in's log during the "
        f"measurement. Each figure is the median of {runs('repeat_small', 'batch', '1')} run(s) "
        "per system, the systems alternating within the run.",
        "",
        "| case | backend | batchfs | azure-batch SDK | batchfs vs SDK | requests: batchfs; SDK |",
        "|---|---|---|---|---|---|",
    ]
    bf, sdk = v("batchls", "B", "batchfs"), v("batchls", "B", "sdk")
    if bf is not None:
        lines.append(f"| 9. Batch: `ls -l` of 10,000 tasks, cold (s, lower is better) | B | {bf} | {sdk} | "
                     f"{ratio(sdk, bf)} faster | {n(v('batchlsreq', 'B', 'batchfs'))}; {n(v('batchlsreq', 'B', 'sdk'))} |")
    bf, sdk, dl = v("batchcat", "B", "batchfs"), v("batchcat", "B", "sdk"), v("batchdl", "B", "sdk")
    if bf is not None:
        parts = f" (downloads alone {dl})" if dl is not None else ""
        lines.append(f"| 9. Batch: `cat` of 1,000 tasks' stderr.txt, cold (s) | B | {bf} | {sdk}{parts} | "
                     f"{ratio(sdk, bf)} faster | {n(v('batchcatreq', 'B', 'batchfs'))}; {n(v('batchcatreq', 'B', 'sdk'))} |")
def fmt(x, spec=".0f"):
    return "" if x is None else format(x, spec)

if any(v(c, b, "batchfs") is not None for c in ["drand", "dreread", "dpt"] for b in ["R", "S"]):
    dsize = meta("size", "disk")
    dsize = int(dsize) if dsize is not None else size
    dsecs = meta("rsecs", "disk")
    dsecs = f"{dsecs:.0f}" if dsecs is not None else rsecs
    big, big4 = f"{dsize >> 20} MiB", f"{(4 * dsize) >> 20} MiB"
    dram = meta("ram", "disk")
    dram = int(dram) >> 20 if dram is not None else 256
    lines += [
        "",
        f"Disk tier (`--disk-cache DIR`), measured on {day('disk')}: each figure is the median of "
        f"{runs('repeat', 'disk', repeat)} runs, the systems alternating within each run. DIR is "
        "a directory on the machine's disk (the same disk as rclone's cache directory), "
        f"emptied before every run that needs it cold; batchfs runs with `--cache-size {dram}M "
        f"--disk-cache-size {8 * dsize >> 20}M`. Case 10 reads a {big} blob at random for "
        f"{dsecs} s per system with `--disk-cache-fill whole` (the first jump starts pulling "
        "the rest of the blob into DIR in large GETs) against rclone-best, whose "
        "`--vfs-cache-mode full` also reads ahead into a local disk cache; its bytes per read count the fill, so they are "
        "far above case 3's (page-wise, no disk tier: ≤ 64 KiB per read, in the first table). "
        f"Case 11 reads a {big4} blob once cold (`cat`), drops the kernel's caches, and reads it "
        "again (the first pass left it whole in DIR, so the second open is served by "
        "passthrough where the kernel allows it); the "
        "reference is `fio` (1 MiB sequential reads) of the tier's `<id>.data` file of that "
        "blob, after dropping the caches. Case 12 unmounts, mounts again on the same DIR with "
        "`--no-passthrough`, drops the caches and reads the blob once more: every byte through "
        "the daemon from DIR. Case 13 reads a "
        f"{big} blob once so DIR holds it whole, then `cat`s it through the mount, where the "
        "kernel reads the data file by passthrough (the default, as root), against `cat` of "
        "the data file itself: after dropping the caches, then again from the kernel's cache. "
        "GETs per GiB count every Get Blob during the measurement (the fill's too) per GiB "
        "the reader read.",
        "",
        "| case | backend | batchfs | reference | rclone best | batchfs vs reference | batchfs vs rclone best | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in ["R", "S"]:
        bf, rb = v("drand", b, "batchfs"), v("drand", b, "rclone-best")
        if bf is not None:
            lines.append(f"| 10. random 4 KiB, 4 threads, `--disk-cache-fill whole` (IOPS) | {b} | {fmt(bf)} | | {fmt(rb)} | | {ratio(bf, rb)} | ≥ rclone best |")
            lines.append(f"| 10. bytes fetched per 4 KiB read (KiB); GETs; GETs per GiB read; fills done in the window | {b} | "
                         f"{fmt(v('drandbytes', b, 'batchfs'), '.1f')}; {fmt(v('drandgets', b, 'batchfs'))}; "
                         f"{fmt(v('drandgpg', b, 'batchfs'))}; {fmt(v('drandfill', b, 'batchfs'))} | | | | | shown (page-wise: case 3) |")
        bf, ref = v("dreread", b, "batchfs"), v("dreread", b, "data-file")
        if bf is not None:
            lines.append(f"| 11. re-read {big4} from DIR, caches dropped (MiB/s) | {b} | {bf} | {ref} (`fio` of the data file) | | {ratio(bf, ref)} | | ≥ 0.8x data file |")
            lines.append(f"| 11. bytes fetched during that re-read; GETs per GiB read; opens by passthrough | {b} | {fmt(v('drerfetch', b, 'batchfs'))}; {fmt(v('drergpg', b, 'batchfs'), '.1f')}; {fmt(v('drerpt', b, 'batchfs'))} | | | | | 0 |")
            lines.append(f"| 11. the cold first pass that filled DIR (MiB/s); fetches DIR did not keep | {b} | {v('dcold', b, 'batchfs')}; {fmt(v('drerskip', b, 'batchfs'))} | | | | | |")
        bf = v("dremount", b, "batchfs")
        if bf is not None:
            lines.append(f"| 12. re-read after a remount on the same DIR, `--no-passthrough` (MiB/s); bytes fetched; GETs per GiB | {b} | {bf}; {fmt(v('dremfetch', b, 'batchfs'))}; {fmt(v('dremgpg', b, 'batchfs'), '.1f')} | {v('dreread', b, 'data-file')} (`fio` of the data file) | | {ratio(bf, v('dreread', b, 'data-file'))} | | 0 bytes |")
        bf, ref = v("dpt", b, "batchfs"), v("dpt", b, "data-file")
        if bf is not None:
            lines.append(f"| 13. warm sequential {big} held whole, passthrough, caches dropped (MiB/s) | {b} | {bf} | {ref} (`cat` of the data file) | | {ratio(bf, ref)} | | ≥ 0.8x data file |")
            bw, rw = v("dptwarm", b, "batchfs"), v("dptwarm", b, "data-file")
            lines.append(f"| 13. the same, again from the kernel's cache (MiB/s) | {b} | {bw} | {rw} (`cat` of the data file) | | {ratio(bw, rw)} | | |")
            lines.append(f"| 13. opens served by passthrough (of 2); bytes fetched | {b} | {fmt(v('dptopens', b, 'batchfs'))}; {fmt(v('dptfetch', b, 'batchfs'))} | | | | | 2; 0 |")
        r1, r2 = v("drss1", b, "batchfs"), v("drss2", b, "batchfs")
        if r1 is not None or r2 is not None:
            lines.append(f"| 14. peak RSS during case 10; during case 11 (MiB) | {b} | {fmt(r1)}; {fmt(r2)} | | | | | ≤ {dram + 64} |")
text = "\n".join(lines) + "\n"
print(text)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
# The table replaces everything above the notes, which are kept as written.
notes = ""
if os.path.exists(out):
    old = open(out).read()
    at = old.find("\n## ")
    notes = old[at:] if at >= 0 else ""
with open(out, "w") as f:
    f.write(text + notes)
PY
