//! The namespace: root → accounts → account files and `storage/` → containers → blobs.
//!
//! This is plain async Rust with no FUSE types, so tests drive it directly over an in-memory
//! store. The FUSE adapter (`crate::fuse`) only translates kernel calls into these methods.
//!
//! Costs, which the kernel's entry and attribute caches multiply: a directory listing is one
//! List Blobs per 5000 entries and is kept for `dir_ttl`; while it is fresh, lookups in that
//! directory (hits and misses) and the attributes of its files cost nothing. A lookup outside a
//! fresh listing is one HEAD and one single-item list, in parallel. `open` always asks storage
//! (HEAD), so a new open sees the latest committed blob; every read of that handle is pinned
//! to the ETag seen at open.

pub mod dircache;
mod dirs;
pub mod drafts;
pub mod inode;
mod links;
pub mod listing;
mod rename;
pub mod service;
pub mod xattr;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::accounts::account;
use crate::accounts::config::AccountConfig;
use crate::batch::ServiceClient;
use crate::blob::{self, BlobError, BlobProps, BlobStore, meta};
use crate::cache::disk::DiskTier;
use crate::cache::{BlobRef, Cache, FillMode, Readahead};
use crate::stats::{STATS_FILE, Stats};
use crate::write::{self, AttrChange, Draft, WriteError};
use dircache::DirCache;
pub use dircache::{Entry, Listing};
use drafts::{Closed, Drafts};
use inode::{DirMeta, Inodes, Meta, NodeKey, ROOT_INO};
use listing::EntryKind;
use service::{Docs, NodeFiles, Subtrees, Svc};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("the blob was replaced while this file was open")]
    Stale,
    #[error("bad file handle")]
    BadHandle,
    #[error("permission denied")]
    Denied,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid name or argument")]
    Invalid,
    #[error("no such attribute")]
    NoAttr,
    #[error("attributes of this kind are not supported")]
    NotSupported,
    #[error("no room for the attribute (blob metadata is at most 8 KiB)")]
    NoSpace,
    #[error("the blob is in the Archive tier: set user.azure.access_tier to Hot or Cool first")]
    Archived,
    #[error("an append or page blob: batchfs writes block blobs only")]
    NotBlockBlob,
    #[error("file name too long")]
    NameTooLong,
    #[error("file too large")]
    TooLarge,
    #[error("not on the same container")]
    CrossDevice,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("write failed: {0}")]
    Write(String),
    #[error("storage: {0}")]
    Storage(BlobError),
    /// The Batch service cannot reach what holds the data (a node gone or rebooting).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<WriteError> for FsError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Storage(BlobError::PreconditionFailed) => {
                FsError::Write("the blob changed while it was being edited".into())
            }
            WriteError::Storage(e) => e.into(),
            WriteError::TooLarge => FsError::TooLarge,
            WriteError::Outdated => FsError::Stale,
            e => FsError::Write(e.to_string()),
        }
    }
}

impl From<BlobError> for FsError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound => FsError::NotFound,
            BlobError::PreconditionFailed => FsError::Stale,
            e => FsError::Storage(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, FsError>;

/// A directory whose marker was not found is looked for again after this long (or the
/// attribute timeout, if longer): a walk over marker-less trees (Batch outputs) must not pay
/// a HEAD per directory every second.
const MARKER_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub perm: u16,
    /// 1, or 0 for a file unlinked while open. Directories say 1 too: their count of
    /// subdirectories is not known without listing them (btrfs and most FUSE filesystems do
    /// the same, and `find` knows what 1 means).
    pub nlink: u32,
}

impl Attr {
    /// Attributes for a negative lookup answer; only the TTL matters to the kernel.
    pub fn missing() -> Attr {
        Attr {
            ino: 0,
            kind: Kind::File,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            atime: SystemTime::UNIX_EPOCH,
            perm: 0,
            nlink: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// How long file attributes (size, mtime) from storage are trusted.
    pub attr_ttl: Duration,
    /// How long a directory listing is trusted for lookups and readdir.
    pub dir_ttl: Duration,
    /// Byte budget of the page cache, shared by all open files.
    pub cache_size: u64,
    /// Requests to storage in flight at once, for all files.
    pub max_requests: usize,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Where blocks of files being written are kept until their commit.
    pub spill_dir: std::path::PathBuf,
    /// Bound on waits that are not storage requests (a writer waiting for budget held by
    /// uploads that cannot finish): past it the caller gets EIO.
    pub timeout: Duration,
    /// The disk tier below the page cache (`--disk-cache`), and what it fetches.
    pub disk: Option<Arc<DiskTier>>,
    pub fill: FillMode,
    /// Offer the kernel passthrough of blobs the disk tier holds whole, where it can.
    pub passthrough: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attr_ttl: Duration::from_secs(1),
            dir_ttl: Duration::from_secs(1),
            cache_size: 256 << 20,
            max_requests: 16,
            read_only: false,
            spill_dir: std::env::temp_dir(),
            timeout: Duration::from_secs(20),
            disk: None,
            fill: FillMode::Pages,
            passthrough: true,
        }
    }
}

/// One configured account as the namespace needs it.
pub struct Account<S> {
    pub name: String,
    json: Arc<[u8]>,
    keys: Option<Arc<[u8]>>,
    storage: Option<Storage<S>>,
    /// The Batch service, when the account has a credential for it.
    service: Option<Arc<ServiceClient>>,
    /// When this description of the account was made: the mtime of its files.
    seen: SystemTime,
}

struct Storage<S> {
    store: Arc<S>,
    pinned: Option<String>,
}

impl<S> Account<S> {
    pub fn new(cfg: &AccountConfig, store: Option<Arc<S>>) -> Self {
        Account {
            name: cfg.name.clone(),
            json: account::account_json(cfg).into(),
            keys: account::keys_json(cfg).map(Into::into),
            storage: store.map(|store| Storage {
                store,
                pinned: cfg.storage.as_ref().and_then(|s| s.container.clone()),
            }),
            service: None,
            seen: SystemTime::now(),
        }
    }

    /// Shows the account's Batch service (`jobs/`, `pools/`) through `client`.
    pub fn with_service(mut self, client: Option<Arc<ServiceClient>>) -> Self {
        self.service = client;
        self
    }
}

enum Handle<S> {
    Static(Arc<[u8]>),
    Blob {
        blob: BlobRef<S>,
        readahead: Mutex<Readahead>,
        /// The disk tier holds the blob whole and keeps it for this handle (passthrough).
        pinned: bool,
    },
    /// A task's or node's file; its version follows the size the last getattr saw.
    Service {
        ino: u64,
        file: Mutex<(Meta, Arc<BlobRef<NodeFiles>>)>,
        readahead: Mutex<Readahead>,
    },
    /// A handle of a file that has a draft (open for writing by this or another handle).
    Draft {
        ino: u64,
        draft: Arc<Draft<S>>,
        readahead: Mutex<Readahead>,
    },
}

/// What `open` gives the kernel.
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: u64,
    /// The blob is the version the kernel may still hold pages of: keep them.
    pub keep_cache: bool,
    /// Content whose size is not known in advance: bypass the kernel's page cache.
    pub direct_io: bool,
    /// The disk tier's copy of the whole blob, kept while the handle is open: the kernel may
    /// read it by passthrough.
    pub whole: Option<Arc<std::fs::File>>,
}

pub struct Namespace<S> {
    /// Slot `i` is `NodeKey::Account(i)`; a removed account leaves an empty slot, so the
    /// inodes of the others stay valid.
    accounts: RwLock<Vec<Option<Arc<Account<S>>>>>,
    opts: Options,
    inodes: Mutex<Inodes>,
    dirs: DirCache,
    handles: Mutex<HashMap<u64, Arc<Handle<S>>>>,
    cache: Arc<Cache>,
    stats: Arc<Stats>,
    dir_handles: Mutex<HashMap<u64, Arc<Listing>>>,
    drafts: Drafts<Draft<S>>,
    docs: Docs,
    subtrees: Subtrees,
    next_fh: AtomicU64,
    mount_time: SystemTime,
    /// The kernel reads files held whole in the disk tier by passthrough.
    passthrough: AtomicBool,
}

/// The entry `name` of the directory `prefix` (empty, or ending in `/`) in a container; with
/// an empty `name`, the container itself.
fn in_dir(acct: usize, container: &str, prefix: &str, name: &str, is_dir: bool) -> NodeKey {
    let container = container.to_string();
    match is_dir {
        true if name.is_empty() => NodeKey::Dir {
            acct,
            container,
            prefix: prefix.to_string(),
        },
        true => NodeKey::Dir {
            acct,
            container,
            prefix: format!("{prefix}{name}/"),
        },
        false => NodeKey::File {
            acct,
            container,
            name: format!("{prefix}{name}"),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole mount down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: BlobStore> Namespace<S> {
    pub fn new(accounts: Vec<Account<S>>, opts: Options, stats: Arc<Stats>) -> Self {
        Namespace {
            cache: Arc::new(Cache::with_disk(
                opts.cache_size,
                opts.max_requests,
                stats.clone(),
                opts.disk.clone(),
                opts.fill,
            )),
            stats,
            accounts: RwLock::new(accounts.into_iter().map(|a| Some(Arc::new(a))).collect()),
            dirs: DirCache::new(opts.dir_ttl),
            opts,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            drafts: Drafts::default(),
            docs: Docs::default(),
            subtrees: Subtrees::default(),
            next_fh: AtomicU64::new(1),
            mount_time: SystemTime::now(),
            passthrough: AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Whether opens may offer the disk tier's copy of a blob for passthrough: said by the
    /// FUSE layer once the kernel has agreed to it.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn key_of(&self, ino: u64) -> Result<NodeKey> {
        lock(&self.inodes)
            .get(ino)
            .map(|n| n.key.clone())
            .ok_or(FsError::NotFound)
    }

    /// Shows `fresh` from now on: accounts of a known name are replaced in their slot,
    /// new ones are added and those no longer in `fresh` disappear.
    pub fn set_accounts(&self, fresh: Vec<Account<S>>) {
        let mut slots = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        let mut fresh: Vec<Option<Account<S>>> = fresh.into_iter().map(Some).collect();
        for slot in slots.iter_mut() {
            let Some(current) = slot.as_ref() else {
                continue;
            };
            let same = fresh
                .iter_mut()
                .find(|f| f.as_ref().is_some_and(|f| f.name == current.name));
            let next = same.and_then(Option::take).map(|mut a| {
                // Unchanged files keep their mtime, so rsync and make see nothing new.
                if a.json == current.json && a.keys == current.keys {
                    a.seen = current.seen;
                }
                Arc::new(a)
            });
            *slot = next;
        }
        slots.extend(fresh.into_iter().flatten().map(|a| Some(Arc::new(a))));
    }

    fn account(&self, i: usize) -> Result<Arc<Account<S>>> {
        let slots = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        slots.get(i).cloned().flatten().ok_or(FsError::NotFound)
    }

    fn live_accounts(&self) -> Vec<(usize, Arc<Account<S>>)> {
        let slots = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        let live = slots.iter().enumerate();
        live.filter_map(|(i, a)| Some((i, a.clone()?))).collect()
    }

    fn store(&self, acct: usize) -> Result<Arc<S>> {
        let a = self.account(acct)?;
        a.storage
            .as_ref()
            .map(|s| s.store.clone())
            .ok_or(FsError::NotFound)
    }

    fn dir_attr(&self, ino: u64, perm: u16, mtime: Option<SystemTime>) -> Attr {
        let mtime = mtime.unwrap_or(self.mount_time);
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime,
            atime: mtime,
            perm,
            nlink: 1,
        }
    }

    fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime, perm: u16) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size,
            mtime,
            atime: mtime,
            perm,
            nlink: 1,
        }
    }

    /// Registers `key` under `parent`, remembering what storage said about it.
    fn node(&self, key: NodeKey, parent: u64, kind: Option<&EntryKind>) -> Attr {
        let mut t = lock(&self.inodes);
        let ino = t.ino(key.clone(), parent);
        let Some(node) = t.get_mut(ino) else {
            drop(t);
            return self.attr_from(ino, &key, None, DirMeta::default());
        };
        match kind {
            // A file this mount is writing shows what the draft holds, not an older listing.
            Some(EntryKind::File(p)) if !self.drafts.contains(ino) => node.meta = Some(meta_of(p)),
            Some(EntryKind::Dir(d)) => node.dir.merge(d),
            _ => {}
        }
        let (meta, dir) = (node.meta.clone(), node.dir);
        drop(t);
        self.attr_from(ino, &key, meta.as_ref(), dir)
    }

    fn attr_from(&self, ino: u64, key: &NodeKey, meta: Option<&Meta>, dir: DirMeta) -> Attr {
        match key {
            NodeKey::Root | NodeKey::Account(_) => self.dir_attr(ino, 0o555, None),
            NodeKey::Containers(_) => self.dir_attr(ino, 0o755, None),
            NodeKey::Dir { .. } => {
                let mut a = self.dir_attr(ino, dir.mode.unwrap_or(0o755), dir.mtime);
                a.atime = dir.atime.unwrap_or(a.mtime);
                a
            }
            NodeKey::Stats => self.file_attr(ino, 0, SystemTime::now(), 0o444),
            NodeKey::Service { acct, node } => self.svc_attr(ino, *acct, node, meta, dir),
            NodeKey::AccountJson(a) => match self.account(*a) {
                Ok(a) => self.file_attr(ino, a.json.len() as u64, a.seen, 0o444),
                Err(_) => self.file_attr(ino, 0, self.mount_time, 0o444),
            },
            NodeKey::Keys(a) => match self.account(*a) {
                Ok(a) => {
                    let len = a.keys.as_ref().map_or(0, |k| k.len());
                    self.file_attr(ino, len as u64, a.seen, 0o400)
                }
                Err(_) => self.file_attr(ino, 0, self.mount_time, 0o400),
            },
            NodeKey::File { .. } => {
                let perm = meta.and_then(|m| m.mode).unwrap_or(0o644);
                if let Some(d) = self.drafts.get(ino) {
                    let shown = d.shown();
                    let mut a = self.file_attr(ino, shown.size, shown.mtime, perm);
                    a.atime = shown.atime;
                    a.nlink = u32::from(self.drafts.shown(ino));
                    return a;
                }
                let (size, mtime) = meta.map_or((0, self.mount_time), |m| (m.size, m.mtime));
                let mut a = self.file_attr(ino, size, mtime, perm);
                a.atime = meta.map_or(mtime, |m| m.atime);
                if meta.is_some_and(|m| m.link) {
                    // As on any Linux file system: the bits of a link are never used.
                    a.kind = Kind::Symlink;
                    a.perm = 0o777;
                }
                a
            }
        }
    }

    fn storage_root(&self, acct: usize) -> NodeKey {
        let pinned = self.account(acct).ok().and_then(|a| {
            let s = a.storage.as_ref()?;
            s.pinned.clone()
        });
        match pinned {
            Some(container) => NodeKey::Dir {
                acct,
                container,
                prefix: String::new(),
            },
            None => NodeKey::Containers(acct),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        match self.lookup_stored(parent, name).await {
            // A directory without a marker that this mount emptied is gone from storage, but
            // not for this mount until it is removed (`rm -r` comes back to it last).
            Err(FsError::NotFound) => match self.dirs.phantom(parent, name) {
                Some(ino) if lock(&self.inodes).get(ino).is_some() => self.getattr(ino).await,
                _ => Err(FsError::NotFound),
            },
            r => r,
        }
    }

    async fn lookup_stored(&self, parent: u64, name: &str) -> Result<Attr> {
        if name.len() > listing::MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let key = self.key_of(parent)?;
        let child = match &key {
            NodeKey::Root | NodeKey::Account(_) => {
                self.fixed_child(&key, name).ok_or(FsError::NotFound)?
            }
            NodeKey::Containers(_) => {
                let entries = self.listing(parent).await?;
                return entries.find(name).cloned().ok_or(FsError::NotFound);
            }
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => {
                // A file being written here exists for this mount before its first commit.
                let pending = in_dir(*acct, container, prefix, name, false);
                let pending = lock(&self.inodes).find(&pending);
                if let Some(ino) = pending.filter(|i| self.drafts.shown(*i)) {
                    return self.getattr(ino).await;
                }
                let found = |l: Arc<Listing>| l.find(name).cloned().ok_or(FsError::NotFound);
                let listed = match self.dirs.fresh(parent) {
                    Some(entries) => Some(found(entries)?),
                    None if self.dirs.worth_relisting(parent) => {
                        Some(found(self.listing(parent).await?)?)
                    }
                    None => None,
                };
                if let Some(attr) = listed {
                    // A directory's mode and times live in its marker, which a listing of its
                    // parent does not return.
                    return match attr.kind {
                        Kind::Dir => self.getattr(attr.ino).await,
                        Kind::File | Kind::Symlink => Ok(attr),
                    };
                }
                if !listing::valid_name(name) {
                    return Err(FsError::NotFound);
                }
                return self.probe(parent, *acct, container, prefix, name).await;
            }
            NodeKey::Service { acct, node } => {
                return self.svc_lookup(parent, *acct, node, name).await;
            }
            NodeKey::AccountJson(_) | NodeKey::Keys(_) | NodeKey::File { .. } | NodeKey::Stats => {
                return Err(FsError::NotDir);
            }
        };
        Ok(self.node(child, parent, None))
    }

    /// Is `prefix+name` a directory, a file, or nothing? Asks both questions at once.
    async fn probe(
        &self,
        parent: u64,
        acct: usize,
        container: &str,
        prefix: &str,
        name: &str,
    ) -> Result<Attr> {
        let store = &self.store(acct)?;
        let full = format!("{prefix}{name}");
        let dir_prefix = format!("{full}/");
        let (head, list) = tokio::join!(
            store.head(container, &full),
            store.list(container, &dir_prefix, Some("/"), None, Some(1))
        );
        let list = list?;
        let own = list.blobs.iter().find(|b| b.name == dir_prefix);
        let own = own.map(|b| &b.props).filter(|p| p.is_folder_marker());
        // blobfuse's marker is `name` itself, which the HEAD just read.
        let legacy = head.as_ref().ok().filter(|p| p.is_folder_marker());
        let own = own.or(legacy).map(|p| EntryKind::Dir(listing::dir_meta(p)));
        let dir_key = NodeKey::Dir {
            acct,
            container: container.to_string(),
            prefix: dir_prefix,
        };
        if !list.blobs.is_empty() || !list.prefixes.is_empty() {
            // A marker `prefix/` sorts first under the prefix: if the first item is not one,
            // there is none to look for.
            let attr = self.node(dir_key, parent, own.as_ref());
            if let Some(n) = lock(&self.inodes).get_mut(attr.ino) {
                n.marker_checked = Some(Instant::now());
            }
            return Ok(attr);
        }
        let props = head?;
        if props.is_folder_marker() {
            let kind = EntryKind::Dir(listing::dir_meta(&props));
            return Ok(self.node(dir_key, parent, Some(&kind)));
        }
        let key = NodeKey::File {
            acct,
            container: container.to_string(),
            name: full,
        };
        Ok(self.node(key, parent, Some(&EntryKind::File(props))))
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        let (key, meta, dir, marker_checked) = {
            let t = lock(&self.inodes);
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.key.clone(), n.meta.clone(), n.dir, n.marker_checked)
        };
        if let NodeKey::Service { acct, node } = &key {
            return self.svc_getattr(ino, *acct, node).await;
        }
        // A directory known only as a prefix: its marker, if any, holds its mode and times.
        if let NodeKey::Dir {
            acct,
            container,
            prefix,
        } = &key
            && !prefix.is_empty()
            && dir.mode.is_none()
            && marker_checked.is_none_or(|t| t.elapsed() >= self.opts.attr_ttl.max(MARKER_RECHECK))
        {
            let marker = match self.store(*acct)?.head(container, prefix).await {
                Ok(p) if p.is_folder_marker() => Some(listing::dir_meta(&p)),
                Ok(_) | Err(BlobError::NotFound) => None,
                // The directory is known; only its mode and times are not: show the defaults
                // rather than fail a lookup that the listing answered.
                Err(e) => {
                    tracing::debug!(ino, error = %e, "directory marker not read");
                    return Ok(self.attr_from(ino, &key, meta.as_ref(), dir));
                }
            };
            let mut t = lock(&self.inodes);
            if let Some(n) = t.get_mut(ino) {
                n.marker_checked = Some(Instant::now());
                if let Some(m) = &marker {
                    n.dir.merge(m);
                }
                let dir = n.dir;
                drop(t);
                return Ok(self.attr_from(ino, &key, None, dir));
            }
        }
        if let NodeKey::File {
            acct,
            container,
            name,
        } = &key
            && meta
                .as_ref()
                .is_none_or(|m| m.fetched.elapsed() >= self.opts.attr_ttl)
            && !self.drafts.contains(ino)
        {
            let props = self.store(*acct)?.head(container, name).await?;
            let meta = self.remember(ino, &props);
            return Ok(self.attr_from(ino, &key, Some(&meta), dir));
        }
        Ok(self.attr_from(ino, &key, meta.as_ref(), dir))
    }

    fn remember(&self, ino: u64, props: &BlobProps) -> Meta {
        let meta = meta_of(props);
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            n.meta = Some(meta.clone());
        }
        meta
    }

    /// The entries of directory `ino`, from a fresh cached listing or from storage, with the
    /// files this mount is writing there shown as they are now.
    pub async fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        let listing = self.stored_listing(ino).await?;
        let pending = self.drafts.in_dir(ino);
        let phantoms: Vec<(String, u64)> = self
            .dirs
            .phantoms_in(ino)
            .into_iter()
            .filter(|(name, _)| listing.find(name).is_none())
            .collect();
        if pending.is_empty() && phantoms.is_empty() {
            return Ok(listing);
        }
        let mut shown = (*listing).clone();
        for (child, name) in pending {
            // A file whose last close finished meanwhile is in the listing or gone: either
            // way, not a reason to fail the listing.
            if let Ok(attr) = self.getattr(child).await {
                shown.upsert(&name, attr);
            }
        }
        for (name, child) in phantoms {
            if let Ok(attr) = self.getattr(child).await {
                shown.upsert(&name, attr);
            }
        }
        Ok(Arc::new(shown))
    }

    async fn stored_listing(&self, ino: u64) -> Result<Arc<Listing>> {
        if let Some(e) = self.dirs.fresh(ino) {
            return Ok(e);
        }
        // Only storage listings cost a request; the root and account directories are built
        // from memory and need no gate.
        if !matches!(
            self.key_of(ino)?,
            NodeKey::Containers(_) | NodeKey::Dir { .. } | NodeKey::Service { .. }
        ) {
            return self.listing_locked(ino).await;
        }
        let gate = self.dirs.gate(ino);
        let _listing = gate.lock().await;
        self.listing_locked(ino).await
    }

    async fn listing_locked(&self, ino: u64) -> Result<Arc<Listing>> {
        let key = self.key_of(ino)?;
        let entries = match &key {
            NodeKey::Root => self
                .live_accounts()
                .into_iter()
                .map(|(i, a)| self.entry(&a.name, NodeKey::Account(i), ino, None))
                .collect(),
            NodeKey::Account(i) => {
                let a = self.account(*i)?;
                let mut v = vec![self.entry("account.json", NodeKey::AccountJson(*i), ino, None)];
                if a.keys.is_some() {
                    v.push(self.entry("keys", NodeKey::Keys(*i), ino, None));
                }
                if a.storage.is_some() {
                    v.push(self.entry("storage", self.storage_root(*i), ino, None));
                }
                if a.service.is_some() {
                    for (name, node) in [("jobs", Svc::Jobs), ("pools", Svc::Pools)] {
                        let key = NodeKey::Service { acct: *i, node };
                        v.push(self.entry(name, key, ino, None));
                    }
                }
                v
            }
            NodeKey::Containers(acct) => {
                if let Some(e) = self.dirs.fresh(ino) {
                    return Ok(e);
                }
                let ticket = self.dirs.ticket(ino);
                let containers = self.store(*acct)?.list_containers().await?;
                let v = containers
                    .into_iter()
                    .map(|c| {
                        let kind = EntryKind::Dir(DirMeta {
                            mtime: Some(c.last_modified),
                            ..Default::default()
                        });
                        let key = NodeKey::Dir {
                            acct: *acct,
                            container: c.name.clone(),
                            prefix: String::new(),
                        };
                        self.entry(&c.name, key, ino, Some(&kind))
                    })
                    .collect();
                return Ok(self.dirs.store(ino, ticket, Listing::new(v)));
            }
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => {
                if let Some(e) = self.dirs.fresh(ino) {
                    return Ok(e);
                }
                let ticket = self.dirs.ticket(ino);
                let store = &self.store(*acct)?;
                let page = blob::list_all(store.as_ref(), container, prefix, Some("/")).await?;
                // The directory's own marker comes with its listing: its mode and times.
                let own = page.blobs.iter().find(|b| b.name == *prefix);
                if let Some(m) = own.filter(|b| b.props.is_folder_marker())
                    && let Some(n) = lock(&self.inodes).get_mut(ino)
                {
                    n.dir.merge(&listing::dir_meta(&m.props));
                    n.marker_checked = Some(Instant::now());
                }
                // A listing that a local change overtook must not write its older view of the
                // entries into the inode table either.
                let current = self.dirs.is_current(ino, ticket);
                let v = listing::entries(prefix, page)
                    .into_iter()
                    .map(|(name, kind)| {
                        let is_dir = matches!(kind, EntryKind::Dir(_));
                        let key = in_dir(*acct, container, prefix, &name, is_dir);
                        let kind = current.then_some(&kind);
                        self.entry(&name, key, ino, kind)
                    })
                    .collect();
                return Ok(self.dirs.store(ino, ticket, Listing::new(v)));
            }
            NodeKey::Service { acct, node } if node.kind() == Kind::Dir => {
                return self.svc_listing(ino, *acct, node).await;
            }
            NodeKey::AccountJson(_)
            | NodeKey::Keys(_)
            | NodeKey::File { .. }
            | NodeKey::Stats
            | NodeKey::Service { .. } => {
                return Err(FsError::NotDir);
            }
        };
        Ok(Arc::new(Listing::new(entries)))
    }

    fn entry(&self, name: &str, key: NodeKey, parent: u64, kind: Option<&EntryKind>) -> Entry {
        Entry {
            name: name.to_string(),
            attr: self.node(key, parent, kind),
        }
    }

    /// The kernel is about to be given an entry for `name` in `parent` (lookup, create,
    /// mkdir, readdirplus): counts the reference and returns the inode number to give. A node
    /// the kernel forgot while this answer was on its way is brought back, under the number
    /// its name has now, so the kernel never holds a number this table does not know.
    pub fn pin(&self, parent: u64, name: &str, attr: &Attr) -> u64 {
        if lock(&self.inodes).pin(attr.ino) {
            return attr.ino;
        }
        let Some(key) = self
            .key_of(parent)
            .ok()
            .and_then(|p| self.child_key(&p, name, attr.kind))
        else {
            return attr.ino;
        };
        let mut t = lock(&self.inodes);
        let ino = t.ino(key, parent);
        t.pin(ino);
        ino
    }

    /// The kernel dropped `n` references to `ino`. Once it holds none the node goes, with
    /// what is kept for it, unless a file being written still needs it.
    /// With `n` 0: drops a node whose references went while a draft still needed it.
    pub fn forget(&self, ino: u64, n: u64) {
        if self.drafts.contains(ino) {
            if let Some(node) = lock(&self.inodes).get_mut(ino) {
                node.lookups = node.lookups.saturating_sub(n);
            }
            return;
        }
        if lock(&self.inodes).forget(ino, n) {
            self.dirs.forget(ino);
            self.docs.forget(ino);
        }
    }

    /// How many nodes the table holds (for the counters).
    pub fn inode_count(&self) -> usize {
        lock(&self.inodes).count()
    }

    /// The child `name` of the root or of an account directory, whose contents are fixed.
    fn fixed_child(&self, parent: &NodeKey, name: &str) -> Option<NodeKey> {
        Some(match parent {
            NodeKey::Root if name == STATS_FILE => NodeKey::Stats,
            NodeKey::Root => {
                let live = self.live_accounts();
                NodeKey::Account(live.iter().find(|(_, a)| a.name == name)?.0)
            }
            NodeKey::Account(i) => {
                let a = self.account(*i).ok()?;
                match name {
                    "account.json" => NodeKey::AccountJson(*i),
                    "keys" if a.keys.is_some() => NodeKey::Keys(*i),
                    "storage" if a.storage.is_some() => self.storage_root(*i),
                    "jobs" if a.service.is_some() => NodeKey::Service {
                        acct: *i,
                        node: Svc::Jobs,
                    },
                    "pools" if a.service.is_some() => NodeKey::Service {
                        acct: *i,
                        node: Svc::Pools,
                    },
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    fn child_key(&self, parent: &NodeKey, name: &str, kind: Kind) -> Option<NodeKey> {
        let is_dir = kind == Kind::Dir;
        Some(match parent {
            NodeKey::Root | NodeKey::Account(_) => self.fixed_child(parent, name)?,
            NodeKey::Containers(acct) => in_dir(*acct, name, "", "", true),
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => in_dir(*acct, container, prefix, name, is_dir),
            NodeKey::Service { acct, node } => NodeKey::Service {
                acct: *acct,
                node: node.child(name, is_dir)?,
            },
            _ => return None,
        })
    }

    /// The parent directory's inode (for `..`).
    pub fn parent_of(&self, ino: u64) -> u64 {
        lock(&self.inodes).get(ino).map_or(ROOT_INO, |n| n.parent)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a snapshot of the directory for one `opendir`..`releasedir`, so offsets stay valid.
    pub async fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.listing(ino).await?;
        let fh = self.new_fh();
        lock(&self.dir_handles).insert(fh, entries);
        Ok(fh)
    }

    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Listing>> {
        lock(&self.dir_handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dir_handles).remove(&fh);
    }

    /// Opens `ino`. `O_TRUNC` is not seen here: the kernel truncates with a setattr once the
    /// open has passed its own checks (no atomic O_TRUNC, see `fuse.rs`).
    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened> {
        let key = self.key_of(ino)?;
        let mut keep_cache = true;
        let mut direct_io = false;
        let handle = match key {
            NodeKey::AccountJson(_) | NodeKey::Keys(_) | NodeKey::Stats if write => {
                return Err(FsError::Denied);
            }
            NodeKey::Service { acct, node } => return self.svc_open(ino, acct, &node, write).await,
            NodeKey::Stats => {
                direct_io = true;
                let inodes = self.inode_count() as u64;
                self.stats.inodes.store(inodes, Ordering::Relaxed);
                Handle::Static(self.stats.to_json().into_bytes().into())
            }
            // Rotated keys keep their length: the kernel must not keep the old pages.
            NodeKey::AccountJson(a) => {
                keep_cache = false;
                Handle::Static(self.account(a)?.json.clone())
            }
            NodeKey::Keys(a) => {
                keep_cache = false;
                match &self.account(a)?.keys {
                    Some(k) => Handle::Static(k.clone()),
                    None => return Err(FsError::NotFound),
                }
            }
            NodeKey::File {
                acct,
                container,
                name,
            } => {
                if write {
                    self.check_writable()?;
                }
                let draft = match self.drafts.join(ino) {
                    Some(d) => d,
                    None => {
                        // Close-to-open: always ask storage, and pin what it says for every
                        // read.
                        let store = self.store(acct)?;
                        let props = store.head(&container, &name).await?;
                        self.remember(ino, &props);
                        check_openable(&props, write)?;
                        if !write {
                            keep_cache = self.opened_version(ino, &props.etag);
                            let blob =
                                BlobRef::new(store, acct, container, name, props.etag, props.size);
                            let whole = match self.passthrough.load(Ordering::Relaxed) {
                                true => self.cache.pin_whole(&blob),
                                false => None,
                            };
                            let mut opened = self.add_handle(
                                Handle::Blob {
                                    blob,
                                    readahead: Mutex::new(Readahead::default()),
                                    pinned: whole.is_some(),
                                },
                                keep_cache,
                                direct_io,
                            );
                            opened.whole = whole;
                            return Ok(opened);
                        }
                        let draft = self.new_draft(acct, &container, &name, Some(&props))?;
                        self.register_draft(ino, draft)
                    }
                };
                return Ok(self.draft_handle(ino, draft));
            }
            _ => return Err(FsError::IsDir),
        };
        Ok(self.add_handle(handle, keep_cache, direct_io))
    }

    /// `open(O_TRUNC)` as the kernel sends it: an open for writing, then a setattr.
    #[cfg(test)]
    pub(crate) async fn open_truncated(&self, ino: u64) -> Result<Opened> {
        let o = self.open(ino, true).await?;
        let change = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        if let Err(e) = self.setattr(ino, change).await {
            self.release(o.fh).await;
            return Err(e);
        }
        Ok(o)
    }

    fn add_handle(&self, handle: Handle<S>, keep_cache: bool, direct_io: bool) -> Opened {
        let fh = self.new_fh();
        lock(&self.handles).insert(fh, Arc::new(handle));
        Opened {
            fh,
            keep_cache,
            direct_io,
            whole: None,
        }
    }

    /// Records the ETag an open saw; true if the previous open saw the same one.
    fn opened_version(&self, ino: u64, etag: &str) -> bool {
        let mut t = lock(&self.inodes);
        let Some(node) = t.get_mut(ino) else {
            return false;
        };
        let same = node.opened_etag.as_deref() == Some(etag);
        node.opened_etag = Some(etag.to_string());
        same
    }

    fn check_writable(&self) -> Result<()> {
        match self.opts.read_only {
            true => Err(FsError::ReadOnly),
            false => Ok(()),
        }
    }

    fn new_draft(
        &self,
        acct: usize,
        container: &str,
        name: &str,
        base: Option<&BlobProps>,
    ) -> Result<Draft<S>> {
        Ok(Draft::new(
            self.store(acct)?,
            self.cache.clone(),
            self.stats.clone(),
            self.opts.spill_dir.clone(),
            write::Target {
                acct,
                container: container.to_string(),
                name: name.to_string(),
            },
            base,
        ))
    }

    fn draft_of(&self, ino: u64) -> Option<Arc<Draft<S>>> {
        self.drafts.get(ino)
    }

    /// Registers a new draft for `ino` (or joins the one another open registered first).
    fn register_draft(&self, ino: u64, draft: Draft<S>) -> Arc<Draft<S>> {
        let parent = self.parent_of(ino);
        let name = self.file_name(ino).unwrap_or_default();
        self.drafts.register(ino, draft, parent, name)
    }

    /// A handle on a draft. The kernel drops its cached pages: they may predate the draft.
    fn draft_handle(&self, ino: u64, draft: Arc<Draft<S>>) -> Opened {
        let handle = Handle::Draft {
            ino,
            draft,
            readahead: Mutex::new(Readahead::default()),
        };
        self.add_handle(handle, false, false)
    }

    /// The last path segment of file `ino`: its name in its directory.
    fn file_name(&self, ino: u64) -> Option<String> {
        match self.key_of(ino) {
            Ok(NodeKey::File { name, .. }) => name.rsplit('/').next().map(str::to_owned),
            _ => None,
        }
    }

    /// A storage directory's (account, container, prefix), for creating entries in it.
    fn dir_target(&self, ino: u64) -> Result<(usize, String, String)> {
        match self.key_of(ino)? {
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => Ok((acct, container, prefix)),
            NodeKey::Containers(_) => Err(FsError::NotPermitted),
            NodeKey::Root | NodeKey::Account(_) => Err(FsError::Denied),
            NodeKey::Service { .. } => Err(FsError::ReadOnly),
            _ => Err(FsError::NotDir),
        }
    }

    /// Drops the cached listing of `ino`, after a change in it whose outcome is unknown.
    fn changed(&self, ino: u64) {
        self.dirs.invalidate(ino);
    }

    /// Applies a change this mount made in directory `dir` to its cached listing, if it has
    /// one, so the lookups that follow (`tar x`, `cp -r`: a miss, then a create) cost nothing.
    /// The directory's mtime moves, as POSIX has it for entries created or removed.
    fn patch(&self, dir: u64, name: &str, attr: Option<Attr>) {
        self.dirs.patch(dir, name, attr);
        self.touch_dir(dir);
    }

    /// Entries of `dir` changed through this mount: its mtime is now. Kept for the life of
    /// its node; storage has no directory times but a marker's.
    fn touch_dir(&self, dir: u64) {
        if let Some(n) = lock(&self.inodes).get_mut(dir)
            && matches!(n.key, NodeKey::Dir { .. })
        {
            n.dir.mtime = Some(SystemTime::now());
        }
    }

    /// A directory this mount just made is empty: its listing is known without asking.
    fn known_empty(&self, dir: u64) {
        self.dirs.known_empty(dir);
    }

    pub async fn create(&self, parent: u64, name: &str, mode: u16) -> Result<(Attr, Opened)> {
        self.check_writable()?;
        let (acct, container, prefix) = self.dir_target(parent)?;
        check_name(name)?;
        let full = format!("{prefix}{name}");
        let key = NodeKey::File {
            acct,
            container: container.clone(),
            name: full.clone(),
        };
        let ino = lock(&self.inodes).ino(key, parent);
        // No HEAD: the kernel asks only after a lookup found nothing, and the commit is
        // `If-None-Match: *`, so a blob that appeared meanwhile is never overwritten.
        let draft = self.new_draft(acct, &container, &full, None)?;
        if mode & 0o7777 != 0o644 {
            let change = AttrChange {
                mode: Some(mode),
                ..Default::default()
            };
            draft.set_attrs(&change).await;
        }
        let now = SystemTime::now();
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            n.meta = Some(Meta {
                size: 0,
                mtime: now,
                atime: now,
                mode: Some(mode & 0o7777),
                link: false,
                fetched: Instant::now(),
            });
        }
        let draft = self.register_draft(ino, draft);
        let opened = self.draft_handle(ino, draft);
        self.touch_dir(parent);
        Ok((self.getattr(ino).await?, opened))
    }

    /// `mknod` of a regular file (GNU tar does this with `--xattrs`, to set attributes before
    /// the data): an empty file, committed at once like a `create` closed unwritten.
    pub async fn mknod_file(&self, parent: u64, name: &str, mode: u16) -> Result<Attr> {
        let (_, opened) = self.create(parent, name, mode).await?;
        let committed = self.flush(opened.fh).await;
        // The node may go with the handle (the kernel holds no entry for it yet): the file is
        // looked up again, as the kernel will know it.
        self.release(opened.fh).await;
        committed?;
        self.lookup(parent, name).await
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<()> {
        match self.handle(fh)?.as_ref() {
            Handle::Draft { draft, .. } => {
                Ok(self.with_budget(|| draft.write(offset, data)).await?)
            }
            _ => Err(FsError::BadHandle),
        }
    }

    /// Runs a draft operation. When it finds the budget held for a while, the cause may be
    /// other open files' partly written blocks that nobody is filling (one program writing
    /// to many files in turn): those are sent, which frees their memory, and the operation,
    /// which can be redone, runs again.
    /// Waits at most `--timeout` in all: budget held by uploads that cannot finish (storage
    /// down) must give the writer EIO, not a wait without end.
    async fn with_budget<T, F: Future<Output = std::result::Result<T, WriteError>>>(
        &self,
        mut op: impl FnMut() -> F,
    ) -> std::result::Result<T, WriteError> {
        let start = Instant::now();
        loop {
            match op().await {
                Err(WriteError::NeedSpace) if start.elapsed() >= self.opts.timeout => {
                    return Err(WriteError::Storage(BlobError::Timeout(start.elapsed())));
                }
                Err(WriteError::NeedSpace) => {
                    for d in self.drafts.all() {
                        d.send_idle_blocks();
                    }
                }
                r => return r,
            }
        }
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle<S>>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// `flush` (every close) and `fsync`: commit what the file's draft holds, so that when
    /// they return storage has every change, a bare truncation included.
    pub async fn flush(&self, fh: u64) -> Result<()> {
        if let Handle::Draft { ino, draft, .. } = self.handle(fh)?.as_ref() {
            self.commit(*ino, draft).await?;
        }
        Ok(())
    }

    async fn commit(&self, ino: u64, draft: &Draft<S>) -> Result<()> {
        match self.with_budget(|| draft.commit()).await {
            Ok(Some(c)) => {
                let shown = draft.shown();
                if let Some(n) = lock(&self.inodes).get_mut(ino) {
                    let mode = n.meta.as_ref().and_then(|m| m.mode);
                    let link = n.meta.as_ref().is_some_and(|m| m.link);
                    n.meta = Some(Meta {
                        size: c.size,
                        mtime: shown.mtime,
                        atime: shown.atime,
                        mode,
                        link,
                        fetched: Instant::now(),
                    });
                    // The kernel's pages are what this mount wrote: they may be kept.
                    n.opened_etag = Some(c.etag);
                }
                if let (Some(name), Ok(attr)) = (self.file_name(ino), self.getattr(ino).await) {
                    self.dirs.patch(self.parent_of(ino), &name, Some(attr));
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.changed(self.parent_of(ino));
                Err(e.into())
            }
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        match self.handle(fh)?.as_ref() {
            Handle::Static(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(Bytes::copy_from_slice(&data[start..end]))
            }
            Handle::Blob {
                blob, readahead, ..
            } => Ok(self
                .cache
                .read(blob, readahead, offset, size as u64)
                .await?),
            Handle::Service {
                ino,
                file,
                readahead,
            } => self.svc_read(*ino, file, readahead, offset, size).await,
            Handle::Draft {
                draft, readahead, ..
            } => Ok(draft.read(readahead, offset, size as u64).await?),
        }
    }

    /// A read of a blob answered at once from the caches, if it needs no fetch (see
    /// [`Cache::read_ready`]); `None` when it must go through [`Namespace::read`].
    pub fn read_ready(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Bytes>> {
        let handle = self.handle(fh).ok()?;
        match handle.as_ref() {
            Handle::Blob {
                blob, readahead, ..
            } => self
                .cache
                .read_ready(blob, readahead, offset, size as u64)
                .map(|r| r.map_err(Into::into)),
            _ => None,
        }
    }

    /// Closing a handle. The last close of a draft commits what `flush` did not see (a
    /// change made after it, e.g. times set by rsync right after close) and forgets the draft.
    /// If the last commit failed, the caller was told so by `flush`: nothing is committed
    /// behind its back; the data is kept in a local file, and a log line says where.
    pub async fn release(&self, fh: u64) {
        let Some(handle) = lock(&self.handles).remove(&fh) else {
            return;
        };
        match handle.as_ref() {
            Handle::Draft { ino, draft, .. } => self.close_draft(*ino, draft).await,
            Handle::Blob {
                blob, pinned: true, ..
            } => self.cache.unpin_whole(blob),
            _ => {}
        }
    }

    async fn close_draft(&self, ino: u64, draft: &Arc<Draft<S>>) {
        let failed = draft.commit_failed().await;
        let removed = match self.drafts.close(ino, failed) {
            Closed::NotLast => return,
            Closed::Last {
                unlinked: true,
                removed,
            } => {
                draft.abandon().await;
                removed
            }
            Closed::Last { removed: true, .. } => {
                self.keep_unsaved(draft).await;
                true
            }
            Closed::Last { removed: false, .. } | Closed::Unknown => {
                if let Err(e) = self.commit(ino, draft).await {
                    tracing::error!(ino, error = %e, "the last close of a file could not commit it");
                    self.keep_unsaved(draft).await;
                }
                self.drafts.finish(ino, draft)
            }
        };
        if removed {
            // The kernel may have forgotten the file while this last close was committing.
            self.forget(ino, 0);
        }
    }

    /// Keeps the data of a draft whose commit failed in a local file, then drops it.
    async fn keep_unsaved(&self, draft: &Draft<S>) {
        if !draft.has_unsaved_data().await {
            return;
        }
        match draft.save_local(&self.opts.spill_dir).await {
            Ok((path, complete)) => tracing::error!(
                kept_in = %path.display(),
                complete,
                "a file's last commit failed; storage keeps the previous version, and the \
                 data written is in this local file"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "a file's last commit failed, and its data could not be kept locally"
            ),
        }
        draft.abandon().await;
    }

    pub async fn setattr(&self, ino: u64, change: SetAttr) -> Result<Attr> {
        let key = self.key_of(ino)?;
        let (acct, container, name) = match key {
            NodeKey::File {
                acct,
                container,
                name,
            } => (acct, container, name),
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } if change.size.is_none() => {
                self.check_writable()?;
                return self
                    .set_dir_attrs(ino, acct, &container, &prefix, &change)
                    .await;
            }
            NodeKey::Dir { .. } => return Err(FsError::IsDir),
            NodeKey::Service { .. } => return Err(FsError::ReadOnly),
            _ => return Err(FsError::NotPermitted),
        };
        self.check_writable()?;
        let target = (acct, container.as_str(), name.as_str());
        (self.change_file(ino, target, FileChange::Attrs(&change))).await?;
        self.getattr(ino).await
    }

    /// The draft a change of file `ino` goes into: the one open handles share, or one made
    /// for this change alone on the version storage holds now. A change of the data
    /// (`data`) needs a block blob; metadata can change on any blob.
    async fn draft_for_change(
        &self,
        ino: u64,
        acct: usize,
        container: &str,
        name: &str,
        data: bool,
    ) -> Result<Arc<Draft<S>>> {
        if let Some(d) = self.draft_of(ino) {
            return Ok(d);
        }
        let props = self.store(acct)?.head(container, name).await?;
        self.remember(ino, &props);
        if data {
            check_openable(&props, true)?;
        }
        Ok(Arc::new(self.new_draft(
            acct,
            container,
            name,
            Some(&props),
        )?))
    }

    /// Makes `change` in the draft of file `ino` (`target`: account, container, blob) and
    /// commits it, unless an open handle's close will. A draft made for this change alone
    /// that finds the blob changed elsewhere since its HEAD is made again on the new version,
    /// at most three times: only the change itself was at stake, and it applies as well there.
    async fn change_file(
        &self,
        ino: u64,
        target: (usize, &str, &str),
        change: FileChange<'_>,
    ) -> Result<()> {
        let (acct, container, name) = target;
        let data = matches!(change, FileChange::Attrs(a) if a.size.is_some());
        let mut tries = 1;
        loop {
            let draft = (self.draft_for_change(ino, acct, container, name, data)).await?;
            let changed = match change {
                FileChange::Attrs(a) => self.apply_setattr(ino, &draft, a).await,
                FileChange::Xattr(set) => draft.change_metadata(|md| set.apply(md)).await,
            };
            let alone = !self.draft_of(ino).is_some_and(|d| Arc::ptr_eq(&d, &draft));
            match self.settle_change(ino, &draft, changed).await {
                Err(FsError::Stale) if alone && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    /// Commits a change made to `draft`, unless an open handle's close will, and gives back
    /// the memory of a draft made for this change alone if the change failed.
    async fn settle_change(
        &self,
        ino: u64,
        draft: &Arc<Draft<S>>,
        change: Result<()>,
    ) -> Result<()> {
        let open = self.draft_of(ino).is_some_and(|d| Arc::ptr_eq(&d, draft))
            && self.drafts.handles(ino) > 0;
        // Not the draft of an open file, or its last close is under way and may have
        // committed already (rsync sets times right after close): nobody else will commit
        // this change.
        let r = match change {
            Ok(()) if !open => self.commit(ino, draft).await,
            r => r,
        };
        if r.is_err() && !self.draft_of(ino).is_some_and(|d| Arc::ptr_eq(&d, draft)) {
            draft.abandon().await;
        }
        r
    }

    async fn apply_setattr(&self, ino: u64, draft: &Arc<Draft<S>>, change: &SetAttr) -> Result<()> {
        if let Some(size) = change.size {
            self.with_budget(|| draft.truncate(size)).await?;
        }
        if change.attrs.mtime.is_some()
            || change.attrs.atime.is_some()
            || change.attrs.mode.is_some()
        {
            draft.set_attrs(&change.attrs).await;
            if let Some(m) = change.attrs.mode
                && let Some(n) = lock(&self.inodes).get_mut(ino)
                && let Some(meta) = n.meta.as_mut()
            {
                meta.mode = Some(m & 0o7777);
            }
        }
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.check_writable()?;
        check_name(name)?;
        let (acct, container, prefix) = self.dir_target(parent)?;
        let full = format!("{prefix}{name}");
        let key = NodeKey::File {
            acct,
            container: container.clone(),
            name: full.clone(),
        };
        let ino = lock(&self.inodes).find(&key);
        let draft = ino.and_then(|i| self.draft_of(i).map(|d| (i, d)));
        if let Some((_, d)) = &draft {
            // Its handles keep the data; if that cannot be made so, nothing is removed.
            d.unlink().await?;
        }
        let deleted = self
            .store(acct)?
            .delete(&container, &full, blob::Condition::None)
            .await;
        match &deleted {
            Ok(()) | Err(BlobError::NotFound) => {
                if let Some((i, _)) = &draft {
                    self.drafts.mark_unlinked(*i);
                }
                // A new file of this name is a new inode; the old one lives on for its open
                // handles.
                lock(&self.inodes).detach(&key);
                self.patch(parent, name, None);
                if deleted.is_ok() || draft.is_some() {
                    self.emptied(parent);
                }
            }
            Err(_) => {
                // Not removed: the open file stays what it was, and commits as before.
                if let Some((_, d)) = &draft {
                    d.relink().await;
                }
                self.changed(parent);
            }
        }
        match deleted {
            Err(BlobError::NotFound) if draft.is_some() => Ok(()),
            r => Ok(r?),
        }
    }
}

/// A change of a file other than writing its data: what `Namespace::change_file` makes.
#[derive(Debug, Clone, Copy)]
enum FileChange<'a> {
    Attrs(&'a SetAttr),
    Xattr(xattr::SetXattr<'a>),
}

/// What `setattr` may change.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub attrs: AttrChange,
}

/// A name a new entry can have.
fn check_name(name: &str) -> Result<()> {
    match name.len() > listing::MAX_NAME {
        true => Err(FsError::NameTooLong),
        false if listing::valid_name(name) => Ok(()),
        false => Err(FsError::Invalid),
    }
}

/// Whether a listing of prefix `dir` holds anything besides the directory's own marker.
fn holds_entries(page: &blob::ListPage, dir: &str) -> bool {
    !page.prefixes.is_empty() || page.blobs.iter().any(|b| b.name != dir || b.props.size > 0)
}

fn ignore_missing(r: std::result::Result<(), BlobError>) -> std::result::Result<(), BlobError> {
    match r {
        Err(BlobError::NotFound) => Ok(()),
        r => r,
    }
}

/// Azure container names: 3-63 of lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit.
fn valid_container(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

/// Whether a blob can be opened, for reading or for writing. An archived blob has no data
/// online (a GET would be refused); append and page blobs are read like any file, but a
/// commit would make them block blobs (or be refused), so they are not written.
fn check_openable(p: &BlobProps, write: bool) -> Result<()> {
    let is =
        |v: &Option<String>, what: &str| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(what));
    let system = p.system();
    if is(&system.access_tier, "Archive") {
        return Err(FsError::Archived);
    }
    if write
        && system
            .blob_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("BlockBlob"))
    {
        return Err(FsError::NotBlockBlob);
    }
    Ok(())
}

fn meta_of(p: &BlobProps) -> Meta {
    Meta {
        size: p.size,
        mtime: meta::mtime(p),
        atime: meta::atime(p),
        mode: meta::mode(&p.metadata),
        link: meta::is_symlink(&p.metadata),
        fetched: Instant::now(),
    }
}

#[cfg(test)]
mod faults;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
