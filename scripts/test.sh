#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests (with the fault-injecting store and the
# reference model), the integration tests, which start their own Azurite on loopback and
# mount batchfs with FUSE (run as root on a machine with /dev/fuse), and the third-party POSIX
# suite pjdfstest over a mount (its pass counts may only go up: tests/pjdfstest/baseline.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# pjdfstest over the binary the tests just built.
pjd=0
BATCHFS=target/debug/batchfs scripts/pjdfstest.sh || pjd=$?
if [ "$pjd" -ne 0 ]; then
    echo "pjdfstest: fewer cases pass than tests/pjdfstest/baseline.txt says, or the run failed"
    status=1
fi
# One closing line for the whole run, summed over every test binary (and pjdfstest's
# baseline check, counted as one test).
# A test binary that died (a signal, a timeout) prints no result line: it counts as a failure.
awk -v pjd="$pjd" -v st="$status" '/^test result:/ { p += $4; f += $6 }
    END { if (pjd == 0) p += 1; else f += 1; if (st != 0 && f == 0) f = 1
          printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
