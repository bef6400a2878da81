//! The page cache and read engine.
//!
//! # Pages
//!
//! Blob data is cached in fixed-size pages of [`PAGE`] bytes, keyed by the blob's identity
//! *including its ETag* and the page index, so a page of an old version can never be served
//! for a new one. All open files share one LRU and one byte budget (`--cache-size`). Bytes of
//! fetches still in flight are reserved against the budget before the request goes out: when
//! the budget is full and nothing is left to evict, the fetch waits (backpressure) instead of
//! growing memory.
//!
//! # Fetching
//!
//! A reader that needs a page that is neither cached nor in flight fetches it, together with
//! the missing pages next to it, in one ranged GET of at most [`CHUNK`] bytes. A reader that
//! needs a page another fetch is already bringing waits for that fetch instead of sending a
//! second request. Fetches run as tasks of their own, so a reader that goes away (an
//! interrupted `read`) does not waste a request half done. The number of requests in flight
//! to storage is bounded (`--max-requests`) by one FIFO semaphore, which serves files in the
//! order they asked and so shares storage fairly between them.
//!
//! # Prefetch
//!
//! Each open file tracks where its next sequential read would start. The first read of a
//! handle, if it starts at offset 0, fetches at least [`FIRST_FETCH`] bytes (Linux readahead follows a 1 MiB read with a
//! further 128 KiB one; one round trip serves both, and all of any small file). Once two reads
//! in a row continue where the previous one ended (a single random read that lands nearby by
//! chance does not count), the prefetch window opens and then doubles with each sequential
//! read, from [`CHUNK`] up to [`MAX_WINDOW`] or the reader's share of a quarter of the budget
//! (split between the sequential readers that read in the last 2 s), and the window ahead
//! of the reader is kept in flight as parallel GETs. Their size is
//! what the storage account's link rewards ([`link`]: 2 to 32 MiB, measured), at most half
//! the window so that one is always in flight. A read elsewhere (a seek) drops the window
//! to nothing: random reads fetch only the pages they touch, so a 4 KiB read costs one page,
//! not megabytes.
//!
//! # The disk tier
//!
//! With `--disk-cache`, pages missing from RAM are looked for in [`disk::DiskTier`] before
//! storage, and pages fetched from storage are handed to it to keep, on a blocking thread;
//! a fetch waits for room in the tier's queue before it is sent, so the network never
//! outruns the disk by more than that queue. Only blobs whose store names a stable origin are kept
//! there: blob storage, not the Batch service's node files, which change in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::blob::{BlobError, BlobStore, Body};
use crate::stats::Stats;

pub mod disk;
mod fill;
pub mod link;

use disk::{DiskKey, DiskTier};
pub use fill::FillMode;

/// Cache granularity. Small enough that a random 4 KiB read fetches little.
pub const PAGE: u64 = 32 * 1024;
/// Largest single GET.
pub const CHUNK: u64 = 2 * 1024 * 1024;
/// Smallest fetch for the first read of an open file.
pub const FIRST_FETCH: u64 = 1024 * 1024 + 128 * 1024;
/// Upper bound on the prefetch window of one reader (and a quarter of the budget).
pub const MAX_WINDOW: u64 = 128 * 1024 * 1024;
/// A read this close to where the last one ended still counts as sequential: with several
/// FUSE threads the kernel's readahead requests can arrive slightly out of order.
const SEQ_SLACK: u64 = 2 * 1024 * 1024;
/// Size of the write buffers the cache keeps for reuse (the write path's block size).
pub const WRITE_BLOCK: usize = 4 << 20;
/// At most this many spare write buffers are kept (counted in the budget, and the first
/// thing given back when it is short): a writer's groups of up to eight blocks (see
/// `crate::write`) finish several at a time, and a buffer not kept is a fresh one to fault
/// in for the next block.
const MAX_SPARE: usize = 32;
/// A sequential reader that has not read for this long no longer takes a share of the
/// prefetch budget.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest read from the disk tier done in the reader's own task (see `Cache::disk_now`).
const INLINE_DISK: u64 = 128 * 1024;
/// The largest piece of a streamed GET handed to readers at once.
const PIECE: u64 = 4 * 1024 * 1024;
/// A streamed GET no piece was asked of for this long is closed (and opened again if the
/// reader comes back): an idle connection holds the server's stream and its buffers.
const FEED_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// The smallest budget that leaves room for a few chunks in flight.
pub const MIN_BUDGET: u64 = 16 * 1024 * 1024;

type Outcome = Option<Result<Bytes, BlobError>>;
/// Where a fetch's bytes go in the disk tier, and the room it was given in its queue.
type Admitted = (
    (Arc<DiskTier>, Arc<DiskKey>),
    tokio::sync::OwnedSemaphorePermit,
);

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    blob: Arc<str>,
    page: u64,
}

struct Inner {
    lru: LruCache<Key, Page>,
    /// Write buffers of [`WRITE_BLOCK`] bytes kept for reuse, still counted in `used`: a
    /// fresh one costs a page fault per 4 KiB, which is most of a writer's CPU.
    spare: Vec<BytesMut>,
    /// Bytes held by cached pages plus bytes reserved by fetches in flight.
    used: u64,
    /// Pages some fetch is bringing: the first page index of that fetch and its outcome.
    inflight: HashMap<Key, (u64, watch::Receiver<Outcome>)>,
}

pub struct Cache {
    budget: u64,
    inner: Mutex<Inner>,
    space: Notify,
    requests: Arc<Semaphore>,
    stats: Arc<Stats>,
    disk: Option<Arc<DiskTier>>,
    fills: fill::Fills,
    links: link::Links,
    /// Sequential readers with an open window, and when each last read.
    streams: Mutex<HashMap<usize, std::time::Instant>>,
}

/// Where the bytes of cached files come from: a blob store, or the Batch service's files on
/// compute nodes (`container` names a files root there).
pub trait Source: Send + Sync + 'static {
    fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Bytes, BlobError>> + Send;

    /// A name for where the bytes come from that stays the same across mounts, if a blob's
    /// (container, name, ETag) there always means the same bytes: what the disk tier keys on.
    fn origin(&self) -> Option<String> {
        None
    }

    /// Whether [`Source::open_range`] reads its body as it is wanted. Sources that fetch it
    /// whole are given ranges, never the rest of a blob.
    fn streams(&self) -> bool {
        false
    }

    /// A GET of `len` bytes from `offset` read piece by piece (see `BlobStore::open_range`).
    fn open_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Body, BlobError>> + Send {
        async move {
            let data = self
                .get_range(container, name, offset, len, if_match)
                .await?;
            Ok(Body::whole(data))
        }
    }
}

impl<S: BlobStore> Source for S {
    fn origin(&self) -> Option<String> {
        BlobStore::origin(self)
    }

    fn streams(&self) -> bool {
        true
    }

    fn open_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Body, BlobError>> + Send {
        BlobStore::open_range(self, container, name, offset, len, if_match)
    }

    fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Bytes, BlobError>> + Send {
        BlobStore::get_range(self, container, name, offset, len, if_match)
    }
}

/// One version of one blob, as an open file sees it.
pub struct BlobRef<S> {
    pub store: Arc<S>,
    pub container: String,
    pub name: String,
    pub etag: String,
    pub size: u64,
    id: Arc<str>,
    /// The blob's name in the disk tier, where its store allows.
    disk: Option<Arc<DiskKey>>,
    /// Where its bytes come from, for the choice of range sizes ([`link`]).
    origin: Arc<str>,
}

impl<S: Source> BlobRef<S> {
    pub fn new(
        store: Arc<S>,
        acct: usize,
        container: String,
        name: String,
        etag: String,
        size: u64,
    ) -> Self {
        let id = format!("{acct}/{container}/{name}\0{etag}").into();
        let origin = store.origin();
        let disk = origin
            .as_ref()
            .map(|o| Arc::new(DiskKey::new(o, &container, &name, &etag, size)));
        let origin = origin.unwrap_or_default().into();
        BlobRef {
            store,
            container,
            name,
            etag,
            size,
            id,
            disk,
            origin,
        }
    }
}

/// Per-handle sequential-read state.
#[derive(Debug, Default)]
pub struct Readahead {
    /// Where the next sequential read would start; `None` before the first read.
    next: Option<u64>,
    /// Sequential reads in a row; one lucky random read near the last must not open a window.
    streak: u32,
    window: u64,
    /// Everything before this offset has been fetched or is in flight.
    ahead_to: u64,
    /// The GETs this reader's prefetch is reading piece by piece.
    feeds: Vec<Feed>,
}

/// One GET of pages `[next, end)` of a blob whose body a task reads piece by piece: each
/// piece sent here is the run of pages that starts at `next`.
#[derive(Debug)]
struct Feed {
    /// The version it reads: a handle being written to changes version at each commit,
    /// and the old one's body must not answer for the new one's pages.
    blob: Arc<str>,
    next: u64,
    end: u64,
    pieces: mpsc::UnboundedSender<(Run, watch::Sender<Outcome>)>,
}

/// A run of missing pages `[first, end)` to fetch in one GET.
type Run = (u64, u64);

/// What one read fetches.
struct Plan {
    /// How far a demand fetch should reach.
    fetch_end: u64,
    /// The range to prefetch.
    prefetch: Option<(u64, u64)>,
    /// The reader's window is open.
    streaming: bool,
    /// The read is not where the last one ended (or the first read is not at 0).
    seek: bool,
    /// The size of prefetch GETs.
    chunk: u64,
}

impl Cache {
    pub fn new(budget: u64, max_requests: usize, stats: Arc<Stats>) -> Self {
        Self::with_disk(budget, max_requests, stats, None, FillMode::Pages)
    }

    pub fn with_disk(
        budget: u64,
        max_requests: usize,
        stats: Arc<Stats>,
        disk: Option<Arc<DiskTier>>,
        fill: FillMode,
    ) -> Self {
        Cache {
            budget: budget.max(MIN_BUDGET),
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                spare: Vec::new(),
                used: 0,
                inflight: HashMap::new(),
            }),
            space: Notify::new(),
            requests: Arc::new(Semaphore::new(max_requests.max(1))),
            stats,
            disk,
            fills: fill::Fills::new(fill),
            links: link::Links::default(),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// The byte budget (`--cache-size`).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The link of uploads to the storage account at `origin`, measured apart from its
    /// reads: a link may reward large GETs and small parallel Put Blocks (a per-connection
    /// cap: 4 MiB x 16 uploads at 168 MiB/s where 32 MiB x 4 reach 54).
    pub fn upload_link(&self, origin: Option<String>) -> Arc<link::Link> {
        self.links
            .of(&format!("put {}", origin.unwrap_or_default()).into())
    }

    /// The tier and the blob's key in it, when both exist.
    fn tier_of<'a, S>(
        &'a self,
        blob: &'a BlobRef<S>,
    ) -> Option<(&'a Arc<DiskTier>, &'a Arc<DiskKey>)> {
        self.disk.as_ref().zip(blob.disk.as_ref())
    }

    /// The data file of `blob` if the disk tier holds it whole, pinned until
    /// [`Cache::unpin_whole`]: for an open served by kernel passthrough.
    pub fn pin_whole<S>(&self, blob: &BlobRef<S>) -> Option<Arc<std::fs::File>> {
        let (tier, key) = self.tier_of(blob)?;
        tier.pin_whole(key)
    }

    pub fn unpin_whole<S>(&self, blob: &BlobRef<S>) {
        if let Some((tier, key)) = self.tier_of(blob) {
            tier.unpin(key);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest prefetch window of one of `streams` sequential readers: together they
    /// keep at most a quarter of the budget ahead of themselves. (Each taking a quarter made
    /// four readers evict each other's prefetched pages before reading them: 82 MiB/s where
    /// one reader alone did 313.)
    fn max_window(&self, streams: u64) -> u64 {
        (self.budget / 4 / streams.max(1)).clamp(CHUNK, MAX_WINDOW)
    }

    /// Counts the sequential readers that read lately, `me` (its readahead state's address)
    /// among them.
    fn active_streams(&self, me: usize) -> u64 {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        streams.insert(me, now);
        streams.retain(|_, t| now.duration_since(*t) < STREAM_IDLE);
        streams.len() as u64
    }

    /// Reads `[offset, offset+len)` of `blob` (clamped to its size) through the cache.
    pub async fn read<S: Source>(
        self: &Arc<Self>,
        blob: &BlobRef<S>,
        ra: &Mutex<Readahead>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, BlobError> {
        let end = offset.saturating_add(len).min(blob.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let link = self.links.of(&blob.origin);
        let Plan {
            fetch_end,
            prefetch,
            streaming,
            seek,
            chunk,
        } = self.plan(ra, blob.size, offset, end, link.chunk());
        let first = offset / PAGE;
        let last = end.div_ceil(PAGE);
        let fetch_last = fetch_end.div_ceil(PAGE);

        // Claim what is missing (demand first, then prefetch), under one lock.
        let mut waits = Vec::with_capacity((last - first) as usize);
        let mut pages = Vec::with_capacity((last - first) as usize);
        let (demand_runs, prefetch_runs) = {
            let mut inner = self.lock();
            let mut missing = Vec::new();
            for p in first..last {
                let key = Key {
                    blob: blob.id.clone(),
                    page: p,
                };
                // A streaming reader leaves the pages it consumes where they are: promoting
                // them would make the LRU evict the prefetched pages it has not read yet.
                let hit = match streaming {
                    true => inner.lru.peek(&key).cloned(),
                    false => inner.promote(&key),
                };
                if let Some(b) = hit {
                    pages.push(Some(b));
                    Stats::add(&self.stats.cache_hits, 1);
                } else if let Some((start, rx)) = inner.inflight.get(&key) {
                    waits.push((p, *start, rx.clone()));
                    pages.push(None);
                } else {
                    missing.push(p);
                    pages.push(None);
                }
            }
            Stats::add(&self.stats.cache_misses, missing.len() as u64);
            // The first read of a handle also brings the pages up to `fetch_end`.
            let mut demand = runs(&missing);
            if let Some(run) = demand.last_mut()
                && run.1 == last
            {
                while run.1 < fetch_last
                    && run.1 - run.0 < CHUNK / PAGE
                    && !inner.has(&blob.id, run.1)
                {
                    run.1 += 1;
                }
            }
            let demand_rx: Vec<_> = self
                .by_source(blob, &demand)
                .into_iter()
                .map(|(run, disk)| (run, disk, self.claim(&mut inner, blob, run)))
                .collect();
            // Computed after the demand claims, so no page is claimed twice.
            let ahead: Vec<u64> = prefetch
                .map(|(a, b)| {
                    (a / PAGE..b.div_ceil(PAGE))
                        .filter(|&p| !inner.has(&blob.id, p))
                        .collect()
                })
                .unwrap_or_default();
            let mut prefetch_claims = Vec::new();
            for (run, disk) in self.by_source(blob, &runs_of(&ahead, u64::MAX)) {
                if !disk && blob.store.streams() {
                    self.feed(&mut inner, blob, ra, &link, run);
                    continue;
                }
                for run in split(run, chunk / PAGE) {
                    Stats::add(&self.stats.prefetched_pages, run.1 - run.0);
                    prefetch_claims.push((run, disk, self.claim(&mut inner, blob, run)));
                }
            }
            (demand_rx, prefetch_claims)
        };
        for (run, disk, tx) in demand_runs {
            let rx = tx.subscribe();
            let tx = match disk {
                true => self.disk_now(blob, run, tx),
                false => Some(tx),
            };
            if let Some(tx) = tx {
                self.spawn_fetch(blob, run, disk, None, tx);
            }
            for p in run.0..run.1.min(last) {
                if p >= first {
                    waits.push((p, run.0, rx.clone()));
                }
            }
        }
        for (run, disk, tx) in prefetch_runs {
            self.spawn_fetch(blob, run, disk, Some(link.clone()), tx);
        }
        // A sequential reader brings the blob itself; a fill serves readers that jump.
        if seek && let Some((tier, key)) = self.tier_of(blob) {
            self.fills.start(self, blob, tier, key);
        }
        for (p, start, mut rx) in waits {
            let outcome = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| BlobError::BadResponse("fetch abandoned".into()))?
                .clone();
            let data =
                outcome.unwrap_or_else(|| Err(BlobError::BadResponse("fetch abandoned".into())))?;
            pages[(p - first) as usize] = Some(Page::of(&data, start, p));
        }
        assemble(pages, offset, end, first)
    }

    /// Answers a read at once, without waiting, when it is a jump (a random reader: it opens
    /// no prefetch window) and every page it needs is in RAM or, in small runs, in the disk
    /// tier; `None`, with nothing changed, otherwise. Must run inside the runtime's context
    /// (a jump may start a whole-blob fill).
    pub fn read_ready<S: Source>(
        self: &Arc<Self>,
        blob: &BlobRef<S>,
        ra: &Mutex<Readahead>,
        offset: u64,
        len: u64,
    ) -> Option<Result<Bytes, BlobError>> {
        let end = offset.saturating_add(len).min(blob.size);
        if offset >= end {
            return None;
        }
        {
            let r = ra.lock().unwrap_or_else(|p| p.into_inner());
            let n = r.next?;
            if offset >= n.saturating_sub(SEQ_SLACK) && offset <= n + SEQ_SLACK {
                return None;
            }
        }
        let (first, last) = (offset / PAGE, end.div_ceil(PAGE));
        let mut pages: Vec<Option<Page>> = Vec::with_capacity((last - first) as usize);
        let mut from_disk = Vec::new();
        {
            let mut inner = self.lock();
            for p in first..last {
                let key = Key {
                    blob: blob.id.clone(),
                    page: p,
                };
                match inner.promote(&key) {
                    Some(page) => pages.push(Some(page)),
                    None => {
                        let (tier, dkey) = self.tier_of(blob)?;
                        if inner.inflight.contains_key(&key) || !tier.has(dkey, p) {
                            return None;
                        }
                        from_disk.push(p);
                        pages.push(None);
                    }
                }
            }
        }
        for run in runs_of(&from_disk, INLINE_DISK / PAGE) {
            // Claimed like any fetch, so a concurrent reader of these pages waits for this
            // one (on the sender kept here) instead of reading them twice.
            let claimed = {
                let mut inner = self.lock();
                if (run.0..run.1).any(|p| inner.has(&blob.id, p)) {
                    return None;
                }
                self.claim(&mut inner, blob, run)
            };
            if let Some(tx) = self.disk_now(blob, run, claimed) {
                // Not read now (no budget without waiting, or a page no longer matched): a
                // fetch task brings the run (from the tier if it still can), and the read
                // waits for it on the runtime like any other.
                self.spawn_fetch(blob, run, true, None, tx);
                return None;
            }
            let inner = self.lock();
            for p in run.0..run.1 {
                let key = Key {
                    blob: blob.id.clone(),
                    page: p,
                };
                pages[(p - first) as usize] = inner.lru.peek(&key).cloned();
            }
        }
        if pages.iter().any(Option::is_none) {
            return None;
        }
        Stats::add(
            &self.stats.cache_hits,
            (last - first) - from_disk.len() as u64,
        );
        // A jump: the plan opens no window and fetches nothing.
        let plan = self.plan(ra, blob.size, offset, end, CHUNK);
        if plan.seek
            && let Some((tier, key)) = self.tier_of(blob)
        {
            self.fills.start(self, blob, tier, key);
        }
        Some(assemble(pages, offset, end, first))
    }

    /// Updates the handle's readahead state and says what to fetch for this read; `chunk` is
    /// the range size the link rewards now.
    fn plan(&self, ra: &Mutex<Readahead>, size: u64, offset: u64, end: u64, chunk: u64) -> Plan {
        let mut r = ra.lock().unwrap_or_else(|p| p.into_inner());
        let fetch_end;
        let mut seek = true;
        match r.next {
            None if offset == 0 => {
                seek = false;
                fetch_end = FIRST_FETCH.max(end).min(size);
                r.window = 0;
                r.ahead_to = fetch_end;
            }
            None => {
                // A first read elsewhere is a seek right after open: random access.
                fetch_end = end;
                r.window = 0;
                r.ahead_to = fetch_end;
            }
            Some(n) if offset >= n.saturating_sub(SEQ_SLACK) && offset <= n + SEQ_SLACK => {
                seek = false;
                fetch_end = end;
                r.streak = r.streak.saturating_add(1);
                if r.streak >= 2 {
                    let cap = self.max_window(self.active_streams(ra as *const _ as usize));
                    r.window = if r.window == 0 {
                        CHUNK
                    } else {
                        (r.window * 2).min(cap)
                    };
                }
            }
            Some(_) => {
                fetch_end = end;
                r.streak = 0;
                r.window = 0;
                r.ahead_to = end;
                // The GETs that were streaming ahead of the reader end with what was asked of
                // them: a reader that jumped will not want the rest.
                r.feeds.clear();
            }
        }
        r.next = Some(r.next.map_or(end, |n| n.max(end)));
        // At least two GETs fit in the window, so one is always in flight.
        let chunk = chunk.min(r.window / 2).max(CHUNK);
        let mut plan = Plan {
            fetch_end,
            prefetch: None,
            streaming: r.window > 0,
            seek,
            chunk,
        };
        if r.window == 0 {
            return plan;
        }
        let target = (end + r.window).min(size);
        let from = r.ahead_to.max(fetch_end);
        // Top the window up in whole chunks: one large GET, not one per kernel read.
        if from >= target || (target - from < chunk && target < size) {
            return plan;
        }
        r.ahead_to = target;
        plan.prefetch = Some((from, target));
        plan
    }

    /// Registers `run` as in flight; returns the sender its fetch will complete.
    fn claim<S>(&self, inner: &mut Inner, blob: &BlobRef<S>, run: Run) -> watch::Sender<Outcome> {
        let (tx, rx) = watch::channel(None);
        for p in run.0..run.1 {
            let key = Key {
                blob: blob.id.clone(),
                page: p,
            };
            inner.inflight.insert(key, (run.0, rx.clone()));
        }
        tx
    }

    /// Reads a small run the disk tier holds in the reader's own task, and completes its
    /// claim; gives the claim back if it cannot (too large, no budget now, or a page that
    /// no longer matches). A 32 KiB read from the tier, mostly from the kernel's page cache,
    /// costs less than handing it to a blocking thread and back: a random reader over a
    /// blob held on disk did twice the work in thread switches that it did reading.
    fn disk_now<S>(
        &self,
        blob: &BlobRef<S>,
        run: Run,
        tx: watch::Sender<Outcome>,
    ) -> Option<watch::Sender<Outcome>> {
        let Some((tier, key)) = self.tier_of(blob) else {
            return Some(tx);
        };
        let len = (run.1 * PAGE).min(blob.size) - run.0 * PAGE;
        if len > INLINE_DISK || !self.try_reserve(len) {
            return Some(tx);
        }
        match tier.read(key, run.0, run.1) {
            Some(data) => {
                let result = Ok(data);
                self.complete(&blob.id, run, len, &result);
                let _ = tx.send(Some(result));
                None
            }
            None => {
                self.release(len);
                Some(tx)
            }
        }
    }

    /// Splits runs of pages into those the disk tier holds (true) and those it does not.
    fn by_source<S>(&self, blob: &BlobRef<S>, runs: &[Run]) -> Vec<(Run, bool)> {
        let Some((tier, key)) = self.tier_of(blob) else {
            return runs.iter().map(|&r| (r, false)).collect();
        };
        let mut out: Vec<(Run, bool)> = Vec::new();
        for &(a, b) in runs {
            for (p, held) in (a..b).zip(tier.held(key, a, b)) {
                match out.last_mut() {
                    Some((run, d)) if run.1 == p && *d == held => run.1 += 1,
                    _ => out.push(((p, p + 1), held)),
                }
            }
        }
        out
    }

    fn spawn_fetch<S: Source>(
        self: &Arc<Self>,
        blob: &BlobRef<S>,
        run: Run,
        from_disk: bool,
        link: Option<Arc<link::Link>>,
        tx: watch::Sender<Outcome>,
    ) {
        let cache = self.clone();
        let store = blob.store.clone();
        let (container, name, etag, id) = (
            blob.container.clone(),
            blob.name.clone(),
            blob.etag.clone(),
            blob.id.clone(),
        );
        let start = run.0 * PAGE;
        let len = (run.1 * PAGE).min(blob.size) - start;
        let disk = self.disk.clone().zip(blob.disk.clone());
        tokio::spawn(async move {
            cache.reserve(len).await;
            if from_disk && let Some((tier, key)) = disk.clone() {
                let got = tokio::task::spawn_blocking(move || tier.read(&key, run.0, run.1)).await;
                if let Ok(Some(data)) = got {
                    let result = Ok(data);
                    cache.complete(&id, run, len, &result);
                    let _ = tx.send(Some(result));
                    return;
                }
            }
            let admitted = match &disk {
                Some((tier, _)) => tier.admit(len).await,
                None => None,
            };
            let result = match cache.requests.clone().acquire_owned().await {
                Ok(_permit) => {
                    if let Some(l) = &link {
                        l.started();
                    }
                    let got = store
                        .get_range(&container, &name, start, len, Some(&etag))
                        .await;
                    if let Some(l) = &link {
                        l.finished(got.as_ref().map_or(0, |d| d.len() as u64));
                    }
                    got
                }
                Err(_) => Err(BlobError::BadResponse("request limiter closed".into())),
            };
            cache.deliver(&id, run, len, result, disk.zip(admitted), tx);
        });
    }

    /// Hands a prefetch run to the GET of this reader that continues where it starts, in
    /// pieces of at most [`PIECE`], opening a GET of the size the link rewards (the rest of
    /// the blob, streamed, on a link that charges per request) where none does. Pieces are
    /// cut at the ends of GETs, so each GET is asked for exactly its range.
    fn feed<S: Source>(
        self: &Arc<Self>,
        inner: &mut Inner,
        blob: &BlobRef<S>,
        ra: &Mutex<Readahead>,
        link: &Arc<link::Link>,
        run: Run,
    ) {
        let span = link.chunk() / PAGE;
        let last = blob.size.div_ceil(PAGE);
        let mut r = ra.lock().unwrap_or_else(|p| p.into_inner());
        let mut pos = run.0;
        while pos < run.1 {
            r.feeds.retain(|f| {
                f.blob == blob.id && f.next >= pos && f.next < f.end && !f.pieces.is_closed()
            });
            let i = match r.feeds.iter().position(|f| f.next == pos) {
                Some(i) => i,
                None => {
                    let end = pos.saturating_add(span).min(last);
                    let pieces = self.spawn_feed(blob, end, link.clone());
                    r.feeds.push(Feed {
                        blob: blob.id.clone(),
                        next: pos,
                        end,
                        pieces,
                    });
                    r.feeds.len() - 1
                }
            };
            let f = &mut r.feeds[i];
            let piece = (pos, (pos + PIECE / PAGE).min(run.1).min(f.end));
            f.next = piece.1;
            Stats::add(&self.stats.prefetched_pages, piece.1 - piece.0);
            let tx = self.claim(inner, blob, piece);
            if let Err(mpsc::error::SendError((piece, tx))) = f.pieces.send((piece, tx)) {
                self.spawn_fetch(blob, piece, false, Some(link.clone()), tx);
            }
            pos = piece.1;
        }
    }

    /// The task that reads `blob` up to page `end` with one GET, from its first piece on,
    /// piece by piece as they are sent to it. Its connection is closed when no piece came for [`FEED_IDLE`],
    /// and the GET opened again at the next piece; a body that breaks is opened again once
    /// at the piece it broke in.
    fn spawn_feed<S: Source>(
        self: &Arc<Self>,
        blob: &BlobRef<S>,
        end: u64,
        link: Arc<link::Link>,
    ) -> mpsc::UnboundedSender<(Run, watch::Sender<Outcome>)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Run, watch::Sender<Outcome>)>();
        let cache = self.clone();
        let store = blob.store.clone();
        let (container, name, etag, id, size) = (
            blob.container.clone(),
            blob.name.clone(),
            blob.etag.clone(),
            blob.id.clone(),
            blob.size,
        );
        let disk = self.disk.clone().zip(blob.disk.clone());
        let end = (end * PAGE).min(size);
        tokio::spawn(async move {
            let mut body: Option<Body> = None;
            loop {
                let (run, done) = match tokio::time::timeout(FEED_IDLE, rx.recv()).await {
                    Ok(Some(piece)) => piece,
                    Ok(None) => return,
                    Err(_) => {
                        body = None;
                        continue;
                    }
                };
                let start = run.0 * PAGE;
                let len = (run.1 * PAGE).min(size) - start;
                cache.reserve(len).await;
                let admitted = match &disk {
                    Some((tier, _)) => tier.admit(len).await,
                    None => None,
                };
                let result = match cache.requests.clone().acquire_owned().await {
                    Ok(_permit) => {
                        link.started();
                        let piece = Piece {
                            container: &container,
                            name: &name,
                            etag: &etag,
                            start,
                            len,
                            end,
                        };
                        let got = piece.read(&*store, &mut body).await;
                        link.finished(got.as_ref().map_or(0, |d| d.len() as u64));
                        got
                    }
                    Err(_) => Err(BlobError::BadResponse("request limiter closed".into())),
                };
                if result.is_err() {
                    body = None;
                }
                cache.deliver(&id, run, len, result, disk.clone().zip(admitted), done);
            }
        });
        tx
    }

    /// Completes a fetch of `run` (`len` bytes): keeps its bytes in the disk tier where it
    /// was admitted, turns its reservation into pages, and wakes its readers.
    fn deliver(
        &self,
        id: &Arc<str>,
        run: Run,
        len: u64,
        result: Result<Bytes, BlobError>,
        disk: Option<Admitted>,
        tx: watch::Sender<Outcome>,
    ) {
        let result = match result {
            Ok(data) if data.len() as u64 == len => Ok(data),
            Ok(_) => Err(BlobError::PreconditionFailed),
            Err(e) => Err(e),
        };
        if let (Some(((tier, key), permit)), Ok(data)) = (disk, &result) {
            Stats::add(&self.stats.disk_misses, run.1 - run.0);
            tier.keep(permit, key, run.0, data.clone());
        }
        self.complete(id, run, len, &result);
        let _ = tx.send(Some(result));
    }

    /// Keeps `data`, the first bytes of `blob`, as its pages (those not cached or in flight
    /// already), if the budget has room without waiting: bytes a lookup brought along so the
    /// read that follows needs no request. Only whole pages are kept, and a last partial page
    /// only if `data` reaches the end of the blob.
    pub fn prime<S>(&self, blob: &BlobRef<S>, data: &Bytes) {
        let data = &data.slice(..data.len().min(blob.size as usize));
        let len = data.len() as u64;
        let pages = match len >= blob.size {
            true => blob.size.div_ceil(PAGE),
            false => len / PAGE,
        };
        let fresh: Vec<u64> = {
            let inner = self.lock();
            (0..pages).filter(|&p| !inner.has(&blob.id, p)).collect()
        };
        let bytes = fresh.iter().map(|&p| Page::of(data, 0, p).len as u64).sum();
        if fresh.is_empty() || !self.try_reserve(bytes) {
            return;
        }
        let mut inner = self.lock();
        for p in fresh {
            let key = Key {
                blob: blob.id.clone(),
                page: p,
            };
            // Another fetch may have brought the page meanwhile: count each page once.
            if let Some(old) = inner.lru.put(key, Page::of(data, 0, p)) {
                inner.used = inner.used.saturating_sub(old.len as u64);
            }
        }
    }

    /// Whether the first page of `blob` is cached or on its way.
    pub fn has_start<S>(&self, blob: &BlobRef<S>) -> bool {
        self.lock().has(&blob.id, 0)
    }

    /// Waits until `len` more bytes fit in the budget, evicting least recently used pages.
    /// Writers use it for the bytes they buffer, so reads and writes share one budget.
    pub async fn reserve(&self, len: u64) {
        self.when_space(|| self.try_reserve(len).then_some(()))
            .await
    }

    /// Retries `attempt` each time budget is given back, until it succeeds.
    async fn when_space<T>(&self, mut attempt: impl FnMut() -> Option<T>) -> T {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = attempt() {
                return t;
            }
            notified.await;
        }
    }

    /// Reserves `len` bytes if they fit now (after evicting what can be evicted).
    pub fn try_reserve(&self, len: u64) -> bool {
        let mut inner = self.lock();
        while inner.used + len > self.budget {
            // A spare holds WRITE_BLOCK of the budget (see `keep_spare`), whatever its
            // allocation's capacity (a huge-page buffer has slack for its alignment).
            if inner.spare.pop().is_some() {
                inner.used = inner.used.saturating_sub(WRITE_BLOCK as u64);
                continue;
            }
            let Some((_, page)) = inner.lru.pop_lru() else {
                break;
            };
            inner.used = inner.used.saturating_sub(page.len as u64);
            Stats::add(&self.stats.evictions, 1);
        }
        if inner.used + len > self.budget {
            return false;
        }
        inner.used += len;
        self.stats
            .cache_bytes
            .store(inner.used, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// A write buffer of [`WRITE_BLOCK`] bytes counted in the budget: a spare one, or a new
    /// one if the budget allows; `None` if neither is possible now.
    pub fn try_block(&self) -> Option<BytesMut> {
        if let Some(b) = self.lock().spare.pop() {
            return Some(b);
        }
        self.try_reserve(WRITE_BLOCK as u64).then(new_block)
    }

    /// Waits for a write buffer (see [`Cache::try_block`]): the writer's backpressure.
    pub async fn block(&self) -> BytesMut {
        self.when_space(|| self.try_block()).await
    }

    /// Keeps a write buffer (and the budget it holds) for reuse; returns how many bytes of
    /// budget the caller must still give back (all of them if the buffer was not kept).
    pub fn keep_spare(&self, buf: Bytes, reserved: u64) -> u64 {
        let Ok(mut buf) = buf.try_into_mut() else {
            return reserved;
        };
        let mut inner = self.lock();
        if buf.capacity() < WRITE_BLOCK
            || reserved < WRITE_BLOCK as u64
            || inner.spare.len() >= MAX_SPARE
        {
            return reserved;
        }
        buf.clear();
        inner.spare.push(buf);
        drop(inner);
        // A writer may be waiting for exactly this.
        self.space.notify_waiters();
        reserved - WRITE_BLOCK as u64
    }

    /// Gives back bytes a writer reserved.
    pub fn release(&self, len: u64) {
        if len == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.used = inner.used.saturating_sub(len);
        self.stats
            .cache_bytes
            .store(inner.used, std::sync::atomic::Ordering::Relaxed);
        drop(inner);
        self.space.notify_waiters();
    }

    /// Runs `f` with one of the request permits (`--max-requests`) that reads also use.
    pub async fn with_permit<T, F: std::future::Future<Output = Result<T, BlobError>>>(
        &self,
        f: F,
    ) -> Result<T, BlobError> {
        let _permit = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BlobError::BadResponse("request limiter closed".into()))?;
        f.await
    }

    /// Turns a finished fetch's reservation into cached pages (or releases it on failure).
    fn complete(&self, id: &Arc<str>, run: Run, reserved: u64, result: &Result<Bytes, BlobError>) {
        let mut inner = self.lock();
        for p in run.0..run.1 {
            let key = Key {
                blob: id.clone(),
                page: p,
            };
            inner.inflight.remove(&key);
            if let Ok(data) = result
                && let Some(old) = inner.lru.put(key, Page::of(data, run.0, p))
            {
                inner.used = inner.used.saturating_sub(old.len as u64);
            }
        }
        if result.is_err() {
            inner.used = inner.used.saturating_sub(reserved);
        }
        self.stats
            .cache_bytes
            .store(inner.used, std::sync::atomic::Ordering::Relaxed);
        drop(inner);
        self.space.notify_waiters();
    }
}

impl Inner {
    /// A page a reader uses again, made most recently used. A page that shares its fetch's
    /// buffer gets a buffer of its own first: otherwise one hot page keeps the whole fetch
    /// alive after the rest of it was evicted and no longer counted, which took a random
    /// reader's daemon 50-80 MiB past its budget. Streaming readers do not promote.
    fn promote(&mut self, key: &Key) -> Option<Page> {
        let page = self.lru.get_mut(key)?;
        if page.buf.len() > PAGE as usize {
            *page = Page::of(&Bytes::copy_from_slice(page.bytes()), 0, 0);
        }
        Some(page.clone())
    }

    fn has(&self, blob: &Arc<str>, page: u64) -> bool {
        let key = Key {
            blob: blob.clone(),
            page,
        };
        self.lru.contains(&key) || self.inflight.contains_key(&key)
    }
}

/// An empty write buffer of [`WRITE_BLOCK`] bytes on huge pages where the kernel allows.
/// It starts on a 2 MiB boundary, so a full block can also go to the spill file with
/// `O_DIRECT` (see `crate::write::spill`).
fn new_block() -> BytesMut {
    const _: () = assert!(crate::write::spill::ALIGN <= 2 << 20);
    crate::blob::client::huge_buffer(WRITE_BLOCK)
}

/// `run` cut into runs of at most `max` pages.
fn split(run: Run, max: u64) -> impl Iterator<Item = Run> {
    let max = max.max(1);
    (run.0..run.1)
        .step_by(max as usize)
        .map(move |a| (a, (a + max).min(run.1)))
}

/// One piece of a streamed GET: `len` bytes from `start` of a GET that reaches `end`.
struct Piece<'a> {
    container: &'a str,
    name: &'a str,
    etag: &'a str,
    start: u64,
    len: u64,
    end: u64,
}

impl Piece<'_> {
    /// Reads the piece from `body`, opening the GET (from the piece on) if there is none. A
    /// body that was open already may have broken meanwhile (a reset connection, a server
    /// that closed it): it is opened again once, at this piece.
    async fn read<S: Source>(
        &self,
        store: &S,
        body: &mut Option<Body>,
    ) -> Result<Bytes, BlobError> {
        let mut fresh = false;
        loop {
            let open = match body {
                Some(b) => b,
                None => {
                    fresh = true;
                    let len = self.end - self.start;
                    let b = store
                        .open_range(self.container, self.name, self.start, len, Some(self.etag))
                        .await?;
                    body.insert(b)
                }
            };
            match open.next(self.len as usize).await {
                Ok(data) => return Ok(data),
                Err(e) if fresh => return Err(e),
                Err(_) => *body = None,
            }
        }
    }
}

/// Groups sorted page indexes into runs of consecutive pages, each at most one CHUNK.
fn runs(pages: &[u64]) -> Vec<Run> {
    runs_of(pages, CHUNK / PAGE)
}

/// Groups sorted page indexes into runs of consecutive pages, each at most `max` pages.
fn runs_of(pages: &[u64], max: u64) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some(run) if run.1 == p && run.1 - run.0 < max => run.1 += 1,
            _ => out.push((p, p + 1)),
        }
    }
    out
}

/// A cached page: a span of the buffer of the fetch that brought it. Pages keep that buffer
/// whole (and not a slice of it) so that a read spanning pages of one fetch is answered with
/// one slice of it, not a copy.
#[derive(Clone)]
struct Page {
    buf: Bytes,
    off: usize,
    len: usize,
}

impl Page {
    /// Page `p` out of the data of a fetch that started at page `start`.
    fn of(data: &Bytes, start: u64, p: u64) -> Page {
        let off = (((p - start) * PAGE) as usize).min(data.len());
        let len = (PAGE as usize).min(data.len() - off);
        Page {
            buf: data.clone(),
            off,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }

    /// Whether `next` continues this page in the same buffer.
    fn followed_by(&self, next: &Page) -> bool {
        self.buf.as_ptr() == next.buf.as_ptr()
            && self.buf.len() == next.buf.len()
            && self.off + self.len == next.off
    }
}

fn assemble(
    pages: Vec<Option<Page>>,
    offset: u64,
    end: u64,
    first: u64,
) -> Result<Bytes, BlobError> {
    let skip = (offset - first * PAGE) as usize;
    let want = (end - offset) as usize;
    let pages: Vec<Page> = pages
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| BlobError::BadResponse("page missing".into()))?;
    let held: usize = pages.iter().map(|p| p.len).sum();
    if held < skip + want {
        return Err(BlobError::PreconditionFailed);
    }
    if let Some(head) = pages.first()
        && pages.windows(2).all(|w| w[0].followed_by(&w[1]))
    {
        let from = head.off + skip;
        return Ok(head.buf.slice(from..from + want));
    }
    let mut out = BytesMut::with_capacity(want);
    for (i, page) in pages.iter().enumerate() {
        let from = if i == 0 { skip } else { 0 };
        let take = (page.len.saturating_sub(from)).min(want - out.len());
        out.extend_from_slice(&page.bytes()[from..from + take]);
    }
    if out.len() < want {
        return Err(BlobError::PreconditionFailed);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;
