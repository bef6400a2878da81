//! Test harness: a real Azurite on a free loopback port, a real mount through the `batchfs`
//! binary, and shell commands run against it as a user would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod arm;
pub mod proxy;
pub mod sdk;
pub mod standin;

use batchfs::accounts::config::StorageConfig;
use batchfs::blob::{BlobStore, Condition, HttpBlobStore, RetryPolicy};
use batchfs::secret::Secret;
use bytes::Bytes;

pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const BIN: &str = env!("CARGO_BIN_EXE_batchfs");

fn azurite_main() -> PathBuf {
    if let Some(p) = std::env::var_os("BATCHFS_AZURITE") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/azurite/node_modules/azurite/dist/src/blob/main.js")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// How to run Azurite when the defaults (in memory, devstoreaccount1, HTTP) do not serve.
#[derive(Default, Clone)]
pub struct AzuriteOpts {
    /// `AZURITE_ACCOUNTS`: `name:key1[:key2];...`.
    pub accounts: Option<String>,
    /// Keep data on disk here, so a restart (e.g. with other keys) keeps it.
    pub location: Option<PathBuf>,
    /// HTTPS with this certificate and key, and `--oauth basic`.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub port: Option<u16>,
}

impl Azurite {
    pub fn start() -> Azurite {
        Azurite::start_with(&AzuriteOpts::default())
    }

    pub fn start_with(opts: &AzuriteOpts) -> Azurite {
        let main = azurite_main();
        assert!(
            main.exists(),
            "Azurite not found at {} (run scripts/setup.sh, or set BATCHFS_AZURITE)",
            main.display()
        );
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = opts.port.unwrap_or_else(free_port);
            let mut cmd = Command::new("node");
            cmd.arg(&main)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry"]);
            match &opts.location {
                Some(l) => cmd.arg("--location").arg(l),
                None => cmd.args(["--inMemoryPersistence", "--extentMemoryLimit", "4096"]),
            };
            if let Some((cert, key)) = &opts.tls {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
                cmd.args(["--oauth", "basic"]);
            }
            if let Some(a) = &opts.accounts {
                cmd.env("AZURITE_ACCOUNTS", a);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node runs");
            let mut az = Azurite {
                child,
                port,
                _dir: dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                // The port is free when chosen, but another test's server may take it before
                // node does: only a listener of our own child counts.
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && listens_on(az.child.id(), port)
                {
                    return az;
                }
                if let Ok(Some(_)) = az.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("Azurite did not start");
    }

    /// Stops Azurite the way a service manager would (SIGTERM), so that its data on disk
    /// is saved, and waits until it has exited.
    pub fn stop(mut self) {
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Azurite did not stop on SIGTERM");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{DEV_ACCOUNT}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// A client of our own, independent of any mount, for seeding and checking storage.
    pub fn store(&self) -> Seeder {
        Seeder::new(&self.endpoint())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Seeder {
    pub store: Arc<HttpBlobStore>,
    rt: tokio::runtime::Runtime,
}

impl Seeder {
    pub fn new(endpoint: &str) -> Seeder {
        Seeder::for_account(DEV_ACCOUNT, endpoint, DEV_KEY)
    }

    pub fn for_account(account: &str, endpoint: &str, key: &str) -> Seeder {
        let cfg = StorageConfig::with_key(account, endpoint, Secret::new(key));
        let store =
            HttpBlobStore::new(&cfg, RetryPolicy::default(), Default::default()).expect("client");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Seeder {
            store: Arc::new(store),
            rt,
        }
    }

    pub fn container(&self, name: &str) {
        self.rt
            .block_on(self.store.create_container(name))
            .expect("create container");
    }

    pub fn put(&self, container: &str, name: &str, data: impl Into<Bytes>) {
        self.put_meta(container, name, data, &BTreeMap::new());
    }

    pub fn put_meta(
        &self,
        container: &str,
        name: &str,
        data: impl Into<Bytes>,
        meta: &BTreeMap<String, String>,
    ) {
        self.rt
            .block_on(
                self.store
                    .put(container, name, data.into(), Condition::None, meta),
            )
            .unwrap_or_else(|e| panic!("put {container}/{name}: {e}"));
    }

    /// Uploads many small blobs, 32 at a time.
    pub fn put_many(&self, container: &str, names: Vec<String>, data: &'static [u8]) {
        use futures::StreamExt;
        let store = self.store.clone();
        let container = container.to_string();
        self.rt.block_on(async move {
            futures::stream::iter(names)
                .map(|n| {
                    let store = store.clone();
                    let container = container.clone();
                    async move {
                        store
                            .put(
                                &container,
                                &n,
                                Bytes::from_static(data),
                                Condition::None,
                                &BTreeMap::new(),
                            )
                            .await
                            .unwrap_or_else(|e| panic!("put {n}: {e}"))
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await;
        });
    }

    pub fn head(&self, container: &str, name: &str) -> Option<batchfs::blob::BlobProps> {
        match self.rt.block_on(self.store.head(container, name)) {
            Ok(p) => Some(p),
            Err(batchfs::blob::BlobError::NotFound) => None,
            Err(e) => panic!("head {container}/{name}: {e}"),
        }
    }

    /// Every blob name in `container`, flat.
    pub fn names(&self, container: &str) -> Vec<String> {
        let page = self
            .rt
            .block_on(batchfs::blob::list_all(
                self.store.as_ref(),
                container,
                "",
                None,
            ))
            .expect("list");
        page.blobs.into_iter().map(|b| b.name).collect()
    }

    pub fn get(&self, container: &str, name: &str) -> Vec<u8> {
        let props = self
            .rt
            .block_on(self.store.head(container, name))
            .expect("head");
        self.rt
            .block_on(self.store.get_range(container, name, 0, props.size, None))
            .expect("get")
            .to_vec()
    }
}

/// A mount made by the real binary, in the background (as a user would run it).
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Mount {
    pub fn start(config_text: &str, extra: &[&str]) -> Mount {
        let m = Mount::prepare(config_text);
        let out = m.mount_cmd(extra);
        assert!(
            out.status.success(),
            "mount failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log_text()
        );
        m
    }

    pub fn prepare(config_text: &str) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mnt");
        let config = dir.path().join("accounts.toml");
        let mut f = std::fs::File::create(&config).expect("config");
        f.write_all(config_text.as_bytes()).expect("write config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let log = dir.path().join("batchfs.log");
        Mount {
            dir,
            path,
            config,
            log,
        }
    }

    pub fn mount_cmd(&self, extra: &[&str]) -> Output {
        self.mount_env(extra, &[])
    }

    /// `batchfs mount` with extra flags and environment.
    pub fn mount_env(&self, extra: &[&str], env: &[(String, String)]) -> Output {
        Command::new(BIN)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("mount")
            .arg("--config")
            .arg(&self.config)
            .arg("--log-file")
            .arg(&self.log)
            .args(extra)
            .arg(&self.path)
            .output()
            .expect("batchfs runs")
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a shell command with the mountpoint as working directory.
    pub fn sh(&self, script: &str) -> Output {
        sh_in(&self.path, script)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["unmount", "--lazy"])
            .arg(&self.path)
            .output();
    }
}

pub fn sh_in(dir: &Path, script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash runs")
}

/// Runs and requires success; returns stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requires failure; returns stderr.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn config_for(az: &Azurite, extra_storage: &str) -> String {
    format!(
        r#"
[[account]]
name = "alpha"
endpoint = "alpha.westeurope.batch.azure.com"
location = "westeurope"
subscription_id = "00000000-0000-0000-0000-000000000001"
resource_group = "rg-batch"
primary_key = "cHJpbWFyeS1rZXk="
secondary_key = "c2Vjb25kYXJ5LWtleQ=="
# No Batch service answers for this account in tests (tests/service.rs has its own).
service = false
[account.storage]
account = "{DEV_ACCOUNT}"
endpoint = "{ep}"
key = "{DEV_KEY}"
{extra_storage}

[[account]]
name = "beta"
"#,
        ep = az.endpoint()
    )
}

/// Pseudo-random bytes, reproducible from `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A read/list account SAS signed with the dev key.
pub fn account_sas(permissions: &str) -> String {
    batchfs::blob::auth::account_sas(
        DEV_ACCOUNT,
        &Secret::new(DEV_KEY),
        permissions,
        "2099-01-01T00:00:00Z",
    )
    .expect("sas")
}

impl Mount {
    /// The daemon's counters, through `batchfs stats`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let out = ok(Command::new(BIN)
            .arg("stats")
            .arg(&self.path)
            .output()
            .expect("stats"));
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect()
    }

    pub fn daemon_pid(&self) -> u32 {
        let out = ok(sh_in(
            Path::new("/"),
            &format!("pgrep -f -- 'batchfs mount .*{}$'", self.path.display()),
        ));
        out.trim().parse().expect("one daemon")
    }
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM")
}

/// Whether process `pid` holds a listening TCP socket on `port` (from /proc/net/tcp and its
/// file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
                .then(|| format!("socket:[{}]", f.get(9).unwrap_or(&"")))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|t| inodes.iter().any(|i| t.to_string_lossy() == *i))
    })
}
