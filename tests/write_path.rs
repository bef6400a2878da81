//! The write path end to end: shell tools write through a real mount on Azurite, and an
//! independent client checks what storage holds.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn shell_tools_create_append_edit_and_delete() {
    let az = Azurite::start();
    let s = az.store();
    s.container("work");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let w = "alpha/storage/work";

    ok(m.sh(&format!(
        "echo hello > {w}/a.txt && echo world >> {w}/a.txt"
    )));
    assert_eq!(s.get("work", "a.txt"), b"hello\nworld\n");
    assert_eq!(ok(m.sh(&format!("cat {w}/a.txt"))), "hello\nworld\n");
    ok(m.sh(&format!("sed -i 's/world/there/' {w}/a.txt")));
    assert_eq!(s.get("work", "a.txt"), b"hello\nthere\n");
    ok(m.sh(&format!("touch {w}/empty")));
    assert_eq!(s.get("work", "empty"), b"");
    // Nothing but the files themselves: sed's temporary file was renamed away.
    assert_eq!(s.names("work"), vec!["a.txt", "empty"]);

    // Directories: markers, emptiness, recursive removal.
    ok(m.sh(&format!("mkdir -p {w}/a/b/c")));
    let marker = s.head("work", "a/b/c/").expect("marker blob for a/b/c");
    assert!(marker.is_folder_marker(), "{:?}", marker.metadata);
    assert_eq!(marker.size, 0);
    ok(m.sh(&format!("echo deep > {w}/a/b/c/f")));
    let err = fails(m.sh(&format!("rmdir {w}/a/b/c")));
    assert!(err.contains("not empty"), "{err}");
    ok(m.sh(&format!("rm {w}/a/b/c/f && rmdir {w}/a/b/c")));
    assert!(s.head("work", "a/b/c/").is_none());
    ok(m.sh(&format!("test -d {w}/a/b && ! test -e {w}/a/b/c")));
    ok(m.sh(&format!("rm -r {w}/a")));
    assert_eq!(s.names("work"), vec!["a.txt", "empty"]);

    // mv of a file (replacing a target) and of a directory.
    ok(m.sh(&format!("echo old > {w}/target && mv {w}/a.txt {w}/target")));
    assert_eq!(s.get("work", "target"), b"hello\nthere\n");
    assert!(s.head("work", "a.txt").is_none());
    ok(m.sh(&format!(
        "mkdir -p {w}/d1/sub && echo 1 > {w}/d1/x && echo 2 > {w}/d1/sub/y && mv {w}/d1 {w}/d2"
    )));
    assert_eq!(ok(m.sh(&format!("cat {w}/d2/x {w}/d2/sub/y"))), "1\n2\n");
    ok(m.sh(&format!("! test -e {w}/d1")));
    let mut names = s.names("work");
    names.sort();
    assert_eq!(
        names,
        vec!["d2/", "d2/sub/", "d2/sub/y", "d2/x", "empty", "target"]
    );

    // A new container, and removing it again.
    ok(m.sh("mkdir alpha/storage/fresh && echo in > alpha/storage/fresh/f"));
    assert_eq!(s.get("fresh", "f"), b"in\n");
    let err = fails(m.sh("rmdir alpha/storage/fresh"));
    assert!(err.contains("not empty"), "{err}");
    ok(m.sh("rm alpha/storage/fresh/f && rmdir alpha/storage/fresh"));
    ok(m.sh("! test -e alpha/storage/fresh"));
    let err = fails(m.sh("mkdir alpha/storage/Bad_Name"));
    assert!(err.contains("Invalid argument"), "{err}");
}

#[test]
fn cp_p_keeps_mtime_and_mode_and_chown_is_refused() {
    let az = Azurite::start();
    az.store().container("keep");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let src = m.dir.path().join("tool.sh");
    std::fs::write(&src, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o751)).unwrap();
    ok(m.sh(&format!(
        "touch -d '2001-02-03 04:05:06.5' {}",
        src.display()
    )));
    ok(m.sh(&format!(
        "cp -p {} alpha/storage/keep/tool.sh",
        src.display()
    )));
    let want = std::fs::metadata(&src).unwrap();
    // Seen back through a fresh mount: the values come from storage, not from memory.
    drop(m);
    let m = Mount::start(&config_for(&az, ""), &[]);
    let got = std::fs::metadata(m.p("alpha/storage/keep/tool.sh")).unwrap();
    assert_eq!(got.mode() & 0o7777, 0o751);
    assert_eq!(got.mtime(), want.mtime());
    assert_eq!(got.mtime_nsec(), want.mtime_nsec());
    ok(m.sh(
        "chmod 600 alpha/storage/keep/tool.sh && touch -d '2010-01-01' alpha/storage/keep/tool.sh",
    ));
    assert_eq!(
        ok(m.sh("stat -c '%a %Y' alpha/storage/keep/tool.sh")),
        "600 1262304000\n"
    );
    let err = fails(m.sh("chown 12345 alpha/storage/keep/tool.sh"));
    assert!(err.contains("not permitted"), "{err}");
    assert_eq!(az.store().get("keep", "tool.sh"), b"#!/bin/sh\necho hi\n");
}

#[test]
fn large_copy_round_trip_and_overwrite_in_the_middle() {
    let az = Azurite::start();
    let s = az.store();
    s.container("big");
    let m = Mount::start(&config_for(&az, ""), &["--cache-size", "64M"]);
    let local = m.dir.path().join("big.bin");
    let size = 1usize << 30;
    {
        let mut f = std::fs::File::create(&local).unwrap();
        for i in 0..(size >> 24) {
            f.write_all(&data(1 << 24, i as u64)).unwrap();
        }
    }
    let t = Instant::now();
    ok(m.sh(&format!("cp {} alpha/storage/big/big.bin", local.display())));
    eprintln!("cp 1 GiB in: {:?}", t.elapsed());
    let want = ok(m.sh(&format!("sha256sum < {}", local.display())));
    let stored = s.get("big", "big.bin");
    assert_eq!(stored.len(), size);
    assert_eq!(format!("{}  -\n", sha256_of(&stored)), want);
    drop(stored);
    let back = m.dir.path().join("back.bin");
    ok(m.sh(&format!("cp alpha/storage/big/big.bin {}", back.display())));
    assert_eq!(ok(m.sh(&format!("sha256sum < {}", back.display()))), want);
    std::fs::remove_file(&back).unwrap();

    // 3 MiB into the middle, crossing a block boundary: only the touched blocks travel.
    // Past its first 16 MiB the file went up in groups of blocks, 8 MiB each under a 64 MiB
    // budget, and 510..513 MiB touches the two groups that meet at 512 MiB.
    let before = m.stats();
    ok(m.sh(
        "dd if=/dev/zero of=alpha/storage/big/big.bin bs=1M seek=510 count=3 conv=notrunc status=none",
    ));
    let after = m.stats();
    let up = after["bytes_uploaded"] - before["bytes_uploaded"];
    assert!(up <= 16 << 20, "uploaded {up} bytes for a 3 MiB change");
    let mut expect = std::fs::read(&local).unwrap();
    expect[510 << 20..513 << 20].fill(0);
    let stored = s.get("big", "big.bin");
    assert_eq!(stored.len(), size);
    assert!(stored == expect, "content after dd conv=notrunc differs");
}

#[test]
fn tar_round_trip_and_rsync_twice() {
    let az = Azurite::start();
    az.store().container("tree");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let src = m.dir.path().join("src");
    for d in 0..5 {
        let dir = src.join(format!("d{d}/inner"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            std::fs::write(dir.join(format!("f{f}.txt")), data(100 + f * 37, f as u64)).unwrap();
        }
    }
    std::fs::write(src.join("big"), data(9 << 20, 7)).unwrap();
    ok(m.sh(&format!(
        "touch -d '2020-01-01' {}/d0/inner/f0.txt",
        src.display()
    )));
    let tarball = m.dir.path().join("t.tar");
    ok(m.sh(&format!(
        "tar -C {} -cf {} .",
        src.display(),
        tarball.display()
    )));
    ok(m.sh(&format!(
        "tar -C alpha/storage/tree -xf {}",
        tarball.display()
    )));
    ok(m.sh(&format!("diff -r {} alpha/storage/tree", src.display())));
    assert_eq!(
        ok(m.sh("stat -c %Y alpha/storage/tree/d0/inner/f0.txt")),
        "1577836800\n"
    );
    let out = m.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    ok(m.sh(&format!(
        "tar -C alpha/storage/tree -cf - . | tar -C {} -xf -",
        out.display()
    )));
    ok(m.sh(&format!("diff -r {} {}", src.display(), out.display())));

    // rsync -a into the mount, twice: the second run finds nothing to send.
    let first = ok(m.sh(&format!(
        "rsync -a --stats {}/ alpha/storage/tree/copy/",
        src.display()
    )));
    assert!(
        first.contains("Number of regular files transferred: 101"),
        "{first}"
    );
    let second = ok(m.sh(&format!(
        "rsync -a --stats {}/ alpha/storage/tree/copy/",
        src.display()
    )));
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "{second}"
    );
    ok(m.sh(&format!(
        "diff -r {} alpha/storage/tree/copy",
        src.display()
    )));
}

#[test]
fn two_mounts_writing_one_file_keep_both_versions() {
    let az = Azurite::start();
    let s = az.store();
    s.container("shared");
    s.put("shared", "report.txt", "original\n");
    let a = Mount::start(&config_for(&az, ""), &[]);
    let b = Mount::start(&config_for(&az, ""), &[]);
    let path = "alpha/storage/shared/report.txt";

    let mut fa = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(a.p(path))
        .unwrap();
    let mut fb = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(b.p(path))
        .unwrap();
    fa.write_all(b"from node A\n").unwrap();
    fb.write_all(b"from node B\n").unwrap();
    fa.sync_all().expect("the first commit wins");
    let err = fb
        .sync_all()
        .expect_err("the second commit must be refused");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(fa);
    drop(fb);

    assert_eq!(s.get("shared", "report.txt"), b"from node A\n");
    let siblings: Vec<String> = s
        .names("shared")
        .into_iter()
        .filter(|n| n.starts_with("report.txt.conflict-"))
        .collect();
    assert_eq!(siblings.len(), 1, "{siblings:?}");
    assert_eq!(s.get("shared", &siblings[0]), b"from node B\n");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        b.log_text().contains("changed elsewhere"),
        "{}",
        b.log_text()
    );

    // In-place edits of a large blob: the loser's sibling is the whole file as it edited it,
    // although the version it edited is gone by then.
    let mut big = data(9 << 20, 11);
    s.put("shared", "big.bin", big.clone());
    let open_rw = |m: &Mount| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.p("alpha/storage/shared/big.bin"))
            .unwrap()
    };
    let (mut fa, mut fb) = (open_rw(&a), open_rw(&b));
    use std::io::{Seek, SeekFrom};
    fa.seek(SeekFrom::Start(5 << 20)).unwrap();
    fa.write_all(b"AAAA").unwrap();
    fb.seek(SeekFrom::Start(1 << 20)).unwrap();
    fb.write_all(b"BBBB").unwrap();
    fa.sync_all().unwrap();
    assert!(fb.sync_all().is_err());
    drop((fa, fb));
    let mut won = big.clone();
    won[5 << 20..(5 << 20) + 4].copy_from_slice(b"AAAA");
    assert!(s.get("shared", "big.bin") == won);
    big[1 << 20..(1 << 20) + 4].copy_from_slice(b"BBBB");
    let sibling = s
        .names("shared")
        .into_iter()
        .find(|n| n.starts_with("big.bin.conflict-"))
        .expect("a sibling for the refused edit");
    assert!(
        s.get("shared", &sibling) == big,
        "the sibling is the whole edited file"
    );
    // The blob can still be removed although edits took snapshots of it.
    ok(a.sh("rm alpha/storage/shared/big.bin"));

    // Two new files of one name: the same rule.
    let mut fa = std::fs::File::create(a.p("alpha/storage/shared/new.txt")).unwrap();
    let mut fb = std::fs::File::create(b.p("alpha/storage/shared/new.txt")).unwrap();
    fa.write_all(b"A").unwrap();
    fb.write_all(b"B").unwrap();
    fb.sync_all().unwrap();
    assert!(fa.sync_all().is_err());
    assert_eq!(s.get("shared", "new.txt"), b"B");
    assert!(
        s.names("shared")
            .iter()
            .any(|n| n.starts_with("new.txt.conflict-") && s.get("shared", n) == b"A")
    );
}

#[test]
fn killed_daemon_mid_write_leaves_the_old_blob() {
    let az = Azurite::start();
    let s = az.store();
    s.container("safe");
    let old = data(6 << 20, 3);
    s.put("safe", "model.bin", old.clone());
    let m = Mount::start(&config_for(&az, ""), &[]);
    let pid = m.daemon_pid();
    // Written in place: dd with O_TRUNC closes a duplicate descriptor right after opening,
    // and that close commits the truncation (SEMANTICS.md, Writing), as a local file system
    // empties the file at open.
    let mut writer = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=100000", "conv=notrunc"])
        .arg(format!(
            "of={}",
            m.p("alpha/storage/safe/model.bin").display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while m.stats().get("bytes_uploaded").copied().unwrap_or(0) < 64 << 20 {
        assert!(t.elapsed() < Duration::from_secs(60), "no upload started");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(m.sh(&format!("kill -9 {pid}")));
    let _ = writer.wait();
    let now = s.get("safe", "model.bin");
    assert!(
        now == old,
        "the committed blob changed: {} bytes now\n{}",
        now.len(),
        m.log_text()
    );
    assert_eq!(s.names("safe"), vec!["model.bin"]);
    // The next mount on the same mountpoint works and shows the old content.
    let out = m.mount_cmd(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(m.p("alpha/storage/safe/model.bin")).unwrap() == old);
}

#[test]
fn account_files_and_top_directories_refuse_changes() {
    let az = Azurite::start();
    az.store().container("c01");
    let m = Mount::start(&config_for(&az, ""), &[]);
    for (cmd, want) in [
        ("echo x > alpha/account.json", "Permission denied"),
        ("echo x >> alpha/keys", "Permission denied"),
        ("touch alpha/new", "Permission denied"),
        ("mkdir alpha/dir", "Permission denied"),
        ("mkdir newacct", "Permission denied"),
        ("touch alpha/storage/file", "not permitted"),
        ("rm alpha/account.json", "Permission denied"),
        ("chmod 777 alpha/account.json", "not permitted"),
    ] {
        let err = fails(m.sh(cmd));
        assert!(err.contains(want), "{cmd}: {err}");
    }
}
