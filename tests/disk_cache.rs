//! The disk tier (`--disk-cache`) through a real mount on Azurite: re-reads past the RAM
//! budget and across remounts without a GET, versions replaced elsewhere, a `kill -9` during
//! a fill, a tier on a filesystem that fills up, garbage in its directory, and passthrough.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const F: &str = "alpha/storage/data/big.bin";

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after[k] - before[k]
}

/// The kernel forgets the pages it holds of every file, so a re-read reaches the daemon.
fn drop_kernel_cache() {
    ok(sh_in(
        Path::new("/"),
        "sync; echo 3 > /proc/sys/vm/drop_caches",
    ));
}

fn unmount(m: &Mount) {
    ok(std::process::Command::new(BIN)
        .arg("unmount")
        .arg(&m.path)
        .output()
        .expect("unmount"));
}

/// Waits until `what` holds of the mount's counters.
fn settle(m: &Mount, what: impl Fn(&BTreeMap<String, u64>) -> bool) -> BTreeMap<String, u64> {
    let start = Instant::now();
    loop {
        let s = m.stats();
        if what(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never settled: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn md5(m: &Mount, rel: &str) -> String {
    ok(m.sh(&format!("md5sum < {rel}")))
}

fn md5_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    ok(sh_in(dir.path(), "md5sum < x"))
}

/// Azurite with `data/big.bin` holding `body`, and a mount over a fresh disk tier directory
/// with `extra` flags. Fields drop in order: the mount goes before Azurite.
struct World {
    m: Mount,
    dir: std::path::PathBuf,
    /// The flags it was mounted with, for a mount again on the same directory.
    args: Vec<String>,
    _tier: tempfile::TempDir,
    s: Seeder,
    _az: Azurite,
}

impl World {
    /// `batchfs mount` again with the same flags (after an unmount, or a crash).
    fn mount_again(&self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        ok(self.m.mount_cmd(&args));
    }
}

fn world(body: &[u8], extra: &[&str]) -> World {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    s.put("data", "big.bin", body.to_vec());
    let tier = tempfile::tempdir().unwrap();
    let dir = tier.path().join("cache");
    let mut args = vec!["--disk-cache", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let m = Mount::start(&config_for(&az, ""), &args);
    let args = args.iter().map(|a| a.to_string()).collect();
    World {
        m,
        dir,
        args,
        _tier: tier,
        s,
        _az: az,
    }
}

#[test]
fn rereads_past_the_ram_budget_and_after_a_remount_fetch_nothing() {
    let body = data(48 << 20, 11);
    let w = world(&body, &["--cache-size", "16M", "--no-passthrough"]);
    let m = &w.m;
    let want = md5_of(&body);
    assert_eq!(md5(m, F), want);
    let first = settle(m, |s| s["disk_written_bytes"] >= 48 << 20);
    assert!(first["disk_misses"] > 0);
    assert!(
        first["disk_bytes"] >= 48 << 20 && first["disk_bytes"] <= (48 << 20) + (1 << 20),
        "{first:?}"
    );

    // The RAM cache holds 16 MiB of 48: the second pass reads the rest from disk.
    drop_kernel_cache();
    assert_eq!(md5(m, F), want);
    let second = m.stats();
    assert_eq!(delta(&second, &first, "get_requests"), 0, "{second:?}");
    assert!(delta(&second, &first, "disk_hits") > 0);
    assert_eq!(second["disk_corrupt"], 0);

    // A new mount on the same directory: the open's HEAD, and no GET.
    unmount(m);
    w.mount_again();
    assert_eq!(md5(m, F), want);
    let third = m.stats();
    assert_eq!(third["get_requests"], 0, "{third:?}");
    assert_eq!(third["bytes_fetched"], 0);
    assert!(
        third["head_requests"] >= 1,
        "close-to-open: the open still asks storage"
    );
    assert!(third["disk_read_bytes"] >= 48 << 20);
    let du: u64 = ok(sh_in(w.dir.parent().unwrap(), "du -sk cache | cut -f1"))
        .trim()
        .parse()
        .unwrap();
    assert!(du * 1024 <= (48 << 20) + (1 << 20), "du says {du} KiB");
}

#[test]
fn a_blob_replaced_elsewhere_is_never_served_from_the_tier() {
    let old = data(6 << 20, 21);
    let w = world(&old, &[]);
    let (m, s) = (&w.m, &w.s);
    assert_eq!(md5(m, F), md5_of(&old));
    settle(m, |s| s["disk_written_bytes"] >= 6 << 20);
    // Same size, other bytes, written by another client: a new ETag.
    let new = data(6 << 20, 22);
    s.put("data", "big.bin", new.clone());
    std::thread::sleep(Duration::from_millis(1100));
    drop_kernel_cache();
    assert_eq!(md5(m, F), md5_of(&new));
    // And the old version, still held, is not what a later open gets either.
    unmount(m);
    ok(m.mount_cmd(&["--disk-cache", w.dir.to_str().unwrap()]));
    assert_eq!(md5(m, F), md5_of(&new));
}

#[test]
fn a_kill_during_a_fill_then_a_remount_serves_only_the_right_bytes() {
    let body = data(96 << 20, 31);
    let w = world(&body, &["--disk-cache-fill", "whole"]);
    let m = &w.m;
    // One small read starts the fill of the rest; the daemon dies while it runs.
    ok(m.sh(&format!(
        "dd if={F} bs=4096 skip=5000 count=1 status=none > /dev/null"
    )));
    settle(m, |s| s["disk_written_bytes"] > 8 << 20);
    let before = m.stats();
    assert!(
        before["disk_fills"] == 0,
        "the fill ended before the kill: {before:?}"
    );
    ok(m.sh(&format!("kill -9 {}", m.daemon_pid())));
    std::thread::sleep(Duration::from_millis(300));
    // Remount on the same directory (the stale mountpoint is recovered) and read it all.
    w.mount_again();
    assert_eq!(md5(m, F), md5_of(&body));
    let after = m.stats();
    assert!(
        after["disk_hits"] > 0,
        "what the killed fill wrote is used: {after:?}"
    );
    assert!(after["bytes_fetched"] < 96 << 20, "{after:?}");
    // The fill restarted by that read completes the blob; a cold read is then all local.
    settle(m, |s| s["disk_whole"] >= 1);
    drop_kernel_cache();
    let cold = m.stats();
    assert_eq!(md5(m, F), md5_of(&body));
    assert_eq!(delta(&m.stats(), &cold, "get_requests"), 0);
}

#[test]
fn a_tier_on_a_filesystem_that_fills_up_shrinks_and_reads_go_on() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    let body = data(40 << 20, 41);
    s.put("data", "big.bin", body.clone());
    let tier = tempfile::tempdir().unwrap();
    let small = tier.path().join("small");
    std::fs::create_dir(&small).unwrap();
    ok(sh_in(
        tier.path(),
        "mount -t tmpfs -o size=12m batchfs-test-tier small",
    ));
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = sh_in(Path::new("/"), &format!("umount -l {}", self.0.display()));
        }
    }
    let _guard = Umount(small.clone());
    // Told it may hold 1 GiB; the filesystem under it holds 12 MiB.
    let m = Mount::start(
        &config_for(&az, ""),
        &[
            "--disk-cache",
            small.join("cache").to_str().unwrap(),
            "--disk-cache-size",
            "1G",
            "--no-passthrough",
        ],
    );
    for _ in 0..2 {
        assert_eq!(md5(&m, F), md5_of(&body));
        drop_kernel_cache();
    }
    let st = m.stats();
    assert!(st["disk_errors"] > 0, "ENOSPC was met: {st:?}");
    assert!(st["disk_bytes"] <= 12 << 20, "{st:?}");
    assert!(
        m.log_text().contains("the disk is full"),
        "{}",
        m.log_text()
    );
    let du: u64 = ok(sh_in(&small, "du -sk cache | cut -f1"))
        .trim()
        .parse()
        .unwrap();
    assert!(du <= 12 * 1024, "du says {du} KiB");
}

#[test]
fn garbage_in_the_tier_is_refused_or_removed_never_served() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    let body = data(4 << 20, 51);
    s.put("data", "big.bin", body.clone());
    let tier = tempfile::tempdir().unwrap();

    // A directory batchfs did not make, with a file in it: the mount refuses and says why.
    let foreign = tier.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("report.pdf"), b"someone's").unwrap();
    let m = Mount::prepare(&config_for(&az, ""));
    let out = m.mount_cmd(&["--disk-cache", foreign.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("report.pdf") && err.contains("did not write"),
        "{err}"
    );
    assert!(foreign.join("report.pdf").exists());
    // A directory under the mountpoint (its files would go through the mount) is refused.
    let inside = m.path.join("cache");
    let out = m.mount_cmd(&["--disk-cache", inside.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the mountpoint"), "{err}");

    // Ours, with a file planted in it and every cached byte overwritten: the planted file
    // is removed, and the changed pages are dropped and fetched again.
    let dir = tier.path().join("cache");
    let args = ["--disk-cache", dir.to_str().unwrap(), "--no-passthrough"];
    ok(m.mount_cmd(&args));
    assert_eq!(md5(&m, F), md5_of(&body));
    settle(&m, |s| s["disk_written_bytes"] >= 4 << 20);
    unmount(&m);
    std::fs::write(dir.join("planted.bin"), b"junk").unwrap();
    ok(sh_in(
        &dir,
        "for f in *.data; do head -c $(stat -c %s $f) /dev/urandom | dd of=$f conv=notrunc status=none; done",
    ));
    ok(m.mount_cmd(&args));
    assert!(!dir.join("planted.bin").exists());
    assert!(
        m.log_text().contains("batchfs did not write"),
        "{}",
        m.log_text()
    );
    assert_eq!(md5(&m, F), md5_of(&body));
    let st = m.stats();
    assert!(
        st["disk_corrupt"] > 0 && st["bytes_fetched"] >= 4 << 20,
        "{st:?}"
    );

    // A second mount on a directory in use is refused.
    let other = Mount::prepare(&config_for(&az, ""));
    let out = other.mount_cmd(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

#[test]
fn passthrough_serves_a_blob_held_whole_with_the_right_bytes_and_mmap() {
    let body = data((20 << 20) + 12345, 61);
    let w = world(&body, &[]);
    let (m, s) = (&w.m, &w.s);
    assert_eq!(md5(m, F), md5_of(&body));
    let held = settle(m, |s| s["disk_whole"] >= 1);
    assert_eq!(held["passthrough_opens"], 0);
    drop_kernel_cache();
    assert_eq!(md5(m, F), md5_of(&body));
    let through = m.stats();
    assert!(
        through["passthrough_opens"] >= 1,
        "this kernel and root should allow passthrough: {through:?}"
    );
    // Read by the kernel from the tier's file: the daemon saw no read at all.
    assert_eq!(delta(&through, &held, "get_requests"), 0);
    assert_eq!(delta(&through, &held, "disk_read_bytes"), 0);
    assert_eq!(delta(&through, &held, "cache_hits"), 0);
    // mmap, random offsets, while another handle reads through the same backing file.
    let py = format!(
        "import mmap,hashlib\n\
         f=open('{F}','rb'); g=open('{F}','rb')\n\
         m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\n\
         print(hashlib.md5(m[:]).hexdigest(), len(m), m[7777:7781].hex(), g.read(3).hex())"
    );
    let out = ok(m.sh(&format!("python3 -c \"{py}\"")));
    let want = format!(
        "{} {} {} {}",
        md5_of(&body).split_whitespace().next().unwrap(),
        body.len(),
        hex(&body[7777..7781]),
        hex(&body[..3])
    );
    assert_eq!(out.trim(), want);
    // A replaced blob is not passed through: its new bytes come from storage.
    let new = data((20 << 20) + 12345, 62);
    s.put("data", "big.bin", new.clone());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(md5(m, F), md5_of(&new));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn other_opens_of_a_file_open_by_passthrough_share_it_or_wait() {
    let body = data(6 << 20, 71);
    let w = world(&body, &[]);
    let (m, s) = (&w.m, &w.s);
    assert_eq!(md5(m, F), md5_of(&body));
    settle(m, |s| s["disk_whole"] >= 1);
    // One process holds the file open by passthrough while others open it.
    let script = format!(
        "exec 3< {F}\n\
         md5sum < {F}\n\
         if echo more >> {F}; then echo WROTE; else echo REFUSED; fi\n\
         head -c 5 <&3 | od -An -tx1\n\
         exec 3<&-\n\
         if echo more >> {F}; then echo WROTE; else echo REFUSED; fi"
    );
    let out = m.sh(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}\n{err}");
    assert_eq!(lines[0], md5_of(&body).trim(), "a read-only open shares it");
    assert_eq!(
        lines[1], "REFUSED",
        "a write waits for the passthrough open: {err}"
    );
    assert!(err.contains("Text file busy"), "{err}");
    assert_eq!(
        lines[2].split_whitespace().collect::<String>(),
        hex(&body[..5])
    );
    assert_eq!(
        lines[3], "WROTE",
        "once it closed, the write goes through: {err}"
    );
    assert!(m.stats()["passthrough_opens"] >= 2);
    let mut want = body.clone();
    want.extend_from_slice(b"more\n");
    assert!(s.get("data", "big.bin") == want);
    assert!(m.log_text().contains("ETXTBSY"));
}

/// A blob mapped through a passthrough open keeps its bytes while another blob needs the
/// tier's room. (On Linux 6.18 the kernel holds the open until the mapping goes, so the pin
/// keeps the blob; a kernel that released it earlier would find the blob evicted whole by
/// unlinking, never punched: `DiskTier::drop_segment`.)
#[test]
fn a_mapping_made_by_passthrough_keeps_its_bytes_when_the_tier_needs_room() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    let a = data(12 << 20, 81);
    let b = data(12 << 20, 82);
    s.put("data", "big.bin", a.clone());
    s.put("data", "other.bin", b.clone());
    let tier = tempfile::tempdir().unwrap();
    let dir = tier.path().join("cache");
    let m = Mount::start(
        &config_for(&az, ""),
        &[
            "--disk-cache",
            dir.to_str().unwrap(),
            "--disk-cache-size",
            "16M",
        ],
    );
    assert_eq!(md5(&m, F), md5_of(&a));
    settle(&m, |s| s["disk_whole"] >= 1);
    // Map it through a passthrough open, close the descriptor, then make the tier evict by
    // reading another blob that does not fit beside it; the mapping still reads A.
    let py = format!(
        "import mmap, hashlib, json, subprocess, time\n\
         f = open('{F}', 'rb')\n\
         m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n\
         f.close()\n\
         subprocess.run(['cat', 'alpha/storage/data/other.bin'], stdout=subprocess.DEVNULL, check=True)\n\
         for _ in range(300):\n    \
             if json.load(open('.batchfs-stats'))['disk_evictions'] > 0: break\n    \
             time.sleep(0.1)\n\
         print(json.load(open('.batchfs-stats'))['disk_evictions'], hashlib.md5(m[:]).hexdigest())"
    );
    let out = ok(m.sh(&format!("python3 -c \"{py}\"")));
    let mut it = out.split_whitespace();
    let evictions: u64 = it.next().unwrap().parse().unwrap();
    assert!(evictions > 0, "the tier evicted: {out}");
    assert_eq!(
        it.next().unwrap(),
        md5_of(&a).split_whitespace().next().unwrap()
    );
    assert!(m.stats()["passthrough_opens"] >= 1);
    // The evicted blob's files are gone from DIR; its bytes lived on in the mapping.
    assert_eq!(md5(&m, "alpha/storage/data/other.bin"), md5_of(&b));
}
