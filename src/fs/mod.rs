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

pub mod inode;
pub mod listing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::account;
use crate::blob::{self, BlobError, BlobProps, BlobStore};
use crate::cache::{BlobRef, Cache, Readahead};
use crate::config::AccountConfig;
use crate::stats::{STATS_FILE, Stats};
use inode::{Inodes, Meta, NodeKey, ROOT_INO};
use listing::EntryKind;

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
    #[error("storage: {0}")]
    Storage(BlobError),
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

/// A listing this recent (or ten listing TTLs, if longer) is refreshed on a lookup miss ...
const RELIST_WINDOW: Duration = Duration::from_secs(10);
/// ... if it held at most this many entries (four list pages).
const RELIST_MAX_ENTRIES: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
}

impl Attr {
    /// Attributes for a negative lookup answer; only the TTL matters to the kernel.
    pub fn missing() -> Attr {
        Attr {
            ino: 0,
            kind: Kind::File,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            perm: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub attr: Attr,
}

/// A directory's entries in order, with an index by name for lookups.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl Listing {
    fn new(entries: Vec<Entry>) -> Self {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Listing { entries, index }
    }

    fn find(&self, name: &str) -> Result<Attr> {
        self.index
            .get(name)
            .map(|&i| self.entries[i].attr.clone())
            .ok_or(FsError::NotFound)
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attr_ttl: Duration::from_secs(1),
            dir_ttl: Duration::from_secs(1),
            cache_size: 256 << 20,
            max_requests: 16,
        }
    }
}

/// One configured account as the namespace needs it.
pub struct Account<S> {
    pub name: String,
    json: Arc<[u8]>,
    keys: Option<Arc<[u8]>>,
    storage: Option<Storage<S>>,
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
        }
    }
}

enum Handle<S> {
    Static(Arc<[u8]>),
    Blob {
        blob: BlobRef<S>,
        readahead: Mutex<Readahead>,
    },
}

/// What `open` gives the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The blob is the version the kernel may still hold pages of: keep them.
    pub keep_cache: bool,
    /// Content whose size is not known in advance: bypass the kernel's page cache.
    pub direct_io: bool,
}

pub struct Namespace<S> {
    accounts: Vec<Account<S>>,
    opts: Options,
    inodes: Mutex<Inodes>,
    listings: Mutex<HashMap<u64, (Instant, Arc<Listing>)>>,
    handles: Mutex<HashMap<u64, Arc<Handle<S>>>>,
    cache: Arc<Cache>,
    stats: Arc<Stats>,
    dir_handles: Mutex<HashMap<u64, Arc<Listing>>>,
    list_gates: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    next_fh: AtomicU64,
    mount_time: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole mount down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: BlobStore> Namespace<S> {
    pub fn new(accounts: Vec<Account<S>>, opts: Options, stats: Arc<Stats>) -> Self {
        Namespace {
            cache: Arc::new(Cache::new(
                opts.cache_size,
                opts.max_requests,
                stats.clone(),
            )),
            stats,
            accounts,
            opts,
            inodes: Mutex::new(Inodes::default()),
            listings: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            list_gates: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mount_time: SystemTime::now(),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
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

    fn storage(&self, acct: usize) -> Result<&Storage<S>> {
        self.accounts
            .get(acct)
            .and_then(|a| a.storage.as_ref())
            .ok_or(FsError::NotFound)
    }

    fn dir_attr(&self, ino: u64, perm: u16, mtime: Option<SystemTime>) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime: mtime.unwrap_or(self.mount_time),
            perm,
        }
    }

    fn file_attr(&self, ino: u64, size: u64, mtime: SystemTime, perm: u16) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size,
            mtime,
            perm,
        }
    }

    /// Registers `key` under `parent`, remembering what storage said about it.
    fn node(&self, key: NodeKey, parent: u64, kind: Option<&EntryKind>) -> Attr {
        let mut t = lock(&self.inodes);
        let ino = t.ino(key.clone(), parent);
        let node = t.get_mut(ino).expect("just inserted");
        match kind {
            Some(EntryKind::File(p)) => node.meta = Some(meta_of(p)),
            Some(EntryKind::Dir { mtime: Some(m) }) => node.dir_mtime = Some(*m),
            _ => {}
        }
        let (meta, dir_mtime) = (node.meta.clone(), node.dir_mtime);
        drop(t);
        self.attr_from(ino, &key, meta.as_ref(), dir_mtime)
    }

    fn attr_from(
        &self,
        ino: u64,
        key: &NodeKey,
        meta: Option<&Meta>,
        dir_mtime: Option<SystemTime>,
    ) -> Attr {
        match key {
            NodeKey::Root | NodeKey::Account(_) => self.dir_attr(ino, 0o555, None),
            NodeKey::Containers(_) => self.dir_attr(ino, 0o755, None),
            NodeKey::Dir { .. } => self.dir_attr(ino, 0o755, dir_mtime),
            NodeKey::Stats => self.file_attr(ino, 0, SystemTime::now(), 0o444),
            NodeKey::AccountJson(a) => self.file_attr(
                ino,
                self.accounts[*a].json.len() as u64,
                self.mount_time,
                0o444,
            ),
            NodeKey::Keys(a) => {
                let len = self.accounts[*a].keys.as_ref().map_or(0, |k| k.len());
                self.file_attr(ino, len as u64, self.mount_time, 0o400)
            }
            NodeKey::File { .. } => {
                let (size, mtime) = meta.map_or((0, self.mount_time), |m| (m.size, m.mtime));
                self.file_attr(ino, size, mtime, 0o644)
            }
        }
    }

    fn storage_root(&self, acct: usize) -> NodeKey {
        match self.accounts[acct]
            .storage
            .as_ref()
            .and_then(|s| s.pinned.clone())
        {
            Some(container) => NodeKey::Dir {
                acct,
                container,
                prefix: String::new(),
            },
            None => NodeKey::Containers(acct),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let key = self.key_of(parent)?;
        let child = match &key {
            NodeKey::Root if name == STATS_FILE => NodeKey::Stats,
            NodeKey::Root => match self.accounts.iter().position(|a| a.name == name) {
                Some(i) => NodeKey::Account(i),
                None => return Err(FsError::NotFound),
            },
            NodeKey::Account(i) => {
                let a = &self.accounts[*i];
                match name {
                    "account.json" => NodeKey::AccountJson(*i),
                    "keys" if a.keys.is_some() => NodeKey::Keys(*i),
                    "storage" if a.storage.is_some() => self.storage_root(*i),
                    _ => return Err(FsError::NotFound),
                }
            }
            NodeKey::Containers(_) => {
                let entries = self.listing(parent).await?;
                return entries.find(name);
            }
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => {
                if let Some(entries) = self.fresh_listing(parent) {
                    return entries.find(name);
                }
                if self.worth_relisting(parent) {
                    return self.listing(parent).await?.find(name);
                }
                if !listing::valid_name(name) {
                    return Err(FsError::NotFound);
                }
                return self.probe(parent, *acct, container, prefix, name).await;
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
        let store = &self.storage(acct)?.store;
        let full = format!("{prefix}{name}");
        let dir_prefix = format!("{full}/");
        let (head, list) = tokio::join!(
            store.head(container, &full),
            store.list(container, &dir_prefix, Some("/"), None, Some(1))
        );
        let list = list?;
        let dir_key = NodeKey::Dir {
            acct,
            container: container.to_string(),
            prefix: dir_prefix,
        };
        if !list.blobs.is_empty() || !list.prefixes.is_empty() {
            return Ok(self.node(dir_key, parent, None));
        }
        let props = head?;
        if props.is_folder_marker() {
            let kind = EntryKind::Dir {
                mtime: Some(props.last_modified),
            };
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
        let (key, meta, dir_mtime) = {
            let t = lock(&self.inodes);
            let n = t.get(ino).ok_or(FsError::NotFound)?;
            (n.key.clone(), n.meta.clone(), n.dir_mtime)
        };
        if let NodeKey::File {
            acct,
            container,
            name,
        } = &key
            && meta
                .as_ref()
                .is_none_or(|m| m.fetched.elapsed() >= self.opts.attr_ttl)
        {
            let props = self.storage(*acct)?.store.head(container, name).await?;
            let meta = self.remember(ino, &props);
            return Ok(self.attr_from(ino, &key, Some(&meta), None));
        }
        Ok(self.attr_from(ino, &key, meta.as_ref(), dir_mtime))
    }

    fn remember(&self, ino: u64, props: &BlobProps) -> Meta {
        let meta = meta_of(props);
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            n.meta = Some(meta.clone());
        }
        meta
    }

    fn fresh_listing(&self, ino: u64) -> Option<Arc<Listing>> {
        let l = lock(&self.listings);
        l.get(&ino)
            .filter(|(at, _)| at.elapsed() < self.opts.dir_ttl)
            .map(|(_, e)| e.clone())
    }

    /// Whether a lookup in `ino` should refresh its listing rather than probe the one name:
    /// the directory was listed moments ago (someone is walking it: `ls -l`, `find`, `rsync`)
    /// and is small enough that listing it again costs no more than a few probes.
    fn worth_relisting(&self, ino: u64) -> bool {
        let window = (self.opts.dir_ttl * 10).max(RELIST_WINDOW);
        lock(&self.listings)
            .get(&ino)
            .is_some_and(|(at, l)| at.elapsed() < window && l.entries.len() <= RELIST_MAX_ENTRIES)
    }

    /// One listing at a time per directory: concurrent lookups and `ls` share it.
    fn list_gate(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.list_gates).entry(ino).or_default().clone()
    }

    /// The entries of directory `ino`, from a fresh cached listing or from storage.
    pub async fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
        if let Some(e) = self.fresh_listing(ino) {
            return Ok(e);
        }
        // Only storage listings cost a request; the root and account directories are built
        // from memory and need no gate.
        if !matches!(
            self.key_of(ino)?,
            NodeKey::Containers(_) | NodeKey::Dir { .. }
        ) {
            return self.listing_locked(ino).await;
        }
        let gate = self.list_gate(ino);
        let _listing = gate.lock().await;
        self.listing_locked(ino).await
    }

    async fn listing_locked(&self, ino: u64) -> Result<Arc<Listing>> {
        let key = self.key_of(ino)?;
        let entries = match &key {
            NodeKey::Root => (0..self.accounts.len())
                .map(|i| self.entry(&self.accounts[i].name, NodeKey::Account(i), ino, None))
                .collect(),
            NodeKey::Account(i) => {
                let a = &self.accounts[*i];
                let mut v = vec![self.entry("account.json", NodeKey::AccountJson(*i), ino, None)];
                if a.keys.is_some() {
                    v.push(self.entry("keys", NodeKey::Keys(*i), ino, None));
                }
                if a.storage.is_some() {
                    v.push(self.entry("storage", self.storage_root(*i), ino, None));
                }
                v
            }
            NodeKey::Containers(acct) => {
                if let Some(e) = self.fresh_listing(ino) {
                    return Ok(e);
                }
                let containers = self.storage(*acct)?.store.list_containers().await?;
                let v = containers
                    .into_iter()
                    .map(|c| {
                        let kind = EntryKind::Dir {
                            mtime: Some(c.last_modified),
                        };
                        let key = NodeKey::Dir {
                            acct: *acct,
                            container: c.name.clone(),
                            prefix: String::new(),
                        };
                        self.entry(&c.name, key, ino, Some(&kind))
                    })
                    .collect();
                return Ok(self.cache_listing(ino, v));
            }
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } => {
                if let Some(e) = self.fresh_listing(ino) {
                    return Ok(e);
                }
                let store = &self.storage(*acct)?.store;
                let page = blob::list_all(store.as_ref(), container, prefix, Some("/")).await?;
                let v = listing::entries(prefix, page)
                    .into_iter()
                    .map(|(name, kind)| {
                        let key = match &kind {
                            EntryKind::Dir { .. } => NodeKey::Dir {
                                acct: *acct,
                                container: container.clone(),
                                prefix: format!("{prefix}{name}/"),
                            },
                            EntryKind::File(_) => NodeKey::File {
                                acct: *acct,
                                container: container.clone(),
                                name: format!("{prefix}{name}"),
                            },
                        };
                        self.entry(&name, key, ino, Some(&kind))
                    })
                    .collect();
                return Ok(self.cache_listing(ino, v));
            }
            NodeKey::AccountJson(_) | NodeKey::Keys(_) | NodeKey::File { .. } | NodeKey::Stats => {
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

    fn cache_listing(&self, ino: u64, entries: Vec<Entry>) -> Arc<Listing> {
        let entries = Arc::new(Listing::new(entries));
        let mut listings = lock(&self.listings);
        listings.insert(ino, (Instant::now(), entries.clone()));
        // A walk over a large tree must not keep every listing it saw: each time the map
        // grows past another 256 directories, drop the listings too old to be used again.
        if listings.len().is_multiple_of(256) {
            let keep = (self.opts.dir_ttl * 10).max(RELIST_WINDOW);
            listings.retain(|_, (at, _)| at.elapsed() < keep);
        }
        entries
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

    pub async fn open(&self, ino: u64, write: bool) -> Result<Opened> {
        let key = self.key_of(ino)?;
        let mut keep_cache = true;
        let mut direct_io = false;
        let handle = match key {
            NodeKey::Stats if !write => {
                direct_io = true;
                Handle::Static(self.stats.to_json().into_bytes().into())
            }
            NodeKey::AccountJson(a) if !write => Handle::Static(self.accounts[a].json.clone()),
            NodeKey::Keys(a) if !write => match &self.accounts[a].keys {
                Some(k) => Handle::Static(k.clone()),
                None => return Err(FsError::NotFound),
            },
            NodeKey::File { .. } | NodeKey::AccountJson(_) | NodeKey::Keys(_) | NodeKey::Stats
                if write =>
            {
                return Err(FsError::ReadOnly);
            }
            NodeKey::File {
                acct,
                container,
                name,
            } => {
                // Close-to-open: always ask storage, and pin what it says for every read.
                let store = self.storage(acct)?.store.clone();
                let props = store.head(&container, &name).await?;
                self.remember(ino, &props);
                keep_cache = self.opened_version(ino, &props.etag);
                Handle::Blob {
                    blob: BlobRef::new(store, acct, container, name, props.etag, props.size),
                    readahead: Mutex::new(Readahead::default()),
                }
            }
            _ => return Err(FsError::IsDir),
        };
        let fh = self.new_fh();
        lock(&self.handles).insert(fh, Arc::new(handle));
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
        })
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

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let handle = lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        match handle.as_ref() {
            Handle::Static(data) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(Bytes::copy_from_slice(&data[start..end]))
            }
            Handle::Blob { blob, readahead } => Ok(self
                .cache
                .read(blob, readahead, offset, size as u64)
                .await?),
        }
    }

    pub fn release(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }
}

fn meta_of(p: &BlobProps) -> Meta {
    Meta {
        size: p.size,
        mtime: p.last_modified,
        fetched: Instant::now(),
    }
}

#[cfg(test)]
mod tests;
