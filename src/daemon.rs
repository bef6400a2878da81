//! Starting, checking and stopping a mount.
//!
//! `batchfs mount` without `--foreground` re-runs itself as a detached child and waits on a
//! pipe (the child's stdout) until the child says `ready` or `error: <why>`, so the command
//! returns only once the mount is live, or exits non-zero with the child's one-line reason.
//! Re-executing (rather than forking a process that already has threads) keeps the child a
//! normal process. Before mounting, each storage account is asked once, so bad credentials or
//! an unreachable endpoint stop the mount with a clear message instead of surfacing later as
//! EIO in someone's job.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config as FuseConfig, MountOption, SessionACL};

use crate::accounts::config::AccountConfig;
use crate::accounts::discovery;
use crate::accounts::identity::{BATCH_SCOPE, TokenSource};
use crate::accounts::sources::{SourceArgs, Sources};
use crate::batch::{Auth, ServiceClient};
use crate::blob::{BlobError, BlobStore, HttpBlobStore, RetryPolicy};
use crate::cache::disk::{DiskError, DiskTier};
use crate::fs::{Account, Namespace, Options};
use crate::fuse::FuseFs;
use crate::stats::{STATS_FILE, Stats};
use crate::{MountArgs, logging};

const CHILD_ENV: &str = "BATCHFS_DAEMON_CHILD";
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The Batch service check at mount is only worth a warning: it never holds a mount (at boot,
/// say) for long.
const SERVICE_CHECK: Duration = Duration::from_secs(3);
const MIN_EARLY_REFRESH: Duration = Duration::from_secs(10);

type Res = Result<(), String>;

/// `argv`: the command line after the program name, for the daemon to be started with.
pub fn mount(args: MountArgs, argv: &[std::ffi::OsString]) -> Res {
    if args.foreground {
        return run_mount(&args, None);
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        let mut notify = std::io::stdout();
        let result = run_mount(&args, Some(&mut notify));
        if let Err(e) = &result {
            let _ = writeln!(notify, "error: {e}");
        }
        return result;
    }
    spawn_daemon(argv)
}

/// Starts the detached daemon and waits until it reports.
fn spawn_daemon(argv: &[std::ffi::OsString]) -> Res {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(argv)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logging::daemon_stderr())
        // Its own process group: a Ctrl-C in the shell that ran `mount` must not kill it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let Some(out) = child.stdout.take() else {
        return Err("cannot read the daemon's status".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let done = line == "ready" || line.starts_with("error: ");
            if tx.send(line).is_err() || done {
                return;
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line == "ready" => return Ok(()),
            Ok(line) => match line.strip_prefix("error: ") {
                Some(e) => {
                    let _ = child.wait();
                    return Err(e.to_string());
                }
                None => eprintln!("batchfs: {}", line.trim_start_matches("warning: ")),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                return Err("the daemon did not become ready within 120 s".into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!(
                    "the daemon exited before the mount was ready ({status})"
                ));
            }
        }
    }
}

fn secs(what: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("{what} {v}: not a number of seconds"))
}

/// The spill directory, checked now so a bad one stops the mount instead of a later write.
fn spill_dir(args: &MountArgs) -> Result<std::path::PathBuf, String> {
    let dir = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let probe = dir.join(format!("batchfs-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("--spill-dir {}: cannot write there: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir)
}

fn run_mount(args: &MountArgs, mut notify: Option<&mut std::io::Stdout>) -> Res {
    tune_allocator();
    logging::init(args)?;
    let sources = Sources::new(&args.sources)?;
    for w in sources.warnings() {
        tracing::warn!("{w}");
        match notify.as_deref_mut() {
            Some(n) => {
                let _ = writeln!(n, "warning: {w}");
            }
            None => eprintln!("batchfs: warning: {w}"),
        }
    }
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let mut opts = Options {
        attr_ttl: secs("--attr-timeout", args.attr_timeout)?,
        dir_ttl: secs("--dir-timeout", args.dir_timeout)?,
        cache_size: args.cache_size,
        max_requests: args.max_requests.max(1),
        read_only: args.read_only,
        spill_dir: spill_dir(args)?,
        timeout: secs("--timeout", args.timeout)?,
        disk: None,
        fill: args.disk_cache_fill,
        passthrough: !args.no_passthrough,
    };
    let policy = RetryPolicy {
        deadline: secs("--timeout", args.timeout)?,
        ..RetryPolicy::default()
    };
    let refresh = secs("--refresh", args.refresh)?;
    let rt = runtime()?;
    let stats = Arc::new(Stats::default());
    rt.spawn(return_freed_memory(stats.clone()));
    if let Some(dir) = &args.disk_cache {
        // Under the mountpoint, the tier's new files would be written through the mount
        // itself, into storage.
        let abs = std::fs::canonicalize(dir)
            .or_else(|_| std::path::absolute(dir))
            .map_err(|e| format!("--disk-cache {}: {e}", dir.display()))?;
        if abs.starts_with(&mountpoint) {
            return Err(format!(
                "--disk-cache {} is inside the mountpoint {}: give a directory on a local disk",
                dir.display(),
                mountpoint.display()
            ));
        }
        opts.disk = Some(open_tier(dir, args.disk_cache_size, &stats)?);
    }
    let found = rt.block_on(sources.accounts())?;
    let mut stores = Stores::new(policy, stats.clone());
    stores.no_service = args.no_service;
    let accounts = rt.block_on(connect_all(&found, &mut stores))?;
    // A Batch service that refuses does not stop the mount (storage is still worth having),
    // but the user hears of it now rather than at the first `ls jobs`.
    for w in rt.block_on(check_services(&found, &stores)) {
        tracing::warn!("{w}");
        match notify.as_deref_mut() {
            Some(n) => {
                let _ = writeln!(n, "warning: {w}");
            }
            None => eprintln!("batchfs: warning: {w}"),
        }
    }
    let ns = Arc::new(Namespace::new(accounts, opts, stats));
    if sources.discovers() && !refresh.is_zero() {
        rt.spawn(refresh_accounts(
            sources,
            found.clone(),
            stores,
            ns.clone(),
            refresh,
        ));
    }

    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = FuseFs::new(
        ns,
        rt.handle().clone(),
        args.uid.unwrap_or(uid),
        args.gid.unwrap_or(gid),
    );
    let mut fuse_cfg = FuseConfig::default();
    // The mount table then shows type `fuse.batchfs`, which `umount -t`, `findmnt -t` and
    // fstab expect. As root the mount is made directly and the kernel reads the subtype from
    // the mount data; otherwise fusermount3 takes it as an option of its own.
    // SAFETY: geteuid cannot fail and touches no memory.
    let subtype = match unsafe { libc::geteuid() } {
        0 => MountOption::CUSTOM("subtype=batchfs".into()),
        _ => MountOption::Subtype("batchfs".into()),
    };
    fuse_cfg.mount_options = vec![
        MountOption::FSName("batchfs".into()),
        subtype,
        // The kernel enforces modes (keys is 0400 even with allow_other).
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if args.read_only {
        // The kernel then answers EROFS itself; the namespace refuses changes as well.
        fuse_cfg.mount_options.push(MountOption::RO);
    }
    if args.allow_other {
        fuse_cfg.acl = SessionACL::All;
    }
    // Writes wait on their thread (backpressure); enough threads remain for everything else.
    fuse_cfg.n_threads = Some(8);
    fuse_cfg.clone_fd = true;
    let mut session = fuser::Session::new(fs, &mountpoint, &fuse_cfg)
        .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), accounts = found.len(), "mounted");

    let unmounter = session.unmount_callable();
    rt.spawn(unmount_on_signal(unmounter, mountpoint.clone()));
    if let Some(n) = notify {
        let _ = writeln!(n, "ready");
        let _ = n.flush();
        detach_stdio();
    }
    session
        .run()
        .map_err(|e| format!("the FUSE session ended with an error: {e}"))?;
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Makes freed page buffers go back to the system. glibc otherwise raises its mmap threshold
/// after the first large free and serves later 2 MiB GET buffers from arenas that fragment,
/// so resident memory creeps past the cache budget.
///
/// One arena: a cached page is often freed (evicted) by another thread than the one that
/// allocated it, and glibc returns a chunk to the arena it came from, where only the threads
/// of that arena can use it again. With four arenas a random reader served from the disk
/// tier (~150,000 reads a second, each a new 32 KiB page and an eviction) kept 40-60 MiB of
/// such free chunks resident between trims: a peak of 315-327 MiB against 272-278 with one,
/// at the same IOPS; cold sequential reads were unchanged.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the pages of freed buffers back to the system four times a second while data moves. The cache's 32 KiB pages live in malloc's arenas, and a random reader evicts and
/// refills them in an order that leaves free holes between live pages; glibc keeps those
/// resident, which took the daemon 50-80 MiB past its budget. `malloc_trim` releases them.
async fn return_freed_memory(stats: Arc<Stats>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = [
            &stats.evictions,
            &stats.bytes_fetched,
            &stats.disk_read_bytes,
        ]
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add);
        if now != seen {
            seen = now;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("batchfs-io")
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))
}

/// The daemon no longer needs the pipe to its parent, nor a working directory that could
/// keep some other filesystem busy.
fn detach_stdio() {
    let _ = std::env::set_current_dir("/");
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto stdout of a valid fd we own; no Rust object owns fd 1.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

async fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mountpoint: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: unmounting");
    if let Err(e) = unmounter.unmount() {
        // Busy (a shell sits in it): detach now; the session ends when the last user leaves.
        tracing::warn!(error = %e, "unmount failed; detaching lazily");
        if let Err(e) = fusermount(&mountpoint, true) {
            tracing::error!("{e}");
        }
    }
}

/// Checks the mountpoint and clears a mount left behind by a crashed daemon.
fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if is_disconnected(e.raw_os_error()) => {
            tracing::warn!(mountpoint = %shown, "clearing a stale mount (transport endpoint is not connected)");
            fusermount(path, true)?;
        }
        Err(e) => return Err(format!("mountpoint {shown}: {e}")),
        Ok(m) if !m.is_dir() => return Err(format!("mountpoint {shown} is not a directory")),
        Ok(_) => {}
    }
    let abs = path
        .canonicalize()
        .map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if is_mountpoint(&abs) && answers_enotconn(&abs) {
        // stat can be answered from the kernel's attribute cache for a moment after the
        // daemon died; statfs always asks the daemon.
        tracing::warn!(mountpoint = %shown, "clearing a stale mount (its daemon is gone)");
        fusermount(&abs, true)?;
    }
    if is_mountpoint(&abs) {
        return Err(format!(
            "mountpoint {} is busy: something is already mounted there",
            abs.display()
        ));
    }
    Ok(abs)
}

fn answers_enotconn(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string and `buf` a properly sized, writable statfs struct.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf)
    };
    rc != 0 && is_disconnected(std::io::Error::last_os_error().raw_os_error())
}

/// What a FUSE mount whose daemon is gone answers: ENOTCONN, or ECONNABORTED for requests
/// that were in flight when it died.
fn is_disconnected(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOTCONN | libc::ECONNABORTED))
}

fn is_mountpoint(abs: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = abs.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn fusermount(path: &Path, lazy: bool) -> Res {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run fusermount3 (install the fuse3 package): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// How long a new mount waits for the tier's lock: `batchfs unmount` (and `fusermount -u`)
/// return once the kernel lets go, while the old daemon may still be closing the tier, so an
/// unmount and a mount at once would otherwise be refused.
const TIER_LOCK_WAIT: Duration = Duration::from_secs(10);

fn open_tier(dir: &Path, size: u64, stats: &Arc<Stats>) -> Result<Arc<DiskTier>, String> {
    let start = Instant::now();
    loop {
        match DiskTier::open(dir, size, stats.clone()) {
            Err(DiskError::InUse(_)) if start.elapsed() < TIER_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r.map_err(|e| e.to_string()),
        }
    }
}

pub fn unmount(path: &Path, lazy: bool) -> Res {
    fusermount(path, lazy).map_err(|e| {
        if e.contains("busy") {
            format!("{e} (close the files in use, or use --lazy)")
        } else {
            e
        }
    })
}

/// The storage client of each account, kept across discovery refreshes so that open files
/// go on working when keys rotate.
struct Stores {
    /// Account name → (storage account and endpoint, client).
    by_account: HashMap<String, (String, Arc<HttpBlobStore>)>,
    /// Account name → its Batch service client.
    services: HashMap<String, Arc<ServiceClient>>,
    /// `--no-service`: no account shows `jobs/` and `pools/`.
    no_service: bool,
    policy: RetryPolicy,
    stats: Arc<Stats>,
    /// Signalled by any client whose credential storage refused.
    denied: Arc<tokio::sync::Notify>,
    /// Signalled by any Batch service client whose key the service refused.
    service_denied: Arc<tokio::sync::Notify>,
}

impl Stores {
    fn new(policy: RetryPolicy, stats: Arc<Stats>) -> Self {
        Stores {
            by_account: HashMap::new(),
            services: HashMap::new(),
            no_service: false,
            policy,
            stats,
            denied: Arc::new(tokio::sync::Notify::new()),
            service_denied: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The account's client: the one it had if its storage is the same (now with the
    /// credential `a` gives), or a new one.
    fn client(&mut self, a: &AccountConfig) -> Result<Option<Arc<HttpBlobStore>>, String> {
        let Some(s) = &a.storage else {
            self.by_account.remove(&a.name);
            return Ok(None);
        };
        let what = |e| format!("account {}: storage {}: {e}", a.name, s.account);
        let id = format!("{} {}", s.account, s.endpoint);
        if let Some((known, store)) = self.by_account.get(&a.name)
            && *known == id
        {
            store.set_credential(&s.credential).map_err(what)?;
            return Ok(Some(store.clone()));
        }
        let mut store =
            HttpBlobStore::new(s, self.policy.clone(), self.stats.clone()).map_err(what)?;
        // Only discovered keys can change on a refresh; a refused key from the accounts
        // file is the file's to fix.
        if a.arm_body.is_some() {
            store = store.notify_denied(self.denied.clone());
        }
        let store = Arc::new(store);
        self.by_account.insert(a.name.clone(), (id, store.clone()));
        Ok(Some(store))
    }
}

impl Stores {
    /// The account's Batch service client, signing with the best credential it has: its key,
    /// else an Entra ID identity, else (on a node) the task's token. None for an account
    /// without any, or with the service hidden.
    fn service(&mut self, a: &AccountConfig) -> Option<Arc<ServiceClient>> {
        let svc = &a.service;
        let Some(url) = svc
            .url
            .as_deref()
            .filter(|_| svc.enabled && !self.no_service)
        else {
            self.services.remove(&a.name);
            return None;
        };
        // Compared as parsed URLs, as the client holds its endpoint (`:443`, case).
        let same =
            |c: &&Arc<ServiceClient>| reqwest::Url::parse(url).is_ok_and(|u| u.as_str() == c.url());
        let known = self.services.get(&a.name).filter(same);
        // The same identity keeps its token source, and the token it holds.
        if let (Some(c), Some(id)) = (known, &svc.identity)
            && a.primary_key.is_none()
            && a.secondary_key.is_none()
            && c.serves(id)
        {
            return Some(c.clone());
        }
        let Some(auth) = service_auth(a) else {
            self.services.remove(&a.name);
            return None;
        };
        if let Some(c) = known {
            c.set_auth(auth);
            return Some(c.clone());
        }
        match ServiceClient::new(&a.name, url, auth, self.policy.clone(), self.stats.clone()) {
            Ok(mut c) => {
                // As for storage: only discovered keys can change on a refresh.
                if a.arm_body.is_some() {
                    c = c.notify_denied(self.service_denied.clone());
                }
                let c = Arc::new(c);
                self.services.insert(a.name.clone(), c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(account = %a.name, "the Batch service is not shown: {e}");
                None
            }
        }
    }

    /// The client, or none (logged) for an account whose storage cannot have one: the
    /// account is still shown, without `storage/`, instead of vanishing.
    fn client_or_none(&mut self, a: &AccountConfig) -> Option<Arc<HttpBlobStore>> {
        self.client(a).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        })
    }
}

/// Builds each account's storage client and checks it answers, all accounts at once. An
/// account from the accounts file that does not answer stops the mount; a discovered one is
/// shown anyway (one broken account among dozens must not keep the others away).
async fn connect_all(
    accounts: &[AccountConfig],
    stores: &mut Stores,
) -> Result<Vec<Account<HttpBlobStore>>, String> {
    let mut clients = Vec::new();
    for a in accounts {
        clients.push(match a.arm_body {
            None => stores.client(a)?,
            Some(_) => stores.client_or_none(a),
        });
    }
    let checks = accounts.iter().zip(clients).map(|(a, store)| async move {
        if let Some(store) = &store
            && let Err(e) = check_storage(a, store.as_ref()).await
        {
            if a.arm_body.is_none() {
                return Err(e);
            }
            tracing::warn!("{e}");
        }
        Ok(Account::new(a, store))
    });
    let services: Vec<_> = accounts.iter().map(|a| stores.service(a)).collect();
    let shown: Result<Vec<_>, String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    Ok(shown?
        .into_iter()
        .zip(services)
        .map(|(a, s)| a.with_service(s))
        .collect())
}

/// Re-reads the accounts every `every`, and soon after storage refuses a credential (a key
/// rotated in Azure): new accounts appear, removed ones disappear and rotated keys are used
/// from then on. A failed refresh keeps what the mount shows.
async fn refresh_accounts(
    sources: Sources,
    shown: Vec<AccountConfig>,
    mut stores: Stores,
    ns: Arc<Namespace<HttpBlobStore>>,
    every: Duration,
) {
    let denied = stores.denied.clone();
    let service_denied = stores.service_denied.clone();
    let mut last = tokio::time::Instant::now();
    let mut previous = shown;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(last + every) => {}
            // At most one early refresh per MIN_EARLY_REFRESH: a credential that is simply
            // wrong must not turn every failed request into ARM traffic.
            _ = denied.notified() => {
                tokio::time::sleep_until(last + MIN_EARLY_REFRESH).await;
                tracing::info!("storage refused a credential: refreshing the accounts now");
            }
            _ = service_denied.notified() => {
                tokio::time::sleep_until(last + MIN_EARLY_REFRESH).await;
                tracing::info!(
                    "the Batch service refused a key: refreshing the accounts now"
                );
            }
        }
        last = tokio::time::Instant::now();
        let found = match sources.accounts().await {
            Ok(mut found) => {
                discovery::keep_known(&mut found, &previous);
                previous = found.clone();
                found
            }
            Err(e) => {
                tracing::warn!("refreshing the accounts failed (keeping the current ones): {e}");
                continue;
            }
        };
        let mut accounts = Vec::new();
        for a in &found {
            let service = stores.service(a);
            accounts.push(Account::new(a, stores.client_or_none(a)).with_service(service));
        }
        stores
            .by_account
            .retain(|name, _| found.iter().any(|a| &a.name == name));
        stores
            .services
            .retain(|name, _| found.iter().any(|a| &a.name == name));
        tracing::info!(accounts = accounts.len(), "accounts refreshed");
        ns.set_accounts(accounts);
    }
}

/// How an account's Batch service requests are signed: its key, else an Entra ID identity,
/// else (on a node) the task's token; `None` without any.
fn service_auth(a: &AccountConfig) -> Option<Auth> {
    let svc = &a.service;
    match (
        &a.primary_key,
        &a.secondary_key,
        &svc.identity,
        &svc.task_token,
    ) {
        (Some(k), _, _, _) | (None, Some(k), _, _) => Some(Auth::SharedKey(k.clone())),
        (None, None, Some(id), _) => match TokenSource::new(id, BATCH_SCOPE) {
            Ok(t) => Some(Auth::Bearer(Arc::new(t))),
            Err(e) => {
                tracing::warn!(account = %a.name, "no token for the Batch service: {e}");
                None
            }
        },
        (None, None, None, Some(t)) => Some(Auth::Token(t.clone())),
        _ => None,
    }
}

/// One List Jobs of one item: the service answers and takes the credential. Bounded by
/// [`SERVICE_CHECK`].
async fn check_service(client: &ServiceClient) -> Result<(), BlobError> {
    let query = [("$select", "id"), ("maxresults", "1")];
    match tokio::time::timeout(SERVICE_CHECK, client.get_json("/jobs", &query)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(BlobError::Timeout(SERVICE_CHECK)),
    }
}

/// Whether a check can tell anything: a task's token may only read its own job.
fn checkable(a: &AccountConfig) -> bool {
    a.primary_key.is_some() || a.secondary_key.is_some() || a.service.identity.is_some()
}

/// One List Jobs of one item per account whose service signs with a key or an identity (a
/// task's token may only read its own job), all at once: what is wrong, account by account.
async fn check_services(accounts: &[AccountConfig], stores: &Stores) -> Vec<String> {
    let checks = accounts.iter().filter_map(|a| {
        let client = stores.services.get(&a.name).filter(|_| checkable(a))?;
        Some(async move {
            let e = check_service(client).await.err()?;
            Some(format!(
                "account {}: the Batch service at {} does not answer ({e}); jobs/ and pools/ \
                 fail until it does",
                a.name,
                client.url()
            ))
        })
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One cheap request that proves the endpoint answers and the credential is accepted.
/// Bounded by [`CHECK_TIMEOUT`]: a mount that cannot reach storage should say so soon.
async fn check_storage<S: BlobStore>(a: &AccountConfig, store: &S) -> Res {
    let Some(s) = &a.storage else { return Ok(()) };
    let request = async {
        match &s.container {
            Some(c) => store.list(c, "", None, None, Some(1)).await.map(|_| ()),
            None => store.list_containers().await.map(|_| ()),
        }
    };
    let result = tokio::time::timeout(CHECK_TIMEOUT, request)
        .await
        .unwrap_or(Err(BlobError::Timeout(CHECK_TIMEOUT)));
    result.map_err(|e| {
        let what = format!(
            "account {}: storage account {} at {}",
            a.name, s.account, s.endpoint
        );
        match e {
            BlobError::Denied { status, code } => {
                format!("{what}: credentials rejected (HTTP {status} {code})")
            }
            BlobError::NotFound => format!(
                "{what}: container {} not found",
                s.container.as_deref().unwrap_or("?")
            ),
            BlobError::Transport(_) | BlobError::Timeout(_) => format!("{what}: unreachable ({e})"),
            e => format!("{what}: {e}"),
        }
    })
}

pub fn accounts(args: &SourceArgs) -> Res {
    let sources = Sources::new(args)?;
    for w in sources.warnings() {
        eprintln!("batchfs: warning: {w}");
    }
    let rt = runtime()?;
    let policy = RetryPolicy::default();
    let found = rt.block_on(sources.accounts())?;
    let rows = rt.block_on(futures::future::join_all(found.iter().map(|a| {
        let policy = policy.clone();
        async move {
            let service = match a.service.url.as_deref() {
                _ if !a.service.enabled => "off".to_string(),
                None => "-".to_string(),
                Some(url) => match service_auth(a) {
                    None => "-".to_string(),
                    Some(auth) => {
                        let stats = Default::default();
                        match ServiceClient::new(&a.name, url, auth, policy.clone(), stats) {
                            Err(e) => format!("error: {e}"),
                            Ok(_) if !checkable(a) => "task token".to_string(),
                            Ok(c) => match check_service(&c).await {
                                Ok(()) => "ok".to_string(),
                                Err(e) => format!("error: {e}"),
                            },
                        }
                    }
                },
            };
            let status = match &a.storage {
                None => "no storage".to_string(),
                Some(s) => match HttpBlobStore::new(s, policy, Default::default()) {
                    Err(e) => format!("error: {e}"),
                    Ok(store) => match check_storage(a, &store).await {
                        Ok(()) => "ok".to_string(),
                        Err(e) => format!("error: {}", e.rsplit(": ").next().unwrap_or(&e)),
                    },
                },
            };
            (a, status, service)
        }
    })));
    let mut lines = vec![format!(
        "{:<24} {:<32} {:<20} {:<6} {:<20} BATCH SERVICE",
        "ACCOUNT", "STORAGE ACCOUNT", "CONTAINER", "KEYS", "STORAGE"
    )];
    let mut failed = 0;
    for (a, status, service) in &rows {
        let storage = a
            .storage
            .as_ref()
            .map_or("-".to_string(), |s| match &s.kind {
                Some(k) => format!("{} ({k})", s.account),
                None => s.account.clone(),
            });
        let container = a
            .storage
            .as_ref()
            .and_then(|s| s.container.as_deref())
            .unwrap_or("(all)");
        let keys = if a.primary_key.is_some() || a.secondary_key.is_some() {
            "yes"
        } else {
            "no"
        };
        if status.starts_with("error") {
            failed += 1;
        }
        lines.push(format!(
            "{:<24} {:<32} {:<20} {:<6} {status:<20} {service}",
            a.name, storage, container, keys
        ));
    }
    print_lines(lines)?;
    if failed > 0 {
        return Err(format!("{failed} storage account(s) did not answer"));
    }
    Ok(())
}

/// Prints the running counters of the mount at `path`.
pub fn stats(path: &Path) -> Res {
    let file = path.join(STATS_FILE);
    let text = std::fs::read(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} is not a batchfs mount", path.display()),
        _ => format!("{}: {e}", file.display()),
    })?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| format!("bad stats: {e}"))?;
    print_lines(map.iter().map(|(k, v)| format!("{k:<20} {v}")))
}

/// Prints to stdout. A reader that went away (`| head`, `| true`) is not an error, and never
/// a panic as `println!` would make it.
fn print_lines(lines: impl IntoIterator<Item = String>) -> Res {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = lines
        .into_iter()
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
        _ => Ok(()),
    }
}
