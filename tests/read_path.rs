//! The read-only mount end to end: a real Azurite, a real FUSE mount, real shell tools.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn layout_account_files_and_keys() {
    let az = Azurite::start();
    let s = az.store();
    s.container("input");
    s.put("input", "hello.txt", "hello\n");
    let m = Mount::start(&config_for(&az, ""), &[]);

    let root = ok(m.sh("ls -1"));
    assert_eq!(root, "alpha\nbeta\n");
    assert_eq!(ok(m.sh("ls -1 alpha")), "account.json\nkeys\nstorage\n");
    // No keys and no storage configured: neither appears.
    assert_eq!(ok(m.sh("ls -1 beta")), "account.json\n");
    fails(m.sh("stat beta/keys"));
    fails(m.sh("stat beta/storage"));

    let json: serde_json::Value =
        serde_json::from_str(&ok(m.sh("cat alpha/account.json"))).expect("account.json is JSON");
    assert_eq!(
        json,
        serde_json::json!({
            "id": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-batch/providers/Microsoft.Batch/batchAccounts/alpha",
            "name": "alpha",
            "type": "Microsoft.Batch/batchAccounts",
            "location": "westeurope",
            "properties": { "accountEndpoint": "alpha.westeurope.batch.azure.com" }
        })
    );
    let beta: serde_json::Value = serde_json::from_str(&ok(m.sh("cat beta/account.json"))).unwrap();
    assert_eq!(
        beta,
        serde_json::json!({"name": "beta", "type": "Microsoft.Batch/batchAccounts"})
    );
    assert!(!ok(m.sh("cat alpha/account.json")).contains(DEV_KEY));

    let keys: serde_json::Value = serde_json::from_str(&ok(m.sh("cat alpha/keys"))).unwrap();
    assert_eq!(
        keys,
        serde_json::json!({"accountName": "alpha", "primary": "cHJpbWFyeS1rZXk=", "secondary": "c2Vjb25kYXJ5LWtleQ=="})
    );
    let meta = std::fs::metadata(m.p("alpha/keys")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!(
        std::fs::metadata(m.p("alpha/account.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o444
    );
    // SAFETY: getuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });

    // Containers and blobs, with sizes and Last-Modified times.
    assert_eq!(ok(m.sh("ls -1 alpha/storage")), "input\n");
    assert_eq!(ok(m.sh("cat alpha/storage/input/hello.txt")), "hello\n");
    let st = std::fs::metadata(m.p("alpha/storage/input/hello.txt")).unwrap();
    assert_eq!(st.len(), 6);
    let stored = az.store().head("input", "hello.txt").expect("blob");
    assert_eq!(
        st.modified().unwrap(),
        stored.last_modified,
        "mtime is the blob's Last-Modified"
    );
    assert!(ok(m.sh("ls -la alpha/storage/input")).contains("hello.txt"));
    assert!(ok(m.sh("ls -R")).contains("hello.txt"));
}

#[test]
fn keys_are_owner_only_even_with_allow_other() {
    let az = Azurite::start();
    let m = Mount::start(&config_for(&az, ""), &["--allow-other"]);
    // `nobody` may list the account but not read the keys; the kernel enforces the mode.
    let as_nobody = |cmd: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "bash",
                "-c",
                cmd,
            ])
            .current_dir("/")
            .output()
            .expect("setpriv runs")
    };
    let mp = m.path.display().to_string();
    ok(as_nobody(&format!("cat {mp}/alpha/account.json")));
    let err = fails(as_nobody(&format!("cat {mp}/alpha/keys")));
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn large_blob_reads_byte_for_byte() {
    let az = Azurite::start();
    let s = az.store();
    s.container("big");
    let body = data(64 << 20, 7);
    s.put("big", "dir/blob.bin", body.clone());
    let m = Mount::start(&config_for(&az, ""), &[]);
    let local = m.dir.path().join("copy.bin");
    ok(m.sh(&format!(
        "cp alpha/storage/big/dir/blob.bin {}",
        local.display()
    )));
    let copied = std::fs::read(&local).unwrap();
    assert_eq!(copied.len(), body.len());
    assert!(copied == body, "64 MiB copy differs from the blob");
    // A read from the middle, as `dd` does it.
    let mid = ok(m.sh("dd if=alpha/storage/big/dir/blob.bin bs=4096 skip=5000 count=1 status=none | od -An -tx1 | head -c 48"));
    let expect: String = body[5000 * 4096..5000 * 4096 + 16]
        .iter()
        .map(|b| format!(" {b:02x}"))
        .collect();
    assert_eq!(mid.trim(), expect.trim());
}

#[test]
fn listing_longer_than_one_page_is_complete() {
    let az = Azurite::start();
    let s = az.store();
    s.container("many");
    let names: Vec<String> = (0..5150).map(|i| format!("d/f{i:05}")).collect();
    s.put_many("many", names, b"x");
    s.put("many", "d/sub/one", "1");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let n = ok(m.sh("ls alpha/storage/many/d | wc -l"));
    assert_eq!(n.trim(), "5151");
    let found = ok(m.sh("find alpha/storage/many -type f | wc -l"));
    assert_eq!(found.trim(), "5151");
    assert!(ok(m.sh("ls -l alpha/storage/many/d")).contains("f05149"));
}

#[test]
fn special_names_work_end_to_end() {
    let az = Azurite::start();
    let s = az.store();
    s.container("job-1");
    let names = [
        "task1/$TaskOutput/result 1.txt",
        "task1/$TaskLog/stdout.txt",
        "ünïcødé/日本語.txt",
        "odd/a#b%c+d&e=f;g.txt",
        "odd/100% done.txt",
        "odd/plus+space name",
    ];
    for (i, n) in names.iter().enumerate() {
        s.put("job-1", n, format!("content {i}\n"));
    }
    let m = Mount::start(&config_for(&az, ""), &[]);
    let base = m.p("alpha/storage/job-1");
    for (i, n) in names.iter().enumerate() {
        let got = std::fs::read_to_string(base.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(got, format!("content {i}\n"), "{n}");
    }
    let found = ok(m.sh("cd alpha/storage/job-1 && find . -type f | sort"));
    let mut want: Vec<String> = names.iter().map(|n| format!("./{n}")).collect();
    want.sort();
    assert_eq!(found.lines().collect::<Vec<_>>(), want);
    // cp -r of the whole container, then diff against what we uploaded.
    let copy = m.dir.path().join("copy");
    ok(m.sh(&format!("cp -r alpha/storage/job-1 {}", copy.display())));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(copy.join(n)).unwrap(),
            format!("content {i}\n")
        );
    }
    ok(m.sh(&format!("diff -r alpha/storage/job-1 {}", copy.display())));
}

#[test]
fn missing_paths_and_read_only_writes_fail_with_the_right_errno() {
    let az = Azurite::start();
    let s = az.store();
    s.container("cc1");
    s.put("cc1", "f", "data");
    let m = Mount::start(&config_for(&az, ""), &["--read-only"]);
    for p in [
        "nope",
        "alpha/nope",
        "alpha/storage/nope",
        "alpha/storage/cc1/nope",
        "alpha/storage/cc1/f/x",
    ] {
        let err = fails(m.sh(&format!("stat {p}")));
        assert!(
            err.contains("No such file") || err.contains("Not a directory"),
            "{p}: {err}"
        );
    }
    let err = fails(m.sh("cat alpha/storage/cc1/missing.txt"));
    assert!(err.contains("No such file"), "{err}");
    for cmd in [
        "touch alpha/storage/cc1/new",
        "echo x > alpha/storage/cc1/f",
        "echo x >> alpha/storage/cc1/f",
        "mkdir alpha/storage/cc1/d",
        "mkdir alpha/storage/newcontainer",
        "rm alpha/storage/cc1/f",
        "mv alpha/storage/cc1/f alpha/storage/cc1/g",
        "echo x > alpha/account.json",
    ] {
        let err = fails(m.sh(cmd));
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    assert_eq!(s.get("cc1", "f"), b"data");
}

#[test]
fn directories_markers_and_shadowed_blobs() {
    let az = Azurite::start();
    let s = az.store();
    s.container("box");
    let mut folder = BTreeMap::new();
    folder.insert("hdi_isfolder".to_string(), "true".to_string());
    s.put_meta("box", "emptydir", "", &folder);
    s.put_meta("box", "other/", "", &folder);
    s.put("box", "both", "I am a blob");
    s.put("box", "both/inside", "inner");
    s.put("box", "a//b", "empty segment");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let listing = ok(m.sh("ls -1p alpha/storage/box"));
    assert_eq!(listing, "a/\nboth/\nemptydir/\nother/\n", "{listing}");
    assert_eq!(ok(m.sh("ls -A alpha/storage/box/emptydir")), "");
    assert_eq!(ok(m.sh("ls -A alpha/storage/box/other")), "");
    assert_eq!(ok(m.sh("cat alpha/storage/box/both/inside")), "inner");
    // `a//b` has an empty segment: a/ shows, its unnamed child does not, nothing crashes.
    assert_eq!(ok(m.sh("ls -A alpha/storage/box/a")), "");
    // Looked up directly (no listing cached), the same answers.
    let m2 = Mount::start(&config_for(&az, ""), &[]);
    assert!(ok(m2.sh("stat -c %F alpha/storage/box/both")).contains("directory"));
    assert!(ok(m2.sh("stat -c %F alpha/storage/box/emptydir")).contains("directory"));
}

#[test]
fn pinned_container_is_the_storage_root() {
    let az = Azurite::start();
    let s = az.store();
    s.container("input");
    s.container("other");
    s.put("input", "data/x.csv", "1,2\n");
    let m = Mount::start(&config_for(&az, "container = \"input\""), &[]);
    assert_eq!(ok(m.sh("ls -1 alpha/storage")), "data\n");
    assert_eq!(ok(m.sh("cat alpha/storage/data/x.csv")), "1,2\n");
}

#[test]
fn a_reader_never_mixes_two_versions() {
    let az = Azurite::start();
    let s = az.store();
    s.container("box");
    let v1 = data(8 << 20, 1);
    s.put("box", "f.bin", v1.clone());
    let m = Mount::start(&config_for(&az, ""), &[]);
    let f = m.p("alpha/storage/box/f.bin");
    use std::io::Read;
    let mut h = std::fs::File::open(&f).unwrap();
    let mut first = vec![0u8; 4096];
    h.read_exact(&mut first).unwrap();
    assert_eq!(first, v1[..4096]);
    s.put("box", "f.bin", data(8 << 20, 2));
    let mut rest = Vec::new();
    let err = h
        .read_to_end(&mut rest)
        .expect_err("reading on after a replacement must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    // What was returned before the error is still version 1.
    assert!(rest.iter().zip(&v1[4096..]).all(|(a, b)| a == b));
    // A new open after the attribute timeout sees version 2.
    std::thread::sleep(Duration::from_millis(1100));
    let now = std::fs::read(&f).unwrap();
    assert!(now == data(8 << 20, 2));
}

#[test]
fn backend_down_gives_eio_promptly_and_recovers() {
    let az = Azurite::start();
    let s = az.store();
    s.container("box");
    s.put("box", "f", "before");
    let m = Mount::start(&config_for(&az, ""), &[]);
    assert_eq!(ok(m.sh("cat alpha/storage/box/f")), "before");
    std::thread::sleep(Duration::from_millis(1100)); // let the caches expire
    az.signal("STOP");
    let start = Instant::now();
    let err = fails(m.sh("cat alpha/storage/box/f"));
    let took = start.elapsed();
    az.signal("CONT");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(took < Duration::from_secs(21), "EIO took {took:?}");
    // Recovery needs no remount: a background probe finds storage back within a second or
    // two (calls made before it has fail at once).
    let back = Instant::now();
    while !m.sh("cat alpha/storage/box/f").status.success() {
        assert!(back.elapsed() < Duration::from_secs(5), "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(m.sh("cat alpha/storage/box/f")), "before");
    assert!(
        m.log_text().contains("storage request failed"),
        "the failure is logged"
    );
}

#[test]
fn bad_configs_and_unusable_mounts_fail_with_a_reason() {
    let az = Azurite::start();
    // Unknown field: file, line and field named.
    let m = Mount::prepare("[[account]]\nname = \"alpha\"\nprimray_key = \"x\"\n");
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains(&format!("{}:3", m.config.display())), "{err}");
    assert!(err.contains("primray_key"), "{err}");
    // Bad value.
    let m = Mount::prepare("[[account]]\nname = \"Alpha_1\"\n");
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains(":2") && err.contains("`name`"), "{err}");
    // Wrong key: credentials rejected, and the key is not printed.
    let wrong = config_for(&az, "").replace(DEV_KEY, "d3Jvbmcta2V5LXdyb25nLWtleQ==");
    let m = Mount::prepare(&wrong);
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains("credentials rejected"), "{err}");
    assert!(!err.contains("d3Jvbmcta2V5"), "{err}");
    // Nothing listens there: unreachable.
    let dead = config_for(&az, "").replace(&format!(":{}/", az.port), ":9/");
    let m = Mount::prepare(&dead);
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains("unreachable"), "{err}");
    // Mountpoint missing, then busy.
    let m = Mount::prepare(&config_for(&az, ""));
    std::fs::remove_dir(&m.path).unwrap();
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains("No such file"), "{err}");
    std::fs::create_dir(&m.path).unwrap();
    ok(m.mount_cmd(&[]));
    let err = fails(m.mount_cmd(&[]));
    assert!(err.contains("busy"), "{err}");
    // Nothing secret in the log of all this.
    assert!(!m.log_text().contains(DEV_KEY));
}

#[test]
fn unmount_and_sigterm_end_the_daemon_cleanly() {
    let az = Azurite::start();
    let m = Mount::start(&config_for(&az, ""), &[]);
    ok(std::process::Command::new(BIN)
        .arg("unmount")
        .arg(&m.path)
        .output()
        .unwrap());
    assert_eq!(ok(m.sh("ls -A")), "", "the mountpoint is empty again");

    // Foreground daemon stopped by SIGTERM.
    let mut child = std::process::Command::new(BIN)
        .args(["mount", "--foreground", "--config"])
        .arg(&m.config)
        .arg(&m.path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ok(m.sh("ls")).contains("alpha") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "foreground mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output()
        .unwrap());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(ok(m.sh("ls -A")), "");
}

#[test]
fn accounts_command_shows_each_account_and_its_storage() {
    let az = Azurite::start();
    let m = Mount::prepare(&config_for(&az, ""));
    let out = ok(std::process::Command::new(BIN)
        .arg("accounts")
        .arg("--config")
        .arg(&m.config)
        .output()
        .unwrap());
    let alpha = out.lines().find(|l| l.starts_with("alpha")).expect(&out);
    // Storage answers; the Batch service is off in the test config.
    assert!(
        alpha.contains(DEV_ACCOUNT) && alpha.contains(" ok ") && alpha.ends_with("off"),
        "{out}"
    );
    let beta = out.lines().find(|l| l.starts_with("beta")).expect(&out);
    assert!(beta.contains("no storage"), "{out}");
}

#[test]
fn a_crashed_daemons_mountpoint_is_recovered() {
    let az = Azurite::start();
    let m = Mount::start(&config_for(&az, ""), &[]);
    let mp = m.path.display().to_string();
    let pid = ok(m.sh(&format!("pgrep -f -- 'batchfs mount .*{mp}$'")));
    ok(m.sh(&format!("kill -9 {}", pid.trim())));
    std::thread::sleep(Duration::from_millis(300));
    let err = fails(sh_in(std::path::Path::new("/"), &format!("ls {mp}")));
    assert!(err.contains("Transport endpoint is not connected"), "{err}");
    ok(m.mount_cmd(&[]));
    assert_eq!(ok(m.sh("ls -1")), "alpha\nbeta\n");
}

#[test]
fn sas_token_credentials_work_and_never_leak() {
    let az = Azurite::start();
    let s = az.store();
    s.container("sasbox");
    s.put("sasbox", "dir/file name.txt", "via sas\n");
    let sas = account_sas("rl");
    let cfg = config_for(&az, "").replace(
        &format!("key = \"{DEV_KEY}\""),
        &format!("sas = \"?{sas}\""),
    );
    let m = Mount::start(&cfg, &["--log-level", "trace"]);
    assert_eq!(ok(m.sh("ls -1 alpha/storage")), "sasbox\n");
    assert_eq!(
        ok(m.sh("cat 'alpha/storage/sasbox/dir/file name.txt'")),
        "via sas\n"
    );
    fails(m.sh("cat alpha/storage/sasbox/missing"));
    let sig = sas.rsplit("sig=").next().unwrap().to_string();
    let log = m.log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(&sig) && !log.contains(&urlencoding::decode(&sig).unwrap().to_string()));

    // A SAS signed with the wrong key is refused at mount time.
    let bad = cfg.replace(&sig, "AAAA");
    let m2 = Mount::prepare(&bad);
    let err = fails(m2.mount_cmd(&[]));
    assert!(err.contains("credentials rejected"), "{err}");
}

/// What the kernel forgets, the mount forgets: a walk over many files does not leave the
/// daemon holding a node for each of them, and forgotten files come back intact.
#[test]
fn forgotten_inodes_are_dropped_and_come_back() {
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "dropping the kernel's caches needs root: run the tests as root"
    );
    let az = Azurite::start();
    let s = az.store();
    s.container("many");
    let names: Vec<String> = (0..2000).map(|i| format!("d/f{i:04}")).collect();
    s.put_many("many", names, b"twelve bytes");
    let m = Mount::start(&config_for(&az, ""), &[]);
    let listed = ok(m.sh("ls -l alpha/storage/many/d | grep -c ' f'"));
    assert_eq!(listed.trim(), "2000");
    let held = m.stats()["inodes"];
    assert!(held >= 2000, "{held}");

    // The kernel drops its dentries and inodes, and sends FORGET for each.
    let start = Instant::now();
    loop {
        ok(sh_in(
            std::path::Path::new("/"),
            "sync; echo 2 > /proc/sys/vm/drop_caches",
        ));
        let now = m.stats()["inodes"];
        if now < 100 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still {now} inodes after dropping caches"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Everything is still there, with the right sizes and content.
    let sizes = ok(m.sh("stat -c %s alpha/storage/many/d/* | sort | uniq -c"));
    assert_eq!(sizes.trim(), "2000 12");
    assert_eq!(
        std::fs::read(m.p("alpha/storage/many/d/f1234")).unwrap(),
        b"twelve bytes"
    );
}
