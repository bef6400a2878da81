//! POSIX attributes through a real mount, read back from storage by a second, fresh mount
//! (not from the cache of the mount that set them): directory modes, independent atime and
//! mtime, name lengths, link counts, temporary files unlinked while open.

mod common;

use common::*;

fn stat(m: &Mount, fmt: &str, path: &str) -> String {
    ok(m.sh(&format!("stat -c '{fmt}' {path}")))
        .trim()
        .to_string()
}

#[test]
fn modes_times_and_names_are_kept_in_storage() {
    let az = Azurite::start();
    let s = az.store();
    s.container("pos");
    let a = Mount::start(
        &config_for(&az, ""),
        &["--attr-timeout", "0", "--dir-timeout", "0"],
    );
    let w = "alpha/storage/pos";
    ok(a.sh(&format!(
        "mkdir -m 0751 {w}/d && echo x > {w}/f && mkdir {w}/e"
    )));
    ok(a.sh(&format!("chmod 0700 {w}/e && chmod 0640 {w}/f")));
    ok(a.sh(&format!("touch -m -d '2001-02-03 04:05:06.5 UTC' {w}/f")));
    ok(a.sh(&format!("touch -a -d '2011-12-13 14:15:16 UTC' {w}/f")));
    ok(a.sh(&format!("touch -m -d '2002-03-04 05:06:07 UTC' {w}/d")));
    // Storage holds them: the marker's metadata, the blob's metadata.
    let d = s.head("pos", "d/").expect("marker");
    assert_eq!(d.metadata.get("mode").map(String::as_str), Some("751"));
    let f = s.head("pos", "f").expect("blob");
    assert_eq!(f.metadata.get("mode").map(String::as_str), Some("640"));
    assert_eq!(
        f.metadata.get("mtime").map(String::as_str),
        Some("2001-02-03T04:05:06.5Z")
    );

    // A second mount reads them back.
    let b = Mount::start(&config_for(&az, ""), &[]);
    assert_eq!(stat(&b, "%a", &format!("{w}/d")), "751");
    assert_eq!(stat(&b, "%a", &format!("{w}/e")), "700");
    assert_eq!(stat(&b, "%a", &format!("{w}/f")), "640");
    assert_eq!(stat(&b, "%Y", &format!("{w}/f")), "981173106");
    assert_eq!(stat(&b, "%X", &format!("{w}/f")), "1323785716");
    assert_eq!(stat(&b, "%Y", &format!("{w}/d")), "1015218367");
    // Directories report one link (unknown), files one.
    assert_eq!(stat(&b, "%h", &format!("{w}/d")), "1");
    assert_eq!(stat(&b, "%h", &format!("{w}/f")), "1");

    // Creating and removing entries moves the directory's mtime.
    let before: u64 = stat(&a, "%Y", &format!("{w}/d")).parse().unwrap();
    ok(a.sh(&format!("echo y > {w}/d/new")));
    let after: u64 = stat(&a, "%Y", &format!("{w}/d")).parse().unwrap();
    assert!(after > before, "{before} -> {after}");
    // And removing one.
    ok(a.sh(&format!(
        "touch -m -d '2003-01-01 00:00:00 UTC' {w}/d && rm {w}/d/new"
    )));
    let removed: u64 = stat(&a, "%Y", &format!("{w}/d")).parse().unwrap();
    assert!(removed > 1_041_379_200, "rm moved the mtime: {removed}");

    // A name over 255 bytes is ENAMETOOLONG, not EINVAL or ENOENT.
    let long = "n".repeat(256);
    let err = fails(a.sh(&format!("touch {w}/{long}")));
    assert!(err.contains("File name too long"), "{err}");
    let err = fails(a.sh(&format!("mkdir {w}/{long}")));
    assert!(err.contains("File name too long"), "{err}");
    let err = fails(a.sh(&format!("stat {w}/{long}")));
    assert!(err.contains("File name too long"), "{err}");
}

#[test]
fn a_temporary_file_unlinked_while_open_keeps_its_data() {
    let az = Azurite::start();
    let s = az.store();
    s.container("tmp");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let w = m.p("alpha/storage/tmp");
    // Open, write, unlink, then read and stat through the descriptor (as mkstemp users do).
    let script = format!(
        "exec 3<>{w}/t && printf scratch >&3 && rm {w}/t && \
         test ! -e {w}/t && stat -L -c %h /proc/self/fd/3 && cat /proc/self/fd/3 <&3 && \
         exec 3>&-",
        w = w.display()
    );
    let out = ok(m.sh(&script));
    assert_eq!(out, "0\nscratch");
    assert!(s.names("tmp").is_empty(), "nothing reaches storage");
}

#[test]
fn a_bare_truncation_is_in_storage_when_close_returns() {
    let az = Azurite::start();
    let s = az.store();
    s.container("trc");
    s.put("trc", "f", data(1 << 20, 1));
    let m = Mount::start(&config_for(&az, ""), &[]);
    let w = "alpha/storage/trc";
    for round in 0..5 {
        // open without O_TRUNC, ftruncate, close: storage has it when the command returns.
        ok(m.sh(&format!("truncate -s {} {w}/f", 100 + round)));
        assert_eq!(s.head("trc", "f").expect("blob").size, 100 + round);
        ok(m.sh(&format!("truncate -s 1M {w}/f")));
        assert_eq!(s.head("trc", "f").expect("blob").size, 1 << 20);
    }
    // `: > f` (O_TRUNC, close) empties it in storage too.
    ok(m.sh(&format!(": > {w}/f")));
    assert_eq!(s.head("trc", "f").expect("blob").size, 0);
}
