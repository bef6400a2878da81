//! Extended attributes through a real mount on Azurite: `getfattr`, `setfattr`, `cp -a`,
//! `rsync -X` and `tar --xattrs` against blob metadata and properties, checked in storage
//! with Microsoft's Python SDK.

mod common;

use common::sdk::*;
use common::*;
use serde_json::Value;

const C: &str = "alpha/storage/data";

fn setup() -> (Azurite, Sdk, Mount) {
    mounted_with_container("data")
}

fn meta(sdk: &Sdk, name: &str) -> Metadata {
    sdk.head("data", name)
        .unwrap_or_else(|| panic!("{name} is not in storage"))
        .metadata
}

/// `getfattr -d` of a path: name → value.
fn dumped(m: &Mount, path: &str) -> Metadata {
    let out = ok(m.sh(&format!("getfattr -d --absolute-names -- '{path}'")));
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Metadata {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn user_attributes_are_blob_metadata_both_ways() {
    let (_az, sdk, m) = setup();
    let sdk_put = |args: &[&str]| sdk.ok(args, b"");
    sdk_put(&[
        "put",
        "data",
        "f.txt",
        "--data",
        "hello",
        "--meta",
        "owner=bob",
        "--meta",
        "mtime=2023-04-05T06:07:08.123456789Z",
        "--meta",
        "Project=x",
    ]);
    let f = format!("{C}/f.txt");

    // Another tool's metadata shows as user attributes; batchfs's own keys (mtime) do not.
    // (Names come from a HEAD, whose header names HTTP gives in lower case: Azure matches
    // metadata names without case.)
    assert_eq!(
        dumped(&m, &f),
        pairs(&[("user.owner", "bob"), ("user.project", "x")])
    );
    assert_eq!(
        ok(m.sh(&format!("getfattr --only-values -n user.owner {f}"))),
        "bob"
    );

    // Set, replace (in another spelling of the key), remove: each is in storage at once, and
    // keeps the data, the other tool's keys and the file's time.
    let before = ok(m.sh(&format!("stat -c %Y {f}")));
    ok(m.sh(&format!("setfattr -n user.stage -v 'raw data 1' {f}")));
    ok(m.sh(&format!("setfattr -n user.project -v y {f}")));
    ok(m.sh(&format!("setfattr -x user.owner {f}")));
    let md = meta(&sdk, "f.txt");
    assert_eq!(md.get("stage").map(String::as_str), Some("raw data 1"));
    assert_eq!(md.get("project").map(String::as_str), Some("y"));
    assert!(
        !md.contains_key("Project") && !md.contains_key("owner"),
        "{md:?}"
    );
    assert!(
        md.get("mtime")
            .is_some_and(|t| t.starts_with("2023-04-05T06:07:08.123456789"))
    );
    assert_eq!(sdk.ok(&["get", "data", "f.txt"], b""), b"hello");
    assert_eq!(ok(m.sh(&format!("stat -c %Y {f}"))), before);
    ok(m.sh(&format!("setfattr -n user.empty -v '' {f}")));
    assert_eq!(
        meta(&sdk, "f.txt").get("empty").map(String::as_str),
        Some("")
    );

    // What Azure would refuse is refused before any request, and nothing changes.
    let md = meta(&sdk, "f.txt");
    for (name, value, err) in [
        ("user.bad-name", "v", "Invalid argument"),
        ("user.9lives", "v", "Invalid argument"),
        ("user.k", "caf\u{e9}", "Invalid argument"),
        ("user.mtime", "1", "Operation not permitted"),
        ("user.hdi_isfolder", "true", "Operation not permitted"),
        ("user.azure.etag", "x", "Operation not permitted"),
        ("trusted.k", "v", "Operation not supported"),
    ] {
        let e = fails(m.sh(&format!("setfattr -n {name} -v '{value}' {f}")));
        assert!(e.contains(err), "{name}: {e}");
    }
    let e = fails(m.sh(&format!(
        "setfattr -n user.big -v \"$(head -c 9000 /dev/zero | tr '\\0' x)\" {f}"
    )));
    assert!(e.contains("No space left"), "{e}");
    assert_eq!(meta(&sdk, "f.txt"), md);
    let e = fails(m.sh(&format!("getfattr -n user.nothing {f}")));
    assert!(e.contains("No such attribute"), "{e}");
    let e = fails(m.sh(&format!("getfattr -n security.selinux {f}")));
    assert!(e.contains("Operation not supported"), "{e}");
    // `ls -l` asks for security and ACL attributes of every entry: it must not fail.
    ok(m.sh(&format!("ls -l {C}")));
}

#[test]
fn azure_properties_are_read_by_name_and_two_are_settable() {
    let (_az, sdk, m) = setup();
    sdk.ok(
        &[
            "put",
            "data",
            "page.html",
            "--data",
            "<p>",
            "--content-type",
            "text/html",
        ],
        b"",
    );
    let f = format!("{C}/page.html");
    let get = |n: &str| ok(m.sh(&format!("getfattr --only-values -n user.azure.{n} {f}")));
    let props = sdk.props("data", "page.html");
    assert_eq!(get("content_type"), "text/html");
    assert_eq!(get("blob_type"), "BlockBlob");
    assert_eq!(
        get("etag"),
        props["etag"].as_str().unwrap().trim_matches('"')
    );
    assert_eq!(get("lease_state"), "available");
    assert!(get("last_modified").ends_with('Z'));
    // Not listed: copies carry metadata only.
    assert!(!ok(m.sh(&format!("getfattr -d -m - {f}"))).contains("azure"));

    ok(m.sh(&format!(
        "setfattr -n user.azure.content_type -v application/json {f}"
    )));
    assert_eq!(
        sdk.props("data", "page.html")["content_type"],
        "application/json"
    );
    assert_eq!(sdk.ok(&["get", "data", "page.html"], b""), b"<p>");
    ok(m.sh(&format!("setfattr -n user.azure.access_tier -v cool {f}")));
    assert_eq!(sdk.props("data", "page.html")["blob_tier"], "Cool");
    assert_eq!(get("access_tier"), "Cool");
    let e = fails(m.sh(&format!(
        "setfattr -n user.azure.access_tier -v lukewarm {f}"
    )));
    assert!(e.contains("Invalid argument"), "{e}");
}

#[test]
fn directories_keep_attributes_in_their_marker() {
    let (_az, sdk, m) = setup();
    let d = format!("{C}/results");
    ok(m.sh(&format!("mkdir {d} && setfattr -n user.color -v red {d}")));
    let md = meta(&sdk, "results/");
    assert_eq!(md.get("color").map(String::as_str), Some("red"));
    assert_eq!(md.get("hdi_isfolder").map(String::as_str), Some("true"));
    assert_eq!(dumped(&m, &d), pairs(&[("user.color", "red")]));
    // A directory another tool made without a marker gets one.
    sdk.ok(&["put", "data", "bare/x", "--data", "1"], b"");
    ok(m.sh(&format!("setfattr -n user.k -v v {C}/bare")));
    assert_eq!(meta(&sdk, "bare/").get("k").map(String::as_str), Some("v"));
    assert_eq!(ok(m.sh(&format!("cat {C}/bare/x"))), "1");
}

#[test]
fn a_file_open_for_writing_commits_its_attributes_with_its_data() {
    let (_az, sdk, m) = setup();
    // Attributes set while the file is open go up with its close, in one commit.
    let f = format!("{C}/w.txt");
    let local = tempfile::tempdir().unwrap();
    let seen = local.path().join("seen");
    ok(m.sh(&format!(
        "exec 3>{f}; echo data >&3; setfattr -n user.k -v v {f}; getfattr --only-values -n user.k {f} > {}; exec 3>&-",
        seen.display()
    )));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "v");
    let s = sdk.head("data", "w.txt").expect("committed");
    assert_eq!(s.data, b"data\n");
    assert_eq!(s.metadata.get("k").map(String::as_str), Some("v"));

    // A content type set while the file is open for writing: the close commits the data
    // under it, without taking the change for someone else's.
    ok(m.sh(&format!(
        "exec 3>>{f}; echo more >&3; setfattr -n user.azure.content_type -v text/plain {f}; echo end >&3; exec 3>&-"
    )));
    let p = sdk.props("data", "w.txt");
    assert_eq!(p["content_type"], "text/plain");
    assert_eq!(p["metadata"]["k"], "v");
    assert_eq!(sdk.ok(&["get", "data", "w.txt"], b""), b"data\nmore\nend\n");
    assert_eq!(sdk.names("data").len(), 1, "{:?}", sdk.names("data"));
}

#[test]
fn cp_rsync_and_tar_carry_user_attributes_into_and_out_of_the_mount() {
    let (_az, sdk, m) = setup();
    let local = tempfile::tempdir().unwrap();
    let l = local.path().display();
    ok(sh_in(
        local.path(),
        "mkdir -p src/sub && echo a > src/a && echo b > src/sub/b && \
         setfattr -n user.owner -v alice src/a && setfattr -n user.tag -v t1 src/sub/b && \
         setfattr -n user.kind -v dir src/sub",
    ));
    let want = |root: &str| {
        for (path, k, v) in [
            ("a", "user.owner", "alice"),
            ("sub/b", "user.tag", "t1"),
            ("sub", "user.kind", "dir"),
        ] {
            let out = ok(m.sh(&format!("getfattr --only-values -n {k} {root}/{path}")));
            assert_eq!(out, v, "{root}/{path}");
        }
    };
    ok(m.sh(&format!("cp -a {l}/src {C}/cp")));
    want(&format!("{C}/cp"));
    ok(m.sh(&format!("rsync -aX {l}/src/ {C}/rs/")));
    want(&format!("{C}/rs"));
    ok(m.sh(&format!(
        "tar --xattrs -cf {l}/t.tar -C {l}/src . && mkdir {C}/tar && tar --xattrs --xattrs-include='user.*' -xf {l}/t.tar -C {C}/tar"
    )));
    want(&format!("{C}/tar"));
    for root in ["cp", "rs", "tar"] {
        assert_eq!(
            meta(&sdk, &format!("{root}/a"))
                .get("owner")
                .map(String::as_str),
            Some("alice")
        );
        assert_eq!(
            meta(&sdk, &format!("{root}/sub/b"))
                .get("tag")
                .map(String::as_str),
            Some("t1")
        );
    }
    ok(m.sh(&format!(
        "diff -r {l}/src {C}/cp && diff -r {l}/src {C}/rs && diff -r {l}/src {C}/tar"
    )));
    // And out again, to a local disk.
    ok(m.sh(&format!(
        "cp -a {C}/rs {l}/back && rsync -aX {C}/tar/ {l}/back2/"
    )));
    for root in ["back", "back2"] {
        let out = ok(sh_in(
            local.path(),
            &format!("getfattr --only-values -n user.owner {root}/a"),
        ));
        assert_eq!(out, "alice");
    }
    let v: Value = sdk.props("data", "cp/a");
    assert_eq!(v["size"], 2);
}

#[test]
fn append_and_page_blobs_read_and_refuse_writes_and_archived_blobs_say_so() {
    let (_az, sdk, m) = setup();
    sdk.ok(&["append", "data", "log.txt", "line 1\n"], b"");
    sdk.ok(&["append", "data", "log.txt", "line 2\n"], b"");
    let f = format!("{C}/log.txt");
    assert_eq!(ok(m.sh(&format!("cat {f}"))), "line 1\nline 2\n");
    // Appended to by its writer (as Batch's tracked output grows): the next open reads it all.
    sdk.ok(&["append", "data", "log.txt", "line 3\n"], b"");
    assert_eq!(ok(m.sh(&format!("cat {f}"))), "line 1\nline 2\nline 3\n");
    assert_eq!(
        ok(m.sh(&format!(
            "getfattr --only-values -n user.azure.blob_type {f}"
        ))),
        "AppendBlob"
    );
    // Writing would turn it into a block blob: refused, and the blob is as it was.
    let e = fails(m.sh(&format!("echo more >> {f}")));
    assert!(e.contains("Operation not permitted"), "{e}");
    let e = fails(m.sh(&format!("truncate -s 0 {f}")));
    assert!(e.contains("Operation not permitted"), "{e}");
    // Its metadata can change all the same.
    ok(m.sh(&format!("setfattr -n user.k -v v {f}")));
    let p = sdk.props("data", "log.txt");
    assert_eq!(
        (p["blob_type"].as_str(), p["size"].as_u64()),
        (Some("AppendBlob"), Some(21))
    );
    assert_eq!(p["metadata"]["k"], "v");
    assert_eq!(
        sdk.ok(&["get", "data", "log.txt"], b""),
        b"line 1\nline 2\nline 3\n"
    );

    // A page blob reads the same way and refuses writes the same way.
    let page: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    let page_file = m.dir.path().join("page.bin");
    std::fs::write(&page_file, &page).expect("page data");
    let page_arg = page_file.to_str().expect("utf-8 path");
    sdk.ok(
        &["put", "data", "disk.vhd", "--data-file", page_arg, "--page"],
        b"",
    );
    let out = m.sh(&format!("cat {C}/disk.vhd"));
    assert!(out.status.success() && out.stdout == page);
    let e = fails(m.sh(&format!(
        "printf x | dd of={C}/disk.vhd conv=notrunc status=none"
    )));
    assert!(e.contains("Operation not permitted"), "{e}");
    assert_eq!(sdk.props("data", "disk.vhd")["blob_type"], "PageBlob");

    // An archived blob: a clear error at open, not a hang nor EIO; it still lists and stats.
    sdk.ok(&["put", "data", "cold.bin", "--data", "old"], b"");
    let cold = format!("{C}/cold.bin");
    ok(m.sh(&format!(
        "setfattr -n user.azure.access_tier -v Archive {cold}"
    )));
    assert_eq!(sdk.props("data", "cold.bin")["blob_tier"], "Archive");
    let e = fails(m.sh(&format!("cat {cold}")));
    assert!(e.contains("No data available"), "{e}");
    assert_eq!(ok(m.sh(&format!("stat -c %s {cold}"))), "3\n");
}

#[test]
fn edits_and_renames_keep_content_headers_and_other_tools_metadata() {
    let (_az, sdk, m) = setup();
    let big = m.dir.path().join("big.bin");
    std::fs::write(&big, data(9 << 20, 7)).expect("data file");
    let headers = [
        "--content-type",
        "text/csv",
        "--content-encoding",
        "identity",
        "--cache-control",
        "no-cache",
        "--meta",
        "origin=azcopy",
        "--md5",
    ];
    let put = |name: &str, data: &[&str]| {
        sdk.ok(&[&["put", "data", name][..], data, &headers].concat(), b"")
    };
    put("small.csv", &["--data", "a,b\n"]);
    let block = (4 << 20).to_string();
    let big_arg = big.to_str().expect("utf-8 path");
    put("big.csv", &["--data-file", big_arg, "--block-size", &block]);
    for name in ["small.csv", "big.csv"] {
        let md5 = sdk.ok(&["md5", "data", name], b"");
        assert_eq!(
            sdk.props("data", name)["content_md5"].as_str(),
            Some(&*String::from_utf8_lossy(&md5))
        );
    }

    // Put Blob for the small file, Put Block List for the large one (one block rewritten).
    ok(m.sh(&format!("echo c,d >> {C}/small.csv")));
    ok(m.sh(&format!(
        "printf XY | dd of={C}/big.csv bs=1 seek=5000000 conv=notrunc status=none"
    )));
    ok(m.sh(&format!("mv {C}/small.csv {C}/moved.csv")));
    for name in ["moved.csv", "big.csv"] {
        let p = sdk.props("data", name);
        assert_eq!(p["content_type"], "text/csv", "{name}: {p}");
        assert_eq!(p["content_encoding"], "identity", "{name}: {p}");
        assert_eq!(p["cache_control"], "no-cache", "{name}: {p}");
        assert_eq!(p["metadata"]["origin"], "azcopy", "{name}: {p}");
        // The old content's MD5 never stays on new content: storage's own, or none.
        if let Some(md5) = p["content_md5"].as_str() {
            let actual = sdk.ok(&["md5", "data", name], b"");
            assert_eq!(md5.as_bytes(), &actual[..], "{name}");
        }
    }
    assert_eq!(sdk.ok(&["get", "data", "moved.csv"], b""), b"a,b\nc,d\n");
    let stored = sdk.ok(&["get", "data", "big.csv"], b"");
    assert_eq!(&stored[5_000_000..5_000_002], b"XY");
    assert_eq!(stored.len(), 9 << 20);
}

#[test]
fn azcopy_posix_properties_show_and_follow_changes() {
    let (_az, sdk, m) = setup();
    // As `azcopy copy --preserve-posix-properties` leaves a file: nanosecond times and the
    // whole st_mode in decimal (0100750).
    let mut args = vec!["put", "data", "tool.sh", "--data", "#!/bin/sh\n"];
    let posix = [
        "modtime=1700000000123456789",
        "posix_atime=1700000100000000000",
        "permissions=33256",
        "posix_owner=1000",
    ];
    for kv in &posix {
        args.extend(["--meta", kv]);
    }
    sdk.ok(&args, b"");
    let f = format!("{C}/tool.sh");
    assert_eq!(
        ok(m.sh(&format!("stat -c '%a %Y %X' {f}"))),
        "750 1700000000 1700000100\n"
    );
    // Not user attributes: they are the file's times and mode.
    assert!(!ok(m.sh(&format!("getfattr -d {f}"))).contains("modtime"));
    ok(m.sh(&format!("chmod 700 {f} && touch -m -d @1600000000 {f}")));
    let md = meta(&sdk, "tool.sh");
    assert_eq!(md["permissions"], (0o100700).to_string());
    assert_eq!(md["modtime"], "1600000000000000000");
    assert_eq!(md["posix_owner"], "1000");
    // An edit keeps them current too.
    ok(m.sh(&format!("echo exit >> {f}")));
    let md = meta(&sdk, "tool.sh");
    let shown: u64 = ok(m.sh(&format!("stat -c %Y {f}"))).trim().parse().unwrap();
    let stored: u64 = md["modtime"].parse().unwrap();
    assert_eq!(stored / 1_000_000_000, shown);
    assert!(shown > 1_700_000_000, "{shown}");
}
