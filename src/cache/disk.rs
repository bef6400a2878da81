//! The disk tier (`--disk-cache DIR`): pages of blobs kept on a local disk, below the RAM
//! page cache and above storage, shared by every file of the mount and kept across mounts.
//!
//! # Layout
//!
//! One pair of files per blob version, named by a hash of (storage origin, container, name,
//! ETag): `<id>.data` holds the blob's pages at their own offsets (a sparse file, so a blob
//! held whole is a plain copy of it, which the kernel can serve by passthrough), and
//! `<id>.idx`, an append-only log: a header naming the blob version, then a 24-byte record
//! per page written (its index and a 64-bit hash of its bytes), per segment dropped, and one
//! when the blob is held whole and synced. `lock` is flocked by the one mount that uses DIR,
//! and `BATCHFS-CACHE` marks DIR as made by batchfs.
//!
//! # Why it can be trusted after a crash
//!
//! A page's record is appended after its bytes are written, without fsync: after a `kill -9`
//! both are in the kernel's page cache; after a power cut a record may outlive its bytes. So
//! every page read from the tier is hashed and compared with its record, and a page that does
//! not match is dropped and fetched again. A blob is marked whole only after its data file is
//! fsynced, and the mark is fsynced too; the first segment dropped from a whole blob is
//! recorded and fsynced before its hole is punched. Only blobs marked whole are read by
//! passthrough, where the kernel reads the file without us.
//!
//! # Bounds
//!
//! Space is counted per page, rounded up to 4 KiB as `du` counts it, and given back per 1 MiB
//! segment, least recently used first, by punching holes; a blob that an open file reads by
//! passthrough keeps its segments. RAM: 8 bytes per page held (256 KiB per GiB). ENOSPC lowers
//! the limit to what the tier holds; any other I/O error turns the tier off for the rest of
//! the mount, and reads go on from RAM and storage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{error, warn};

use super::PAGE;
use crate::stats::Stats;

/// Pages per eviction unit: 1 MiB.
const SEG_PAGES: u64 = 32;
/// A blob more than this many times the tier's size is not kept (its hashes alone would cost
/// 8 bytes per 32 KiB of it).
const MAX_BLOB_TIMES: u64 = 16;
const MAGIC: &[u8] = b"BATCHFS-IDX-1\n";
const MARKER: &str = "BATCHFS-CACHE";
const MARKER_TEXT: &str = "batchfs disk cache, format 1: anything else here is removed\n";
const LOCK: &str = "lock";
const REC: usize = 24;
/// Bytes fetched from storage (or in flight) that may wait for the disk at once: a fetch
/// waits for room before it is sent, so the network never outruns the disk by more.
const QUEUE_KIB: u32 = 64 * 1024;

const REC_PAGE: u32 = 1;
const REC_DROP: u32 = 2;
const REC_WHOLE: u32 = 3;

/// One version of one blob, as the tier names it.
#[derive(Debug)]
pub struct DiskKey {
    id: Arc<str>,
    identity: String,
    pub size: u64,
}

impl DiskKey {
    pub fn new(origin: &str, container: &str, name: &str, etag: &str, size: u64) -> Self {
        let identity = format!("{origin}\n{container}\n{name}\n{etag}\n{size}");
        DiskKey {
            id: id_of(&identity).into(),
            identity,
            size,
        }
    }

    fn pages(&self) -> u64 {
        self.size.div_ceil(PAGE)
    }
}

fn id_of(identity: &str) -> String {
    let digest = Sha256::digest(identity.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(data: &[u8]) -> u64 {
    // 0 means "absent" in `Entry::sums`.
    xxhash_rust::xxh3::xxh3_64(data) | 1
}

/// Bytes a page of `len` takes on disk, as `du` counts them.
fn cost(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

fn page_len(size: u64, p: u64) -> u64 {
    (size - p * PAGE).min(PAGE)
}

struct Entry {
    size: u64,
    data: Arc<File>,
    idx: File,
    /// Hash of each page held; 0 where the page is absent.
    sums: Vec<u64>,
    present: u64,
    /// Held whole and synced.
    whole: bool,
    /// Every page's bytes were checked against its hash during this mount (or written by
    /// it): only then is the file fit for passthrough, where nothing checks them.
    checked: bool,
    checking: bool,
    /// Opens reading this blob by passthrough: its segments are not evicted.
    pins: u32,
    /// Handed to the kernel for passthrough during this mount: never punched, only
    /// forgotten whole (see `DiskTier::drop_segment`).
    passed: bool,
}

impl Entry {
    fn is_present(&self, p: u64) -> bool {
        self.sums.get(p as usize).is_some_and(|&s| s != 0)
    }
}

struct Inner {
    blobs: HashMap<Arc<str>, Entry>,
    lru: LruCache<(Arc<str>, u64), ()>,
    used: u64,
    limit: u64,
    off: bool,
}

pub struct DiskTier {
    dir: PathBuf,
    inner: Mutex<Inner>,
    queue: Arc<Semaphore>,
    stats: Arc<Stats>,
    _lock: File,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskTier({})", self.dir.display())
    }
}

/// Why a disk cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk cache {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("disk cache {0} is in use by another batchfs mount")]
    InUse(PathBuf),
    #[error(
        "disk cache {0} holds files batchfs did not write ({1}); give an empty directory or one batchfs made"
    )]
    Foreign(PathBuf, String),
}

fn record(kind: u32, arg: u64, sum: u64) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..4].copy_from_slice(&kind.to_le_bytes());
    r[4..12].copy_from_slice(&arg.to_le_bytes());
    r[12..20].copy_from_slice(&sum.to_le_bytes());
    let check = xxhash_rust::xxh3::xxh3_64(&r[..20]) as u32;
    r[20..].copy_from_slice(&check.to_le_bytes());
    r
}

fn parse_record(r: &[u8]) -> Option<(u32, u64, u64)> {
    let word = |a: usize, b: usize| r[a..b].iter().rev().fold(0u64, |n, &x| n << 8 | x as u64);
    let check = xxhash_rust::xxh3::xxh3_64(&r[..20]) as u32;
    (word(20, 24) as u32 == check).then(|| (word(0, 4) as u32, word(4, 12), word(12, 20)))
}

fn header(identity: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    h.extend_from_slice(identity.as_bytes());
    h.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(identity.as_bytes()).to_le_bytes());
    h
}

/// The identity a header names and the header's length, if `buf` starts with a sound one.
fn parse_header(buf: &[u8]) -> Option<(String, usize)> {
    let rest = buf.strip_prefix(MAGIC)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let ident = rest.get(4..4 + len)?;
    let sum = u64::from_le_bytes(rest.get(4 + len..12 + len)?.try_into().ok()?);
    if xxhash_rust::xxh3::xxh3_64(ident) != sum {
        return None;
    }
    Some((
        String::from_utf8(ident.to_vec()).ok()?,
        MAGIC.len() + 12 + len,
    ))
}

impl DiskTier {
    /// Takes `dir` for this mount: locks it, removes what batchfs did not write there (if
    /// batchfs made it), and loads the index of every blob it holds.
    pub fn open(dir: &Path, limit: u64, stats: Arc<Stats>) -> Result<Arc<Self>, DiskError> {
        let io = |e| DiskError::Io(dir.to_path_buf(), e);
        // Blob data is the mounting user's alone, as the mount itself is.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let ours = dir.join(MARKER).exists();
        if !ours {
            let foreign: Vec<String> = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LOCK)
                .collect();
            if !foreign.is_empty() {
                let mut names = foreign[..foreign.len().min(3)].join(", ");
                if foreign.len() > 3 {
                    names += ", ...";
                }
                return Err(DiskError::Foreign(dir.to_path_buf(), names));
            }
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(io)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DiskError::InUse(dir.to_path_buf()));
        }
        if !ours {
            std::fs::write(dir.join(MARKER), MARKER_TEXT).map_err(io)?;
        }
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                blobs: HashMap::new(),
                lru: LruCache::unbounded(),
                used: 0,
                limit,
                off: false,
            }),
            queue: Arc::new(Semaphore::new(QUEUE_KIB as usize)),
            stats,
            _lock: lock,
        };
        tier.load_all().map_err(io)?;
        Ok(Arc::new(tier))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    /// Loads every index, oldest first (so the LRU evicts the oldest blobs first), and
    /// removes whatever is not a sound pair of index and data file.
    fn load_all(&self) -> std::io::Result<()> {
        let mut idx = Vec::new();
        let mut strays = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            match name.rsplit_once('.') {
                _ if name == MARKER || name == LOCK => {}
                Some((id, "idx")) if is_id(id) => {
                    let mtime = e.metadata().and_then(|m| m.modified()).ok();
                    idx.push((mtime, id.to_string()));
                }
                Some((id, "data")) if is_id(id) && self.path(id, "idx").exists() => {}
                _ => strays.push(e.path()),
            }
        }
        if !strays.is_empty() {
            warn!(
                "disk cache {}: removing {} entries batchfs did not write (e.g. {})",
                self.dir.display(),
                strays.len(),
                strays[0].display()
            );
            for p in &strays {
                let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
            }
        }
        idx.sort();
        let mut dropped = 0;
        for (_, id) in idx {
            if let Err(why) = self.load_one(&id) {
                dropped += 1;
                warn!("disk cache {}: dropping {id}: {why}", self.dir.display());
                let _ = std::fs::remove_file(self.path(&id, "idx"));
                let _ = std::fs::remove_file(self.path(&id, "data"));
            }
        }
        let mut inner = self.lock();
        self.make_room(&mut inner, 0);
        self.gauge(&inner);
        tracing::info!(
            "disk cache {}: {} blobs, {} MiB of {} MiB{}",
            self.dir.display(),
            inner.blobs.len(),
            inner.used >> 20,
            inner.limit >> 20,
            if dropped > 0 {
                format!(", {dropped} unsound indexes dropped")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    fn load_one(&self, id: &str) -> Result<(), String> {
        let buf = std::fs::read(self.path(id, "idx")).map_err(|e| e.to_string())?;
        let (identity, start) = parse_header(&buf).ok_or("not an index batchfs wrote")?;
        if id_of(&identity) != id {
            return Err("its name does not match its header".into());
        }
        let size: u64 = identity
            .rsplit('\n')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("no size in its header")?;
        if size > MAX_BLOB_TIMES * self.lock().limit {
            return Err("the blob is too large for a tier of this size".into());
        }
        let pages = size.div_ceil(PAGE);
        let mut sums = vec![0u64; pages as usize];
        let mut whole = false;
        let mut records = 0;
        for r in buf[start..].chunks_exact(REC) {
            // A torn or garbled tail ends the log: what follows cannot be trusted.
            let Some((kind, arg, sum)) = parse_record(r) else {
                break;
            };
            records += 1;
            match kind {
                REC_PAGE if arg < pages => sums[arg as usize] = sum,
                REC_DROP => {
                    let (a, b) = seg_pages(arg, pages);
                    sums[a as usize..b as usize].fill(0);
                    whole = false;
                }
                REC_WHOLE => whole = sums.iter().all(|&s| s != 0),
                _ => return Err(format!("unknown record {kind}")),
            }
        }
        let present = sums.iter().filter(|&&s| s != 0).count() as u64;
        if present == 0 {
            return Err("holds no page".into());
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id, "data"))
            .map_err(|e| format!("data file: {e}"))?;
        // Rewrite the log with only what holds now, so it does not grow across mounts.
        let mut log = header(&identity);
        for (p, &s) in sums.iter().enumerate() {
            if s != 0 {
                log.extend_from_slice(&record(REC_PAGE, p as u64, s));
            }
        }
        if whole {
            log.extend_from_slice(&record(REC_WHOLE, 0, 0));
        }
        // A log with dropped segments, or with a torn tail (new records would land after
        // the tear, where the next mount cannot read them), is rewritten.
        let torn = buf.len() != start + records * REC;
        if torn || records != present as usize + whole as usize {
            let tmp = self.path(id, "idx.new");
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| e.to_string())?;
            f.write_all(&log)
                .and_then(|_| f.sync_all())
                .and_then(|_| std::fs::rename(&tmp, self.path(id, "idx")))
                .map_err(|e| e.to_string())?;
        }
        let idx = OpenOptions::new()
            .append(true)
            .open(self.path(id, "idx"))
            .map_err(|e| e.to_string())?;
        let id: Arc<str> = id.into();
        let mut inner = self.lock();
        for (p, &s) in sums.iter().enumerate() {
            if s != 0 {
                inner.used += cost(page_len(size, p as u64));
                inner.lru.put((id.clone(), p as u64 / SEG_PAGES), ());
            }
        }
        inner.blobs.insert(
            id,
            Entry {
                size,
                data: Arc::new(data),
                idx,
                sums,
                present,
                whole,
                checked: false,
                checking: false,
                pins: 0,
                passed: false,
            },
        );
        Ok(())
    }

    fn gauge(&self, inner: &Inner) {
        self.stats.disk_bytes.store(inner.used, Ordering::Relaxed);
    }

    /// Whether page `p` of `key` is held (its bytes are still checked when read).
    pub fn has(&self, key: &DiskKey, p: u64) -> bool {
        let inner = self.lock();
        !inner.off && inner.blobs.get(&key.id).is_some_and(|e| e.is_present(p))
    }

    /// Which of pages `[from, to)` of `key` are held, under one lock.
    pub fn held(&self, key: &DiskKey, from: u64, to: u64) -> Vec<bool> {
        let inner = self.lock();
        let entry = inner.blobs.get(&key.id).filter(|_| !inner.off);
        (from..to)
            .map(|p| entry.is_some_and(|e| e.is_present(p)))
            .collect()
    }

    /// Whether the whole blob is held (and fit for passthrough).
    pub fn is_whole(&self, key: &DiskKey) -> bool {
        self.lock().blobs.get(&key.id).is_some_and(|e| e.whole)
    }

    /// Runs of pages in `[from, to)` the tier lacks, for a whole-blob fill.
    pub fn missing(&self, key: &DiskKey, from: u64, to: u64) -> Vec<(u64, u64)> {
        let inner = self.lock();
        let entry = inner.blobs.get(&key.id);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for p in from..to.min(key.pages()) {
            if entry.is_some_and(|e| e.is_present(p)) {
                continue;
            }
            match out.last_mut() {
                Some(run) if run.1 == p => run.1 += 1,
                _ => out.push((p, p + 1)),
            }
        }
        out
    }

    /// Whether the tier has room for a blob of `size` at all, beside what open files hold
    /// pinned for passthrough.
    pub fn fits(&self, size: u64) -> bool {
        let inner = self.lock();
        let pinned: u64 = inner
            .blobs
            .values()
            .filter(|e| e.pins > 0)
            .map(|e| e.present * PAGE)
            .sum();
        !inner.off && cost(size) <= inner.limit.saturating_sub(pinned)
    }

    /// Pages `[first, last)` of `key`, if all are held and their bytes match their hashes.
    /// Blocking. A page that does not match is dropped.
    pub fn read(&self, key: &DiskKey, first: u64, last: u64) -> Option<Bytes> {
        let data = self.load(key, first, last)?;
        Stats::add(&self.stats.disk_hits, last - first);
        Stats::add(&self.stats.disk_read_bytes, data.len() as u64);
        Some(Bytes::from(data))
    }

    fn load(&self, key: &DiskKey, first: u64, last: u64) -> Option<Vec<u8>> {
        let (file, sums) = {
            let mut inner = self.lock();
            if inner.off {
                return None;
            }
            let e = inner.blobs.get(&key.id)?;
            if !(first..last).all(|p| e.is_present(p)) {
                return None;
            }
            let sums: Vec<u64> = e.sums[first as usize..last as usize].to_vec();
            let file = e.data.clone();
            for s in first / SEG_PAGES..=(last - 1) / SEG_PAGES {
                inner.lru.get(&(key.id.clone(), s));
            }
            (file, sums)
        };
        let start = first * PAGE;
        let len = (last * PAGE).min(key.size) - start;
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, start) {
            self.failed(&e, "read");
            return None;
        }
        for (i, chunk) in buf.chunks(PAGE as usize).enumerate() {
            if hash(chunk) != sums[i] {
                let p = first + i as u64;
                warn!(
                    "disk cache {}: page {p} of {} does not match its hash: dropped",
                    self.dir.display(),
                    key.id
                );
                Stats::add(&self.stats.disk_corrupt, 1);
                let mut inner = self.lock();
                self.drop_segment(&mut inner, &key.id, p / SEG_PAGES);
                self.gauge(&inner);
                return None;
            }
        }
        Some(buf)
    }

    /// Whether nothing waits to be written (for tests that wait for the tier).
    #[cfg(test)]
    pub fn queue_idle(&self) -> bool {
        self.queue.available_permits() == QUEUE_KIB as usize
    }

    /// Room for `len` bytes in the queue to the disk, waited for before a fetch that will be
    /// kept is sent; `None` once the tier is off.
    pub async fn admit(&self, len: u64) -> Option<OwnedSemaphorePermit> {
        if self.lock().off {
            return None;
        }
        let kib = len.div_ceil(1024).min(QUEUE_KIB as u64) as u32;
        self.queue.clone().acquire_many_owned(kib).await.ok()
    }

    /// Hands `data` (pages from `first` of `key`, fetched from storage) to a blocking thread
    /// to keep; `permit` is its room in the queue, given back once written.
    pub fn keep(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        key: Arc<DiskKey>,
        first: u64,
        data: Bytes,
    ) {
        let tier = self.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tier.write(&key, first, &data);
            drop(permit);
        });
    }

    /// Keeps the pages in `data`, which start at page `first` of `key` (whole pages, and a
    /// last partial one only at the blob's end). Blocking. False if they were not kept (no
    /// room, the tier off, an I/O error).
    pub fn write(&self, key: &DiskKey, first: u64, data: &[u8]) -> bool {
        let n = (data.len() as u64).div_ceil(PAGE);
        if n == 0 || first + n > key.pages() {
            return false;
        }
        let sums: Vec<u64> = data.chunks(PAGE as usize).map(hash).collect();
        // Claim room for the pages not held yet; only those are written, so a hole punched
        // meanwhile for an evicted page is never filled again unaccounted.
        let (file, fresh, claimed) = {
            let mut inner = self.lock();
            // The hashes of a blob take 8 bytes per page of all of it: a blob far larger
            // than the tier would cost RAM for pages the tier can never hold.
            if inner.off || key.size > MAX_BLOB_TIMES * inner.limit {
                return false;
            }
            if !inner.blobs.contains_key(&key.id)
                && let Err(e) = self.create(&mut inner, key)
            {
                drop(inner);
                self.failed(&e, "create");
                return false;
            }
            let Some(e) = inner.blobs.get(&key.id) else {
                return false;
            };
            let fresh: Vec<u64> = (first..first + n).filter(|&p| !e.is_present(p)).collect();
            let claimed: u64 = fresh.iter().map(|&p| cost(page_len(key.size, p))).sum();
            let file = e.data.clone();
            if fresh.is_empty() {
                return true;
            }
            if !self.make_room(&mut inner, claimed) {
                Stats::add(&self.stats.disk_skipped, 1);
                // A blob created for these pages and holding none is not kept either.
                if inner
                    .blobs
                    .get(&key.id)
                    .is_some_and(|e| e.present == 0 && e.pins == 0)
                {
                    inner.blobs.remove(&key.id);
                    let _ = std::fs::remove_file(self.path(&key.id, "idx"));
                    let _ = std::fs::remove_file(self.path(&key.id, "data"));
                }
                return false;
            }
            inner.used += claimed;
            (file, fresh, claimed)
        };
        let mut written = 0;
        for run in super::runs_of(&fresh, u64::MAX) {
            let from = ((run.0 - first) * PAGE) as usize;
            let to = (((run.1 - first) * PAGE) as usize).min(data.len());
            if let Err(e) = file.write_all_at(&data[from..to], run.0 * PAGE) {
                let mut inner = self.lock();
                inner.used = inner.used.saturating_sub(claimed);
                self.gauge(&inner);
                drop(inner);
                self.failed(&e, "write");
                return false;
            }
            written += (to - from) as u64;
        }
        let mut inner = self.lock();
        let mut log = Vec::with_capacity(fresh.len() * REC);
        let mut unused = 0;
        let whole_now = match inner.blobs.get_mut(&key.id) {
            // Dropped meanwhile (evicted whole, or a bad page): the bytes went to a file that
            // is gone.
            Some(e) if Arc::ptr_eq(&e.data, &file) => {
                let mut added = Vec::with_capacity(fresh.len());
                for &p in &fresh {
                    let s = sums[(p - first) as usize];
                    if e.is_present(p) {
                        unused += cost(page_len(key.size, p));
                    } else {
                        added.push((p, s));
                        log.extend_from_slice(&record(REC_PAGE, p, s));
                    }
                }
                // The records first: a page is held only once its record is written (a
                // failed append leaves the pages unheld, and uncounted with them).
                if let Err(err) = e.idx.write_all(&log) {
                    inner.used = inner.used.saturating_sub(claimed);
                    self.gauge(&inner);
                    drop(inner);
                    self.failed(&err, "index");
                    return false;
                }
                for (p, s) in added {
                    e.sums[p as usize] = s;
                    e.present += 1;
                }
                e.present == key.pages() && !e.whole
            }
            _ => {
                inner.used = inner.used.saturating_sub(claimed);
                self.gauge(&inner);
                return false;
            }
        };
        inner.used = inner.used.saturating_sub(unused);
        for s in first / SEG_PAGES..=(first + n - 1) / SEG_PAGES {
            inner.lru.put((key.id.clone(), s), ());
        }
        self.gauge(&inner);
        drop(inner);
        Stats::add(&self.stats.disk_written_bytes, written);
        if whole_now {
            self.seal(key, &file);
        }
        true
    }

    /// Marks a blob held whole once its bytes are on disk for good.
    fn seal(&self, key: &DiskKey, file: &File) {
        if let Err(e) = file.sync_all() {
            self.failed(&e, "sync");
            return;
        }
        let mut inner = self.lock();
        let Some(e) = inner.blobs.get_mut(&key.id) else {
            return;
        };
        if !std::ptr::eq(&*e.data, file) || e.present != key.pages() || e.whole {
            return;
        }
        let res = e
            .idx
            .write_all(&record(REC_WHOLE, 0, 0))
            .and_then(|_| e.idx.sync_all());
        match res {
            Ok(()) => {
                e.whole = true;
                Stats::add(&self.stats.disk_whole, 1);
            }
            Err(err) => {
                drop(inner);
                self.failed(&err, "index");
            }
        }
    }

    fn create(&self, inner: &mut Inner, key: &DiskKey) -> std::io::Result<()> {
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.path(&key.id, "data"))?;
        data.set_len(key.size)?;
        let mut idx = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(self.path(&key.id, "idx"))?;
        idx.write_all(&header(&key.identity))?;
        let idx = OpenOptions::new()
            .append(true)
            .open(self.path(&key.id, "idx"))?;
        inner.blobs.insert(
            key.id.clone(),
            Entry {
                size: key.size,
                data: Arc::new(data),
                idx,
                sums: vec![0; key.pages() as usize],
                present: 0,
                whole: false,
                checked: true,
                checking: false,
                pins: 0,
                passed: false,
            },
        );
        Ok(())
    }

    /// Evicts least recently used segments until `more` bytes fit; false if they cannot.
    fn make_room(&self, inner: &mut Inner, more: u64) -> bool {
        let mut pinned = Vec::new();
        while inner.used + more > inner.limit {
            let Some(((id, seg), ())) = inner.lru.pop_lru() else {
                break;
            };
            if inner.blobs.get(&id).is_some_and(|e| e.pins > 0) {
                pinned.push((id, seg));
                continue;
            }
            self.drop_segment(inner, &id, seg);
            Stats::add(&self.stats.disk_evictions, 1);
        }
        for k in pinned {
            inner.lru.put(k, ());
        }
        self.gauge(inner);
        inner.used + more <= inner.limit
    }

    /// Forgets segment `seg` of blob `id` and gives its space back.
    fn drop_segment(&self, inner: &mut Inner, id: &Arc<str>, seg: u64) {
        let Some(e) = inner.blobs.get_mut(id) else {
            return;
        };
        // The kernel may still read this file through a mapping made by passthrough, after
        // the open that made it was released: its bytes must never turn into holes. It
        // goes whole, unlinked; the mapping keeps the inode until it is unmapped.
        if e.passed {
            self.forget(inner, id);
            return;
        }
        let pages = e.size.div_ceil(PAGE);
        let (a, b) = seg_pages(seg, pages);
        let held: Vec<u64> = (a..b).filter(|&p| e.is_present(p)).collect();
        // Recorded (and, for a blob marked whole, synced) before the hole is punched: a
        // crash must never leave a whole mark over a hole. If that fails, the segment stays.
        let mut res = e.idx.write_all(&record(REC_DROP, seg, 0));
        if e.whole {
            res = res.and_then(|_| e.idx.sync_data());
            if let Err(err) = res {
                self.off(inner, &err, "evict");
                return;
            }
            e.whole = false;
        }
        let mut freed = 0;
        for run in super::runs_of(&held, u64::MAX) {
            let (off, end) = (run.0 * PAGE, (run.1 * PAGE).min(e.size));
            // Punched even when the record failed: the pages are forgotten either way, and
            // their blocks must not stay allocated uncounted.
            if let Err(err) = punch(&e.data, off, end - off) {
                res = Err(err);
            }
            for p in run.0..run.1 {
                e.sums[p as usize] = 0;
                freed += cost(page_len(e.size, p));
            }
        }
        e.present -= held.len() as u64;
        let empty = e.present == 0 && e.pins == 0;
        inner.used = inner.used.saturating_sub(freed);
        inner.lru.pop(&(id.clone(), seg));
        if empty {
            inner.blobs.remove(id);
            let _ = std::fs::remove_file(self.path(id, "idx"));
            let _ = std::fs::remove_file(self.path(id, "data"));
        }
        if let Err(err) = res {
            self.off(inner, &err, "evict");
        }
    }

    /// Forgets blob `id` whole: its files are unlinked, and its space counted free.
    fn forget(&self, inner: &mut Inner, id: &Arc<str>) {
        let Some(e) = inner.blobs.remove(id) else {
            return;
        };
        for seg in 0..e.size.div_ceil(PAGE).div_ceil(SEG_PAGES) {
            inner.lru.pop(&(id.clone(), seg));
        }
        let held: u64 = (0..e.sums.len() as u64)
            .filter(|&p| e.is_present(p))
            .map(|p| cost(page_len(e.size, p)))
            .sum();
        inner.used = inner.used.saturating_sub(held);
        let _ = std::fs::remove_file(self.path(id, "idx"));
        let _ = std::fs::remove_file(self.path(id, "data"));
    }

    /// The data file of a blob held whole and checked, pinned against eviction until
    /// [`DiskTier::unpin`]. A blob held whole since an earlier mount is checked first, on a
    /// blocking thread: until that is done, its reads go through the daemon (and are
    /// checked page by page).
    pub fn pin_whole(self: &Arc<Self>, key: &Arc<DiskKey>) -> Option<Arc<File>> {
        let mut inner = self.lock();
        if inner.off {
            return None;
        }
        let e = inner.blobs.get_mut(&key.id).filter(|e| e.whole)?;
        if !e.checked {
            if !e.checking {
                e.checking = true;
                let (tier, key) = (self.clone(), key.clone());
                std::thread::spawn(move || tier.check(&key));
            }
            return None;
        }
        e.pins += 1;
        e.passed = true;
        Some(e.data.clone())
    }

    /// Reads a blob held whole and compares every page with its hash; marks it checked, or
    /// drops what does not match.
    fn check(&self, key: &DiskKey) {
        let pages = key.pages();
        let mut bad = None;
        for seg in 0..pages.div_ceil(SEG_PAGES) {
            let (a, b) = seg_pages(seg, pages);
            // A page that does not match drops its segment.
            if self.load(key, a, b).is_none() {
                bad = Some(seg);
                break;
            }
        }
        let mut inner = self.lock();
        if let Some(e) = inner.blobs.get_mut(&key.id) {
            e.checking = false;
            e.checked = bad.is_none() && e.whole;
        }
    }

    pub fn unpin(&self, key: &DiskKey) {
        let mut inner = self.lock();
        if let Some(e) = inner.blobs.get_mut(&key.id) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// An I/O error on DIR: ENOSPC shrinks the tier to what it holds; anything else turns it
    /// off for the rest of the mount.
    fn failed(&self, err: &std::io::Error, what: &str) {
        let mut inner = self.lock();
        self.off(&mut inner, err, what);
    }

    fn off(&self, inner: &mut Inner, err: &std::io::Error, what: &str) {
        Stats::add(&self.stats.disk_errors, 1);
        if err.raw_os_error() == Some(libc::ENOSPC) {
            let limit = inner.used.saturating_sub(SEG_PAGES * PAGE);
            if limit < inner.limit {
                warn!(
                    "disk cache {}: the disk is full ({what}): keeping at most {} MiB from now on",
                    self.dir.display(),
                    limit >> 20
                );
                inner.limit = limit;
            }
            return;
        }
        if !inner.off {
            error!(
                "disk cache {}: {what} failed: {err}; the disk cache is off for this mount",
                self.dir.display()
            );
            inner.off = true;
        }
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn seg_pages(seg: u64, pages: u64) -> (u64, u64) {
    let a = (seg * SEG_PAGES).min(pages);
    (a, (a + SEG_PAGES).min(pages))
}

fn punch(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an fd we own, with plain integer arguments.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests;
