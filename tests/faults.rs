//! Faults through a real mount: a fault proxy between batchfs and Azurite is switched while
//! shell commands run. Reads return the right bytes or EIO, never wrong bytes; a `close` that
//! returned 0 means storage holds exactly those bytes, and one that failed leaves the old
//! version; no call waits past `--timeout`; memory stays within the budget; once the fault
//! ends, work goes on without a remount. Each test prints what it measured.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

fn mount_via(az: &Azurite, proxy: &Proxy, extra: &[&str]) -> Mount {
    let cfg = config_for(az, "").replace(&az.endpoint(), &proxy.endpoint());
    Mount::start(&cfg, extra)
}

/// Runs `script` in the mount; returns whether it succeeded and how long it took.
fn timed(m: &Mount, script: &str) -> (bool, Duration) {
    let t = Instant::now();
    let out = m.sh(script);
    (out.status.success(), t.elapsed())
}

#[test]
fn stalled_or_refusing_storage_gives_eio_within_the_timeout_and_recovers() {
    let az = Azurite::start();
    let s = az.store();
    s.container("fff");
    s.put("fff", "a", b"hello".to_vec());
    let proxy = Proxy::start(&az.endpoint());
    let timeout = 5.0;
    let m = mount_via(
        &az,
        &proxy,
        &[
            "--timeout",
            "5",
            "--attr-timeout",
            "0",
            "--dir-timeout",
            "0",
        ],
    );
    let w = "alpha/storage/fff";
    assert_eq!(ok(m.sh(&format!("cat {w}/a"))), "hello");

    for (mode, bound) in [(Mode::Stall, timeout + 1.5), (Mode::Refuse, 3.5)] {
        proxy.set(mode);
        let (ok1, t1) = timed(&m, &format!("cat {w}/a"));
        let (ok2, t2) = timed(&m, &format!("ls {w}/new-{mode:?}"));
        let (ok3, t3) = timed(&m, &format!("echo x > {w}/w-{mode:?}"));
        println!(
            "{mode:?}: cat failed after {:.1}s, ls after {:.1}s, write after {:.1}s",
            t1.as_secs_f64(),
            t2.as_secs_f64(),
            t3.as_secs_f64()
        );
        assert!(!ok1 && !ok2 && !ok3, "{mode:?}: every call fails");
        for t in [t1, t2, t3] {
            assert!(t.as_secs_f64() < bound, "{mode:?}: {t:?} is past {bound}s");
        }
        proxy.set(Mode::Pass);
        // Recovery needs no remount (the first call may be the probe that finds it back).
        let t = Instant::now();
        loop {
            if m.sh(&format!("cat {w}/a")).status.success() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no recovery after {mode:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ok(m.sh(&format!("echo back > {w}/after-{mode:?}")));
        assert_eq!(s.get("fff", &format!("after-{mode:?}")), b"back\n");
        assert!(s.head("fff", &format!("w-{mode:?}")).is_none());
    }
    assert!(!m.log_text().contains("panicked"));
}

#[test]
fn throttled_and_cut_reads_give_the_right_bytes_or_eio() {
    let az = Azurite::start();
    let s = az.store();
    s.container("rrr");
    let big = data(9 << 20, 7);
    // One blob per case: the daemon's own cache must not answer for storage.
    for i in 0..5 {
        s.put("rrr", &format!("big{i}"), big.clone());
    }
    let local = tempfile::tempdir().unwrap();
    let want = local.path().join("want");
    std::fs::write(&want, &big).unwrap();
    let proxy = Proxy::start(&az.endpoint());
    let m = mount_via(&az, &proxy, &["--timeout", "8"]);
    let w = "alpha/storage/rrr";
    let modes = [
        Mode::Throttle,
        Mode::CutReplies(300_000),
        Mode::Error500,
        Mode::CutReplies(5_000),
    ];
    let mut failed = 0;
    for (i, mode) in modes.into_iter().enumerate() {
        // The fault starts while the copy runs, and ends 1.5 s later.
        let got = local.path().join(format!("got{i}"));
        let cmd = format!("cat {w}/big{i} > {}", got.display());
        let proxy = &proxy;
        proxy.set(mode);
        let (ok_, took) = std::thread::scope(|sc| {
            let h = sc.spawn(|| timed(&m, &cmd));
            std::thread::sleep(Duration::from_millis(1500));
            proxy.set(Mode::Pass);
            h.join().unwrap()
        });
        let bytes = std::fs::read(&got).unwrap();
        println!(
            "{mode:?}: cat {} after {:.1}s",
            if ok_ { "succeeded" } else { "failed" },
            took.as_secs_f64()
        );
        if ok_ {
            assert!(bytes == big, "{mode:?}: cat returned 0 with wrong bytes");
        } else {
            failed += 1;
            // Whatever was returned before the error is a prefix of the right bytes.
            assert!(
                big.starts_with(&bytes),
                "{mode:?}: wrong bytes before the error"
            );
        }
    }
    println!("{failed} of {} reads failed with an error", modes.len());
    let retries = m.stats().get("retries").copied().unwrap_or(0);
    println!("{retries} requests retried");
    assert!(retries > 0, "the faults reached the mount");
    // After the faults, the same mount reads it right.
    ok(m.sh(&format!("cmp {w}/big4 {}", want.display())));
    assert!(!m.log_text().contains("panicked"));
}

#[test]
fn a_close_that_returns_0_means_storage_holds_exactly_those_bytes() {
    let az = Azurite::start();
    let s = az.store();
    s.container("ccc");
    let proxy = Proxy::start(&az.endpoint());
    let m = mount_via(&az, &proxy, &["--timeout", "6", "--cache-size", "64M"]);
    let pid = m.daemon_pid();
    let w = "alpha/storage/ccc";
    let local = tempfile::tempdir().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // (mode, how long in ms): short faults that retries ride out, and a stall longer than
    // the timeout that fails whatever is under way.
    let modes = [
        (Mode::Pass, 400),
        (Mode::CutReplies(200), 300),
        (Mode::Pass, 300),
        (Mode::Error500, 400),
        (Mode::Pass, 300),
        (Mode::Throttle, 500),
        (Mode::CutReplies(20_000), 300),
        (Mode::Pass, 1500),
        (Mode::Stall, 7000),
    ];
    // (name, close succeeded, what storage held before, what was written, what it holds after)
    type Outcome = (String, bool, Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut longest = Duration::ZERO;
    std::thread::scope(|sc| {
        // Stops the fault switcher however the loop below ends.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let proxy = &proxy;
        let stop = &stop;
        sc.spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (mode, ms) = modes[i % modes.len()];
                proxy.set(mode);
                i += 1;
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            proxy.set(Mode::Pass);
        });
        for i in 0..24u64 {
            let len = [0usize, 100, 70_000, 4 << 20, (9 << 20) + 123][i as usize % 5];
            let new = data(len, i);
            let src = local.path().join(format!("src{i}"));
            std::fs::write(&src, &new).unwrap();
            // Half overwrite an existing version, half create a new file.
            let name = format!("f{}", i % 12);
            let old = s.head("ccc", &name).map(|_| s.get("ccc", &name));
            let (ok_, took) = timed(&m, &format!("cp {} {w}/{name}", src.display()));
            longest = longest.max(took);
            let stored = s.head("ccc", &name).map(|_| s.get("ccc", &name));
            outcomes.push((name, ok_, old, new, stored));
        }
    });
    let (mut good, mut bad, mut landed) = (0, 0, 0);
    for (name, ok_, old, new, stored) in &outcomes {
        if *ok_ {
            good += 1;
            assert!(stored.as_ref() == Some(new), "{name}: close returned 0");
        } else if stored == old {
            bad += 1;
        } else {
            // SEMANTICS.md, Crash safety: a commit whose reply was lost while storage then
            // stayed unreachable for the whole --timeout cannot be told from one that did not
            // land. Then storage holds exactly the new bytes, never anything else.
            assert!(
                stored.as_ref() == Some(new),
                "{name}: close failed, and storage holds neither version\n{}",
                m.log_text()
            );
            landed += 1;
        }
    }
    let rss = peak_rss(pid);
    println!(
        "{good} closes returned 0 and {bad} failed leaving the old version ({landed} failed \
         after a lost reply and landed); longest cp {:.1}s; peak RSS {} MiB",
        longest.as_secs_f64(),
        rss >> 20
    );
    assert!(good > 0, "some writes went through between the faults");
    assert!(
        rss < (64 + 160) << 20,
        "peak RSS {} MiB over a 64 MiB cache",
        rss >> 20
    );
    // Nothing was committed behind a failed close's back (storage still holds what it held
    // right after each failed close, for the names no later copy changed), and no false
    // conflict was made.
    std::thread::sleep(Duration::from_secs(2));
    let mut last: std::collections::BTreeMap<&str, (bool, &Option<Vec<u8>>)> = Default::default();
    for (name, ok_, _, _, stored) in &outcomes {
        last.insert(name, (*ok_, stored));
    }
    for (name, (ok_, stored)) in last {
        let now = s.head("ccc", name).map(|_| s.get("ccc", name));
        assert!(
            &now == stored,
            "{name} changed after its last close (ok: {ok_})"
        );
    }
    let names = s.names("ccc");
    assert!(
        names.iter().all(|n| !n.contains(".conflict-")),
        "{names:?}\n{}",
        m.log_text()
    );
    assert!(!m.log_text().contains("panicked"));
}

#[test]
fn a_slow_link_that_moves_bytes_is_not_an_outage() {
    let az = Azurite::start();
    let s = az.store();
    s.container("sss");
    let proxy = Proxy::start(&az.endpoint());
    // A 4 MiB block at 1 MiB/s takes about 4 s: longer than the whole --timeout.
    let m = mount_via(&az, &proxy, &["--timeout", "3"]);
    proxy.set(Mode::Slow(1 << 20));
    let w = "alpha/storage/sss";
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    let body = data((6 << 20) + 5, 3);
    std::fs::write(&src, &body).unwrap();
    let (ok_, took) = timed(&m, &format!("cp {} {w}/slow", src.display()));
    println!(
        "6 MiB over 1 MiB/s with --timeout 3: took {:.1}s",
        took.as_secs_f64()
    );
    assert!(ok_, "a slow transfer is not a failure:\n{}", m.log_text());
    proxy.set(Mode::Pass);
    assert_eq!(s.get("sss", "slow"), body);
}

#[test]
fn a_refused_endpoint_is_reported_at_once() {
    let az = Azurite::start();
    let cfg = config_for(&az, "").replace(&az.endpoint(), "http://127.0.0.1:1/devstoreaccount1");
    let m = Mount::prepare(&cfg);
    let t = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["accounts", "--config"])
        .arg(&m.config)
        .output()
        .unwrap();
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "accounts against a refusing endpoint: {:.1}s",
        took.as_secs_f64()
    );
    assert!(!out.status.success());
    assert!(text.contains("refused"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let t = Instant::now();
    let err = fails(m.mount_cmd(&[]));
    println!(
        "mount against a refusing endpoint: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(err.contains("refused"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8));
}

#[test]
fn writers_stuck_on_storage_do_not_starve_other_calls() {
    let az = Azurite::start();
    let s = az.store();
    s.container("ggg");
    let proxy = Proxy::start(&az.endpoint());
    let m = mount_via(&az, &proxy, &["--timeout", "20", "--cache-size", "32M"]);
    let w = "alpha/storage/ggg";
    ok(m.sh(&format!("ls {w}")));
    proxy.set(Mode::Stall);
    // More writers than the FUSE session has threads, each blocked on budget that uploads
    // to a stalled storage hold.
    let writers = (0..12)
        .map(|i| {
            std::process::Command::new("dd")
                .args(["if=/dev/zero", &format!("of={}/w{i}", m.p(w).display())])
                .args(["bs=1M", "count=64", "status=none"])
                .spawn()
                .expect("dd")
        })
        .collect::<Vec<_>>();
    std::thread::sleep(Duration::from_secs(3));
    // What needs no storage answers at once.
    let (ok_, took) = timed(
        &m,
        "cat alpha/account.json > /dev/null && ls alpha && stat alpha/keys",
    );
    println!(
        "with 12 writers stuck: account files answered in {:.2}s",
        took.as_secs_f64()
    );
    assert!(ok_);
    assert!(took < Duration::from_secs(2), "{took:?}");
    // `batchfs stats` into a closed pipe is no panic.
    let out = m.sh(&format!(
        "{BIN} stats . | true; echo status ${{PIPESTATUS[0]}}"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status 0"), "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    proxy.set(Mode::Pass);
    for mut w in writers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert!(!m.log_text().contains("panicked"));
}
