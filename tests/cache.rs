//! The page cache and read engine through a real mount on Azurite: what reads cost (from the
//! daemon's own counters), freshness across opens, and the memory budget.

mod common;

use std::time::Duration;

use common::*;

fn delta(
    after: &std::collections::BTreeMap<String, u64>,
    before: &std::collections::BTreeMap<String, u64>,
    k: &str,
) -> u64 {
    after[k] - before[k]
}

#[test]
fn warm_reread_small_reads_and_listings_cost_what_they_should() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    let body = data(24 << 20, 3);
    s.put("data", "big.bin", body.clone());
    s.put_many(
        "data",
        (0..200).map(|i| format!("many/f{i:03}")).collect(),
        b"0123456789",
    );
    // Attributes trusted for 30 s: `ls -l` of 200 files on a loaded machine may take longer
    // than the default 1 s, and a HEAD per file after that would be the kernel asking again,
    // not the listing failing to answer.
    let m = Mount::start(&config_for(&az, ""), &["--attr-timeout", "30"]);
    let f = "alpha/storage/data/big.bin";

    // Cold read, then a warm re-read: no GET the second time.
    ok(m.sh(&format!("cat {f} > /dev/null")));
    let warm = m.stats();
    assert!(warm["get_requests"] > 0 && warm["bytes_fetched"] >= 24 << 20);
    assert!(std::fs::read(m.p(f)).unwrap() == body);
    let after = m.stats();
    assert_eq!(
        delta(&after, &warm, "get_requests"),
        0,
        "warm re-read issued GETs"
    );
    assert!(
        delta(&after, &warm, "head_requests") <= 2,
        "an open is one HEAD"
    );

    // A 4 KiB read from the middle of a blob nobody read yet fetches at most 64 KiB.
    s.put("data", "big2.bin", data(24 << 20, 4));
    std::thread::sleep(Duration::from_millis(1100));
    ok(m.sh("ls alpha/storage/data > /dev/null"));
    let before = m.stats();
    let got =
        ok(m.sh("dd if=alpha/storage/data/big2.bin bs=4096 skip=3000 count=1 status=none | wc -c"));
    assert_eq!(got.trim(), "4096");
    let after = m.stats();
    let fetched = delta(&after, &before, "bytes_fetched");
    assert!(fetched <= 64 * 1024, "a 4 KiB read fetched {fetched} bytes");

    // `ls -l` of a 200-entry directory: one listing, no HEAD per file.
    std::thread::sleep(Duration::from_millis(1100));
    let before = m.stats();
    let out = ok(m.sh("ls -l alpha/storage/data/many"));
    assert_eq!(out.lines().filter(|l| l.starts_with('-')).count(), 200);
    let after = m.stats();
    // The walk to the directory may probe its name (one HEAD and a one-item list); the
    // 200 files cost nothing more.
    assert!(
        delta(&after, &before, "head_requests") <= 1,
        "ls -l sent a HEAD per file"
    );
    // Walking there: the container list and the probe; then the one listing.
    let lists = delta(&after, &before, "list_requests");
    assert!(lists <= 3, "ls -l sent {lists} list requests");
    // A miss is remembered: stat of the same missing name twice asks storage once.
    let before = m.stats();
    fails(m.sh("stat alpha/storage/data/many/nothere; stat alpha/storage/data/many/nothere"));
    let after = m.stats();
    assert_eq!(
        delta(&after, &before, "head_requests"),
        0,
        "the fresh listing answers misses"
    );
}

#[test]
fn a_replaced_blob_is_seen_by_the_next_open_after_the_attribute_timeout() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    s.put("data", "f.txt", "version one\n");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let f = m.p("alpha/storage/data/f.txt");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version one\n");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version one\n");
    s.put("data", "f.txt", "the second version, longer\n");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        "the second version, longer\n"
    );
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 27);
    s.put("data", "f.txt", "3\n");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "3\n");
}

#[test]
fn four_readers_of_blobs_larger_than_the_budget_stay_within_it() {
    let az = Azurite::start();
    let s = az.store();
    s.container("data");
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| data(48 << 20, 10 + i)).collect();
    for (i, b) in blobs.iter().enumerate() {
        s.put("data", &format!("b{i}.bin"), b.clone());
    }
    let m = Mount::start(&config_for(&az, ""), &["--cache-size", "16M"]);
    let base_rss = peak_rss(m.daemon_pid());
    let out = m.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Four concurrent readers, twice over, so pages are evicted and fetched again.
    let script = (0..4)
        .map(|i| format!("cat alpha/storage/data/b{i}.bin > {0}/b{i} && cat alpha/storage/data/b{i}.bin > {0}/c{i} &", out.display()))
        .collect::<Vec<_>>()
        .join(" ")
        + " wait";
    ok(m.sh(&script));
    for (i, b) in blobs.iter().enumerate() {
        assert!(
            std::fs::read(out.join(format!("b{i}"))).unwrap() == *b,
            "b{i} differs"
        );
        assert!(
            std::fs::read(out.join(format!("c{i}"))).unwrap() == *b,
            "c{i} differs"
        );
    }
    let st = m.stats();
    assert!(st["evictions"] > 0, "{st:?}");
    assert!(st["cache_bytes"] <= 16 << 20, "{st:?}");
    let peak = peak_rss(m.daemon_pid());
    // Without the budget, 4 x 48 MiB would be held; allow the budget plus overhead.
    assert!(
        peak <= base_rss + (16 << 20) + (48 << 20),
        "peak RSS {} MiB (at start {} MiB)",
        peak >> 20,
        base_rss >> 20
    );
}
