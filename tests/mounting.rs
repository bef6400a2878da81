//! Mounting the way Linux does it: `mount -t fuse.batchfs`, an fstab line, and a mountpoint
//! left behind by a daemon that was killed.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const HELPER: &str = "/sbin/mount.fuse.batchfs";

/// Points mount(8)'s helper for `fuse.batchfs` at the binary under test, as
/// `scripts/install.sh` does for an installed one, and puts back what was there.
struct Helper {
    previous: Option<PathBuf>,
}

impl Helper {
    fn install() -> Option<Helper> {
        // SAFETY: geteuid cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "mount(8) helpers can only be installed as root: run the tests as root"
        );
        let path = Path::new(HELPER);
        let previous = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Some(std::fs::read_link(path).unwrap()),
            Ok(_) => panic!("{HELPER} is a regular file; not replacing it"),
            Err(_) => None,
        };
        let _ = std::fs::remove_file(path);
        symlink(BIN, path).expect("install the helper");
        Some(Helper { previous })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(p) = &self.previous {
            let _ = symlink(p, HELPER);
        }
    }
}

/// `mount -T FSTAB MOUNTPOINT`: mount(8) with a line from an fstab of the test's own.
fn mount_fstab(fstab: &Path, mountpoint: &Path) -> std::process::Output {
    Command::new("mount")
        .arg("-T")
        .arg(fstab)
        .arg(mountpoint)
        .output()
        .expect("mount runs")
}

fn fstype(mountpoint: &Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE"])
        .arg(mountpoint)
        .output()
        .expect("findmnt runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mount_t_fuse_batchfs_fstab_and_a_stale_mountpoint() {
    let Some(_helper) = Helper::install() else {
        return;
    };
    let az = Azurite::start();
    az.store().container("data");
    az.store().put("data", "hello.txt", &b"hi\n"[..]);
    let m = Mount::prepare(&config_for(&az, ""));
    let opts = format!(
        "config={},allow_other,log_file={},cache_size=64M",
        m.config.display(),
        m.log.display()
    );

    // mount -t with -o options.
    ok(Command::new("mount")
        .args(["-t", "fuse.batchfs", "none"])
        .arg(&m.path)
        .args(["-o", &opts])
        .output()
        .unwrap());
    assert_eq!(fstype(&m.path), "fuse.batchfs");
    assert_eq!(
        std::fs::read(m.p("alpha/storage/data/hello.txt")).unwrap(),
        b"hi\n"
    );
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&*m.path.to_string_lossy()) && l.contains("allow_other")),
        "allow_other reached the kernel"
    );
    ok(Command::new("umount").arg(&m.path).output().unwrap());
    assert_eq!(fstype(&m.path), "");

    // An fstab line (in a file of its own, so the system's fstab is untouched).
    let fstab = m.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "none {} fuse.batchfs ro,noauto,_netdev,x-systemd.automount,{opts} 0 0\n",
            m.path.display()
        ),
    )
    .unwrap();
    ok(mount_fstab(&fstab, &m.path));
    let err = fails(m.sh("touch alpha/storage/data/new.txt"));
    assert!(err.contains("Read-only"), "ro reached the mount: {err}");

    // The daemon dies: the mountpoint is left "not connected"; mounting again clears it.
    let pid = m.daemon_pid();
    ok(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let gone = std::fs::read_dir(m.p("alpha")).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            gone.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{gone}"
    );
    ok(mount_fstab(&fstab, &m.path));
    assert_eq!(
        std::fs::read(m.p("alpha/storage/data/hello.txt")).unwrap(),
        b"hi\n"
    );
    ok(Command::new("umount").arg(&m.path).output().unwrap());

    // A mistyped option is named, and nothing is mounted.
    let err = fails(
        Command::new("mount")
            .args(["-t", "fuse.batchfs", "none"])
            .arg(&m.path)
            .args(["-o", &format!("{opts},cache_sise=1G")])
            .output()
            .unwrap(),
    );
    assert!(err.contains("cache_sise"), "{err}");
    assert_eq!(fstype(&m.path), "");
}

#[test]
fn under_systemd_logs_carry_journald_priorities() {
    use std::os::unix::fs::MetadataExt;
    let az = Azurite::start();
    let m = Mount::prepare(&config_for(&az, ""));
    let stderr_path = m.dir.path().join("journal-stream");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    // What systemd sets for a service whose stderr is the journal: that stream's dev:inode.
    let mut daemon = Command::new(BIN)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .args(["mount", "--foreground", "--config"])
        .arg(&m.config)
        .arg(&m.path)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while fstype(&m.path) != "fuse.batchfs" {
        assert!(start.elapsed().as_secs() < 20, "not mounted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fails(m.sh("cat alpha/storage/no-such-container/x"));
    ok(Command::new(BIN)
        .arg("unmount")
        .arg(&m.path)
        .output()
        .unwrap());
    daemon.wait().unwrap();
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("mounted")),
        "{text}"
    );
    for l in &lines {
        let p = l.get(..3).unwrap_or("");
        assert!(
            matches!(p, "<3>" | "<4>" | "<6>" | "<7>"),
            "no priority: {l}"
        );
        // journald stamps lines itself: the level comes first, no time, no colour codes.
        let rest = l[3..].trim_start();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"]
                .iter()
                .any(|lv| rest.starts_with(lv)),
            "not level-first: {l}"
        );
        assert!(!l.contains('\u{1b}'), "colour codes: {l}");
    }
}
