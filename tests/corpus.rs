//! Other tools' data. Blobs are written by a client this project did not write, Microsoft's
//! Python SDK (`azure-storage-blob`, driven through `tests/pysdk.py`), laid out the way Batch
//! output files, AzCopy, rclone, blobfuse2 and Storage Explorer leave them, with foreign and
//! odd metadata and odd names. Shell tools read, copy, move and delete them through a real
//! mount, and the SDK checks what storage holds afterwards. The other way round, what shell
//! tools write through the mount is read back with the SDK.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use common::sdk::*;
use common::*;
use serde_json::{Value, json};

impl Sdk {
    fn put_all(&self, container: &str, blobs: &[Blob]) {
        let spec: Vec<Value> = blobs
            .iter()
            .map(|b| {
                let mut v = json!({
                    "name": b.name,
                    "data_b64": base64::engine::general_purpose::STANDARD.encode(&b.data),
                    "meta": b.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
                });
                if let Some(size) = b.block_size {
                    v["block_size"] = json!(size);
                }
                v
            })
            .collect();
        self.ok(
            &["put-json", container],
            &serde_json::to_vec(&spec).unwrap(),
        );
    }
}

/// How a blob is expected to show through the mount.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// A regular file at the blob's name, with its bytes.
    File,
    /// A directory marker: the directory at this path.
    Dir(&'static str),
    /// Not shown: a name that cannot be a path, or a blob under a directory of its name.
    /// Its bytes cannot be read through the mount, so nothing done through it may delete it.
    Hidden,
}

struct Blob {
    name: String,
    data: Vec<u8>,
    meta: Vec<(String, String)>,
    block_size: Option<usize>,
    seen: Seen,
}

fn blob(name: &str, data: &[u8], meta: &[(&str, &str)], seen: Seen) -> Blob {
    Blob {
        name: name.to_string(),
        data: data.to_vec(),
        meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        block_size: None,
        seen,
    }
}

/// rclone's `mtime` metadata, and the time it stands for.
const RCLONE_UTC: &str = "2023-04-05T06:07:08.123456789Z";
const RCLONE_UTC_SECS: i64 = 1_680_674_828;
const RCLONE_OFFSET: &str = "2023-04-05T06:07:08.5+02:00";
const RCLONE_OFFSET_SECS: i64 = 1_680_667_628;

fn long_names() -> (String, String, String, String) {
    // 1,024 bytes, the longest blob name Azure allows, in segments a file name can have.
    let segs: Vec<String> = ["a", "b", "c", "d"].iter().map(|c| c.repeat(250)).collect();
    let longest = format!("long/{}/{}", segs.join("/"), "t".repeat(15));
    assert_eq!(longest.len(), 1024);
    (
        longest,
        format!("long/{}", "p".repeat(255)),
        format!("long/{}", "o".repeat(256)),
        format!("long/{}/f.txt", "n".repeat(256)),
    )
}

fn corpus() -> Vec<Blob> {
    use Seen::*;
    let (longest, name255, name256, dir256) = long_names();
    let mut big = blob("azcopy/a/b/c/deep.bin", &data(3 << 20, 7), &[], File);
    big.block_size = Some(1 << 20);
    vec![
        // Batch output files (the file conventions), no directory markers.
        blob(
            "job-1/task1/$TaskOutput/out.txt",
            b"task output\n",
            &[],
            File,
        ),
        blob("job-1/task1/$TaskLog/stdout.txt", b"log\n", &[], File),
        blob("job-1/$JobOutput/result.csv", b"a,b\n1,2\n", &[], File),
        // AzCopy: nested trees without markers, blocks of another size than batchfs's.
        big,
        blob("azcopy/a/top.txt", b"top\n", &[], File),
        blob(
            "azcopy/a/b/mid.txt",
            b"mid\n",
            &[("source", "azcopy"), ("Content_Owner", "team A")],
            File,
        ),
        blob("azcopy/empty.dat", b"", &[], File),
        // rclone: modification times in metadata, RFC 3339 with nanoseconds or an offset.
        blob("rclone/utc.txt", b"utc\n", &[("mtime", RCLONE_UTC)], File),
        blob(
            "rclone/offset.txt",
            b"offset\n",
            &[("mtime", RCLONE_OFFSET)],
            File,
        ),
        // blobfuse2 / Storage Explorer / ADLS directory markers, both spellings.
        blob(
            "markers/dir",
            b"",
            &[("hdi_isfolder", "true")],
            Dir("markers/dir"),
        ),
        blob(
            "markers/dir2/",
            b"",
            &[("hdi_isfolder", "true")],
            Dir("markers/dir2"),
        ),
        blob(
            "markers/dir3/",
            b"",
            &[("hdi_isfolder", "true")],
            Dir("markers/dir3"),
        ),
        blob("markers/dir3/inside.txt", b"inside\n", &[], File),
        blob(
            "markers/dir4",
            b"",
            &[("HDI_ISFOLDER", "True")],
            Dir("markers/dir4"),
        ),
        blob("markers/notdir", b"", &[("hdi_isfolder", "false")], File),
        // Metadata batchfs cannot use: the file shows Last-Modified and 0644.
        blob(
            "odd/max-mtime",
            b"1\n",
            &[("mtime", "18446744073709551615")],
            File,
        ),
        blob("odd/bad-mode", b"2\n", &[("mode", "zzz")], File),
        blob("odd/empty-mtime", b"3\n", &[("mtime", "")], File),
        blob(
            "odd/huge-mode",
            b"4\n",
            &[("mode", "99999999999999999999")],
            File,
        ),
        blob("odd/mode-751", b"5\n", &[("mode", "100751")], File),
        // Names.
        blob("names/with space.txt", b"space\n", &[], File),
        blob("names/tab\there.txt", b"tab\n", &[], File),
        blob("names/ünïcødé-日本語.txt", b"unicode\n", &[], File),
        blob("names/100%.txt", b"percent\n", &[], File),
        blob("names/#hash", b"hash\n", &[], File),
        blob("names/what?.txt", b"question\n", &[], File),
        blob("names/a&b+c=d;e", b"sundry\n", &[], File),
        blob(&longest, b"longest name\n", &[], File),
        blob(&name255, b"255\n", &[], File),
        blob(&name256, b"256\n", &[], Hidden),
        blob(&dir256, b"under 256\n", &[], Hidden),
        // Empty segments.
        blob("slashes/ok.txt", b"ok\n", &[], File),
        blob("slashes//double.txt", b"double\n", &[], Hidden),
        blob("//lead.txt", b"lead\n", &[], Hidden),
        // A trailing `/` on a blob that has data: the prefix shows as a directory.
        blob("trail/", b"not a marker\n", &[], Hidden),
        // A blob next to a prefix of the same name: the directory wins.
        blob("x", b"hidden x\n", &[], Hidden),
        blob("x/child.txt", b"child\n", &[], File),
    ]
}

/// Directories the mount shows beyond those holding files and markers.
const BARE_DIRS: &[&str] = &["trail"];

fn expected_files(blobs: &[Blob]) -> BTreeMap<String, Vec<u8>> {
    blobs
        .iter()
        .filter(|b| b.seen == Seen::File)
        .map(|b| (b.name.clone(), b.data.clone()))
        .collect()
}

fn expected_dirs(blobs: &[Blob]) -> BTreeSet<String> {
    let mut dirs: BTreeSet<String> = BARE_DIRS.iter().map(|d| d.to_string()).collect();
    for b in blobs {
        match b.seen {
            Seen::File => {
                let mut p = b.name.as_str();
                while let Some((parent, _)) = p.rsplit_once('/') {
                    dirs.insert(parent.to_string());
                    p = parent;
                }
            }
            Seen::Dir(d) => {
                dirs.insert(d.to_string());
            }
            Seen::Hidden => {}
        }
    }
    dirs
}

/// Runs a program (no shell) in `dir`.
fn run_in<I, A>(dir: &Path, prog: &str, args: I) -> Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("{prog} runs: {e}"))
}

/// `find . -type T` under `dir`, as sorted relative paths.
fn find(dir: &Path, kind: &str) -> BTreeSet<String> {
    let out = run_in(
        dir,
        "find",
        [".", "-mindepth", "1", "-type", kind, "-print0"],
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "find -type {kind} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let p = String::from_utf8(p.to_vec()).expect("UTF-8 path");
            p.strip_prefix("./").expect("./ prefix").to_string()
        })
        .collect()
}

/// `stat -c '%.9Y %a %s'`: mtime with nanoseconds, mode, size.
fn stat(path: &Path) -> (String, String, u64) {
    let out = run_in(
        Path::new("/"),
        "stat",
        [OsStr::new("-c"), OsStr::new("%.9Y %a %s"), path.as_os_str()],
    );
    let text = ok(out);
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 3, "stat {}: {text}", path.display());
    (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
}

/// The daemon is still running and has not panicked.
fn alive(m: &Mount, pid: u32, step: &str) {
    let log = m.log_text();
    assert!(
        !log.contains("panicked"),
        "the daemon panicked during {step}:\n{log}"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon died during {step}:\n{log}"
    );
    ok(run_in(&m.path, "mountpoint", ["-q", "."]));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Metadata as batchfs left it, less its own bookkeeping (`batchfscommit`, a commit id) and
/// less the times it stamps by itself when nothing set them (the time of the write or the
/// mkdir, which a mount may or may not keep): those must be RFC 3339 in UTC, and recent.
fn without_own_stamps(what: &str, md: &Metadata) -> Metadata {
    let mut md = md.clone();
    md.remove("batchfscommit");
    for key in ["mtime", "atime"] {
        if let Some(t) = md.remove(key) {
            assert_recent_utc(&format!("{what}: {key}"), &t);
        }
    }
    md
}

fn assert_recent_utc(what: &str, t: &str) {
    let when = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what}: {t:?} is not RFC 3339: {e}"));
    assert!(t.ends_with('Z'), "{what}: {t} is not in UTC");
    let age = time::OffsetDateTime::now_utc() - when;
    assert!(age.whole_seconds().abs() < 120, "{what}: {t} is not now");
}

#[test]
fn other_tools_blobs_read_copied_moved_and_removed_with_shell_tools() {
    let az = Azurite::start();
    let sdk = Sdk::new(&az);
    let blobs = corpus();
    sdk.container("corpus");
    sdk.put_all("corpus", &blobs);
    let stored = sdk.dump("corpus");
    assert_eq!(stored.len(), blobs.len(), "the SDK wrote the whole corpus");

    let m = Mount::start(&config_for(&az, ""), &[]);
    let pid = m.daemon_pid();
    let root = m.p("alpha/storage/corpus");
    alive(&m, pid, "mount");

    // ls -lR: every entry has attributes, nothing fails.
    let out = run_in(&root, "ls", ["-lR", "."]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ls -lR ({}):\nstderr: {}\nstdout: {}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    alive(&m, pid, "ls -lR");

    // find: exactly the files and directories the names stand for.
    let files = expected_files(&blobs);
    let want_files: BTreeSet<String> = files.keys().cloned().collect();
    assert_eq!(find(&root, "f"), want_files, "find . -type f");
    assert_eq!(find(&root, "d"), expected_dirs(&blobs), "find . -type d");
    alive(&m, pid, "find");

    // cat: each file's bytes are the SDK's.
    for (name, want) in &files {
        let out = run_in(&root, "cat", [name]);
        assert!(out.status.success(), "cat {name:?}: {}", text(&out.stderr));
        assert!(
            out.stdout == *want && out.stdout == stored[name].data,
            "cat {name:?}: {} bytes, the SDK wrote {}",
            out.stdout.len(),
            want.len()
        );
    }
    alive(&m, pid, "cat");

    // stat: rclone's times to the nanosecond, Last-Modified and 0644 where the metadata is
    // unusable, sizes.
    let (mtime, _, _) = stat(&root.join("rclone/utc.txt"));
    assert_eq!(
        mtime,
        format!("{RCLONE_UTC_SECS}.123456789"),
        "rclone/utc.txt"
    );
    let (mtime, _, _) = stat(&root.join("rclone/offset.txt"));
    assert_eq!(
        mtime,
        format!("{RCLONE_OFFSET_SECS}.500000000"),
        "rclone/offset.txt"
    );
    for name in [
        "odd/max-mtime",
        "odd/bad-mode",
        "odd/empty-mtime",
        "odd/huge-mode",
    ] {
        let (mtime, mode, size) = stat(&root.join(name));
        let secs: i64 = mtime.split('.').next().unwrap().parse().unwrap();
        assert_eq!(
            secs, stored[name].last_modified,
            "{name}: mtime is Last-Modified"
        );
        assert_eq!(mode, "644", "{name}");
        assert_eq!(size, stored[name].data.len() as u64, "{name}");
    }
    assert_eq!(stat(&root.join("odd/mode-751")).1, "751");
    for (name, want) in &files {
        assert_eq!(
            stat(&root.join(name)).2,
            want.len() as u64,
            "size of {name:?}"
        );
    }
    let (_, mode, size) = stat(&root.join("markers/notdir"));
    assert_eq!(
        (mode.as_str(), size),
        ("644", 0),
        "hdi_isfolder=false is a file"
    );
    alive(&m, pid, "stat");

    // cp -r out of the mount, then diff -r against what should be readable.
    let want_dir = m.dir.path().join("want");
    for d in expected_dirs(&blobs) {
        std::fs::create_dir_all(want_dir.join(&d)).unwrap();
    }
    for (name, data) in &files {
        std::fs::write(want_dir.join(name), data).unwrap();
    }
    let copy = m.dir.path().join("copy");
    let out = run_in(
        m.dir.path(),
        "cp",
        [OsStr::new("-r"), root.as_os_str(), copy.as_os_str()],
    );
    assert!(out.status.success(), "cp -r: {}", text(&out.stderr));
    let out = run_in(m.dir.path(), "diff", ["-r", "want", "copy"]);
    assert!(
        out.status.success(),
        "diff -r ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    alive(&m, pid, "cp -r");

    // mv of a file: a server-side copy keeps rclone's metadata.
    ok(run_in(&root, "mv", ["rclone/utc.txt", "rclone/moved.txt"]));
    let after = sdk.dump("corpus");
    assert!(!after.contains_key("rclone/utc.txt"), "mv left the source");
    let moved = &after["rclone/moved.txt"];
    assert_eq!(moved.data, stored["rclone/utc.txt"].data);
    assert_eq!(moved.metadata, stored["rclone/utc.txt"].metadata);
    assert_eq!(
        stat(&root.join("rclone/moved.txt")).0,
        format!("{RCLONE_UTC_SECS}.123456789")
    );
    alive(&m, pid, "mv of a file");

    // mv of a directory without markers: every blob under it moves, bytes and metadata
    // intact, and nothing else changes.
    ok(run_in(&root, "mv", ["azcopy/a", "azcopy/moved"]));
    let mut want = after.clone();
    for (name, b) in &after {
        if let Some(rest) = name.strip_prefix("azcopy/a/") {
            want.remove(name);
            want.insert(format!("azcopy/moved/{rest}"), b.clone());
        }
    }
    let after_dir = sdk.dump("corpus");
    let strip = |m: &BTreeMap<String, Stored>| -> BTreeMap<String, (Vec<u8>, Metadata)> {
        m.iter()
            .map(|(k, v)| (k.clone(), (v.data.clone(), v.metadata.clone())))
            .collect()
    };
    assert_eq!(
        strip(&after_dir).keys().collect::<Vec<_>>(),
        strip(&want).keys().collect::<Vec<_>>(),
        "blob names after mv azcopy/a azcopy/moved"
    );
    assert!(
        strip(&after_dir) == strip(&want),
        "bytes or metadata changed in mv of a directory"
    );
    assert_eq!(
        after_dir["azcopy/moved/b/mid.txt"].metadata,
        stored["azcopy/a/b/mid.txt"].metadata
    );
    assert_eq!(
        ok(run_in(&root, "cat", ["azcopy/moved/b/mid.txt"])),
        "mid\n"
    );
    ok(run_in(&root, "test", ["!", "-e", "azcopy/a"]));
    alive(&m, pid, "mv of a directory");

    // rm -r of everything shown. A directory that holds blobs the mount cannot show is not
    // empty (rmdir says so, as SEMANTICS.md documents), and those blobs stay: `slashes`
    // (`slashes//double.txt`), `long` (segments over 255 bytes) and `trail`, whose blob
    // `trail/` holds data, so it is no directory marker that rmdir may delete. `x` is removed
    // without complaint: once its only entry is gone, the marker-less directory is gone, and
    // the blob `x` it hid is a file again.
    let out = run_in(&root, "bash", ["-c", "rm -r -- *"]);
    alive(&m, pid, "rm -r");
    let mut complaints: Vec<String> = text(&out.stderr).lines().map(str::to_string).collect();
    complaints.sort();
    let hidden: BTreeSet<String> = blobs
        .iter()
        .filter(|b| b.seen == Seen::Hidden)
        .map(|b| b.name.clone())
        .collect();
    let left = sdk.names("corpus");
    let want_complaints = vec![
        "rm: cannot remove 'long': Directory not empty",
        "rm: cannot remove 'slashes': Directory not empty",
        "rm: cannot remove 'trail': Directory not empty",
    ];
    assert!(
        complaints == want_complaints && left == hidden,
        "rm -r -- * in the corpus ({}):\n\
         rm said:   {complaints:#?}\nexpected:  {want_complaints:#?}\n\
         blobs left: {left:#?}\nexpected:   {hidden:#?}",
        out.status
    );
    // Once the kernel's and the daemon's entries for `x` have expired (1 s by default), the
    // blob `x` that the directory hid is a file.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(ok(run_in(&root, "cat", ["x"])), "hidden x\n");
    alive(&m, pid, "rm -r");
}

#[test]
fn what_shell_tools_write_is_what_the_sdk_reads() {
    let az = Azurite::start();
    let sdk = Sdk::new(&az);
    let m = Mount::start(&config_for(&az, ""), &[]);
    let pid = m.daemon_pid();
    let local = m.dir.path().join("local.bin");
    let big = data((5 << 20) + 123, 11);
    std::fs::write(&local, &big).unwrap();

    ok(m.sh(&format!(
        r#"set -e; export TZ=UTC; umask 022; mkdir alpha/storage/written; cd alpha/storage/written
        echo hello > a.txt
        chmod 640 a.txt
        touch -d '2020-01-02 03:04:05' a.txt
        mkdir dir
        cp {local} dir/copy.bin
        touch -d '2020-01-02 03:04:05.25' dir/copy.bin
        mkdir -p p/q
        mkdir gone && rmdir gone
        : > empty
        touch touched
        echo s > 'with space' && echo u > 'ünï 日本' && echo p > '100%' && echo h > '#h'
        echo q > 'q?' && echo t > $'tab\tname'
        "#,
        local = local.display()
    )));
    alive(&m, pid, "writing");

    let got = sdk.dump("written");
    // `batchfscommit` is batchfs's own bookkeeping (a commit id), not a file attribute.
    let meta_of = |name: &str| -> Metadata {
        let mut md = got[name].metadata.clone();
        md.remove("batchfscommit");
        md
    };
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "#h",
            "100%",
            "a.txt",
            "dir/",
            "dir/copy.bin",
            "empty",
            "p/",
            "p/q/",
            "q?",
            "tab\tname",
            "touched",
            "with space",
            "ünï 日本",
        ]
    );
    let map = |pairs: &[(&str, &str)]| -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(got["a.txt"].data, b"hello\n");
    assert_eq!(
        meta_of("a.txt"),
        map(&[
            ("atime", "2020-01-02T03:04:05Z"),
            ("mode", "640"),
            ("mtime", "2020-01-02T03:04:05Z")
        ])
    );
    assert!(got["dir/copy.bin"].data == big, "dir/copy.bin differs");
    assert_eq!(
        meta_of("dir/copy.bin"),
        map(&[
            ("atime", "2020-01-02T03:04:05.25Z"),
            ("mtime", "2020-01-02T03:04:05.25Z")
        ])
    );
    for marker in ["dir/", "p/", "p/q/"] {
        assert_eq!(got[marker].data, b"", "{marker}");
        assert_eq!(
            without_own_stamps(marker, &got[marker].metadata),
            map(&[("hdi_isfolder", "true"), ("mode", "755")]),
            "{marker}"
        );
    }
    assert_eq!(got["empty"].data, b"");
    assert_eq!(
        without_own_stamps("empty", &got["empty"].metadata),
        BTreeMap::new(),
        "an empty file is not a marker"
    );
    // `touch` of a new file sets its times to now, kept as RFC 3339 in UTC.
    assert_eq!(got["touched"].data, b"");
    let times = meta_of("touched");
    assert_eq!(
        times.keys().collect::<Vec<_>>(),
        ["atime", "mtime"],
        "touched: {times:?}"
    );
    for t in times.values() {
        assert_recent_utc("touched", t);
    }
    for (name, data) in [
        ("with space", "s\n"),
        ("ünï 日本", "u\n"),
        ("100%", "p\n"),
        ("#h", "h\n"),
        ("q?", "q\n"),
        ("tab\tname", "t\n"),
    ] {
        assert_eq!(got[name].data, data.as_bytes(), "{name:?}");
        assert_eq!(
            without_own_stamps(name, &got[name].metadata),
            BTreeMap::new(),
            "{name:?}"
        );
    }

    // What rmdir removed is gone; a file's properties as the SDK reads them one by one.
    assert_eq!(sdk.head("written", "gone/"), None);
    assert_eq!(sdk.head("written", "gone"), None);
    let a = sdk.head("written", "a.txt").expect("a.txt");
    assert_eq!(
        (a.data, a.metadata),
        (got["a.txt"].data.clone(), got["a.txt"].metadata.clone())
    );

    // The same files through a fresh mount: the attributes come from storage.
    drop(m);
    let m = Mount::start(&config_for(&az, ""), &[]);
    let w = m.p("alpha/storage/written");
    assert_eq!(
        stat(&w.join("a.txt")),
        ("1577934245.000000000".to_string(), "640".to_string(), 6)
    );
    assert_eq!(stat(&w.join("dir/copy.bin")).0, "1577934245.250000000");
    let pid = m.daemon_pid();
    alive(&m, pid, "a fresh mount");
}

#[test]
fn edits_through_the_mount_keep_other_tools_metadata() {
    let az = Azurite::start();
    let sdk = Sdk::new(&az);
    sdk.container("edits");
    let foreign = [
        ("source", "azcopy"),
        ("Content_Owner", "team A"),
        ("mode", "600"),
        ("mtime", RCLONE_UTC),
    ];
    let small = blob("small.txt", b"one\n", &foreign, Seen::File);
    let mut big = blob("big.bin", &data(6_000_000, 3), &foreign, Seen::File);
    big.block_size = Some(1 << 20);
    sdk.put_all("edits", &[small, big]);
    let before = sdk.dump("edits");

    let m = Mount::start(&config_for(&az, ""), &[]);
    let pid = m.daemon_pid();
    ok(m.sh("set -e; cd alpha/storage/edits
        echo two >> small.txt
        printf tail >> big.bin
        printf XYZ | dd of=big.bin bs=1 seek=2500000 conv=notrunc status=none"));
    alive(&m, pid, "edits");

    let after = sdk.dump("edits");
    assert_eq!(after["small.txt"].data, b"one\ntwo\n");
    let mut want_big = before["big.bin"].data.clone();
    want_big[2_500_000..2_500_003].copy_from_slice(b"XYZ");
    want_big.extend_from_slice(b"tail");
    assert!(after["big.bin"].data == want_big, "big.bin differs");
    // Writing replaces the modification time (SEMANTICS.md, Attributes); every other key
    // stays, spelled as the other tool spelled it (Azure keeps the case of metadata names).
    let want_meta: Metadata = foreign
        .iter()
        .filter(|(k, _)| *k != "mtime")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut got: Vec<(&str, Metadata, Metadata)> = Vec::new();
    for name in ["small.txt", "big.bin"] {
        // An mtime, if any, is the edit's: never rclone's older one.
        got.push((
            name,
            without_own_stamps(name, &after[name].metadata),
            want_meta.clone(),
        ));
    }

    // touch keeps the other keys too.
    ok(m.sh("TZ=UTC touch -d '2021-01-01 00:00:00' alpha/storage/edits/small.txt"));
    let mut want_touched = want_meta.clone();
    want_touched.insert("mtime".into(), "2021-01-01T00:00:00Z".into());
    want_touched.insert("atime".into(), "2021-01-01T00:00:00Z".into());
    let mut md = sdk.head("edits", "small.txt").expect("small.txt").metadata;
    md.remove("batchfscommit");
    got.push(("small.txt after touch", md, want_touched));
    // Names come back lower-cased: HTTP header names carry no case, and the HTTP client sends
    // them lower-cased (SEMANTICS.md, Metadata). Values are kept exactly.
    let lower = |m: &Metadata| -> Metadata {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    let wrong: Vec<_> = got
        .iter()
        .filter(|(_, md, want)| lower(md) != lower(want))
        .collect();
    assert!(
        wrong.is_empty(),
        "metadata after edits through the mount (name, got, expected):\n{wrong:#?}"
    );
    alive(&m, pid, "touch");
}

#[test]
fn rm_r_of_a_batch_output_directory_without_markers() {
    let az = Azurite::start();
    let sdk = Sdk::new(&az);
    sdk.container("job-2");
    // A task that wrote a few hundred outputs, no directory markers: removing them takes rm
    // longer than the kernel keeps the directory's entry (1 s), so its rmdir of the emptied
    // directory goes through a fresh lookup, made after the directory's last blob is gone.
    let blobs: Vec<Blob> = (0..400)
        .map(|i| {
            blob(
                &format!("task1/$TaskOutput/part-{i:03}"),
                b"x\n",
                &[],
                Seen::File,
            )
        })
        .collect();
    sdk.put_all("job-2", &blobs);
    let m = Mount::start(&config_for(&az, ""), &[]);
    let pid = m.daemon_pid();
    let root = m.p("alpha/storage/job-2");
    assert_eq!(find(&root, "f").len(), 400);
    let out = run_in(&root, "rm", ["-r", "task1"]);
    alive(&m, pid, "rm -r");
    let left = sdk.names("job-2");
    assert!(
        out.status.success() && left.is_empty(),
        "rm -r task1 ({}): {}\nblobs left: {}",
        out.status,
        text(&out.stderr),
        left.len()
    );
    ok(run_in(&root, "test", ["!", "-e", "task1"]));
}
