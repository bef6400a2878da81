#!/usr/bin/env bash
# The demo: starts Azurite on loopback with two storage accounts, fills them with sample data
# shaped like Batch task files, starts the Batch service stand-in (tests/batch_standin.py
# --demo: a job `render` with a finished, a failed and a running task, a pool `pool1`) for the
# first account, writes a config with two Batch accounts, and mounts batchfs.
#
#   scripts/demo.sh [MOUNTPOINT]    set up and mount (default /mnt/batch)
#   scripts/demo.sh stop            unmount and stop Azurite and the stand-in
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
BIN=$ROOT/target/release/batchfs

stop() {
    if [ -f "$DEMO/mountpoint" ]; then
        "$BIN" unmount --lazy "$(cat "$DEMO/mountpoint")" 2>/dev/null || true
        rm -f "$DEMO/mountpoint"
    fi
    for p in azurite standin; do
        if [ -f "$DEMO/$p.pid" ]; then
            kill "$(cat "$DEMO/$p.pid")" 2>/dev/null || true
            rm -f "$DEMO/$p.pid"
        fi
    done
}

if [ "${1:-}" = "stop" ]; then
    stop
    echo "demo stopped"
    exit 0
fi
MP=${1:-/mnt/batch}

scripts/setup.sh --build
export PATH="$HOME/.cargo/bin:$PATH"
stop
rm -rf "$DEMO"
mkdir -p "$DEMO"

port=10000
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
KEY1=$(head -c 32 /dev/urandom | base64 -w0)
KEY2=$(head -c 32 /dev/urandom | base64 -w0)
AZURITE_ACCOUNTS="demostore1:$KEY1;demostore2:$KEY2" setsid node \
    .tools/azurite/node_modules/azurite/dist/src/blob/main.js \
    --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence --extentMemoryLimit 512 \
    --skipApiVersionCheck --loose --disableTelemetry >"$DEMO/azurite.log" 2>&1 &
echo $! >"$DEMO/azurite.pid"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# The Batch service of `demobatch`: the stand-in on a free port it picks and writes to a file.
BATCH_KEY=$(head -c 64 /dev/urandom | base64 -w0)
setsid .tools/py/bin/python tests/batch_standin.py --account demobatch --key "$BATCH_KEY" \
    --demo --port-file "$DEMO/standin.port" >"$DEMO/standin.log" 2>&1 &
echo $! >"$DEMO/standin.pid"
for _ in $(seq 100); do
    [ -s "$DEMO/standin.port" ] && break
    sleep 0.1
done
[ -s "$DEMO/standin.port" ] || { echo "demo: the Batch stand-in did not start:" >&2; cat "$DEMO/standin.log" >&2; exit 1; }
batch_port=$(cat "$DEMO/standin.port")

# Sample data: a render job's task outputs and logs, an input container, a pinned container.
d1=$DEMO/data1
for t in 1 2 3; do
    task=$d1/job-20261127-render/task-00$t
    mkdir -p "$task/\$TaskOutput" "$task/\$TaskLog"
    head -c $((200000 * t)) /dev/urandom >"$task/\$TaskOutput/frame-000$t.png"
    printf 'rendering frame %s\ndone in %s.%s s\n' "$t" "$((t * 7))" "$t" >"$task/\$TaskLog/stdout.txt"
    : >"$task/\$TaskLog/stderr.txt"
done
mkdir -p "$d1/job-20261127-render/\$JobOutput"
printf 'frames,3\nstatus,completed\n' >"$d1/job-20261127-render/\$JobOutput/summary.csv"
# The output container of the stand-in's job `render` (Batch File Conventions: job-<id>),
# which jobs/render/output links to.
mkdir -p "$d1/job-render/\$JobOutput" "$d1/job-render/frame-0001/\$TaskOutput"
printf 'frame,status,seconds\n1,ok,7.1\n2,failed,0.4\n3,running,\n' >"$d1/job-render/\$JobOutput/summary.csv"
head -c 20000 /dev/urandom >"$d1/job-render/frame-0001/\$TaskOutput/frame-0001.png"
mkdir -p "$d1/input/scenes"
printf '{"resolution": [1920, 1080], "samples": 128}\n' >"$d1/input/params.json"
head -c $((16 << 20)) /dev/urandom >"$d1/input/scenes/city block.blend"
d2=$DEMO/data2
mkdir -p "$d2/frames/2026-11-27" "$d2/archive"
for i in 1 2 3 4; do head -c 50000 /dev/urandom >"$d2/frames/2026-11-27/frame-$i.exr"; done
printf 'old run\n' >"$d2/archive/readme.txt"

seed() { SEED_ENDPOINT="http://127.0.0.1:$port/$1" SEED_ACCOUNT=$1 SEED_KEY=$2 target/release/examples/seed "$3" >/dev/null; }
seed demostore1 "$KEY1" "$d1"
seed demostore2 "$KEY2" "$d2"

umask 077
cat >"$DEMO/accounts.toml" <<TOML
# Demo accounts: two Batch accounts, each linked to a storage account in the local Azurite.
# demobatch's Batch service is the local stand-in, reached with its primary key.
[[account]]
name = "demobatch"
endpoint = "http://127.0.0.1:$batch_port"
location = "westeurope"
subscription_id = "00000000-0000-0000-0000-000000000000"
resource_group = "rg-demo"
primary_key = "$BATCH_KEY"
secondary_key = "$(head -c 64 /dev/urandom | base64 -w0)"
[account.storage]
account = "demostore1"
endpoint = "http://127.0.0.1:$port/demostore1"
key = "$KEY1"

[[account]]
name = "renderbatch"
endpoint = "renderbatch.eastus.batch.azure.com"
location = "eastus"
[account.storage]
account = "demostore2"
endpoint = "http://127.0.0.1:$port/demostore2"
key = "$KEY2"
container = "frames"
TOML

mkdir -p "$MP"
"$BIN" mount --config "$DEMO/accounts.toml" --log-file "$DEMO/batchfs.log" "$MP"
echo "$MP" >"$DEMO/mountpoint"

echo "batchfs is mounted at $MP (Azurite on 127.0.0.1:$port, Batch stand-in on 127.0.0.1:$batch_port; logs in $DEMO/batchfs.log)"
echo
ls -R "$MP"
cat <<HINTS

Try:
  ls -l $MP/demobatch/storage/job-20261127-render/task-001/\\\$TaskLog
  cat $MP/demobatch/account.json
  cat $MP/demobatch/keys
  find $MP -name '*.exr'
  cp -r $MP/demobatch/storage/input /tmp/input-copy
  $BIN accounts --config $DEMO/accounts.toml
The Batch service (read-only):
  ls $MP/demobatch/jobs/render/tasks
  cat $MP/demobatch/jobs/render/tasks/frame-0001/files/stdout.txt
  ls $MP/demobatch/pools/pool1/nodes
  ls $MP/demobatch/jobs/render/output/
Which task failed, and why:
  grep -l '"result": "failure"' $MP/demobatch/jobs/render/tasks/*/task.json
  cat $MP/demobatch/jobs/render/tasks/frame-0002/files/stderr.txt
Follow the running task (a line a second; Ctrl-C to stop):
  tail -f $MP/demobatch/jobs/render/tasks/frame-0003/files/stdout.txt
Stop it with:
  scripts/demo.sh stop
HINTS
