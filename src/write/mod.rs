//! The write path: a file open for writing is a *draft* of the blob's next version.
//!
//! # Blocks
//!
//! A draft sees the file as a row of [`BLOCK`]-sized blocks. A block nobody wrote to is still
//! the *base* (the version that was committed when the file was opened, cut at the shortest
//! size the draft was truncated to, zeros beyond). A block that was written is held in memory
//! (*dirty*) with its whole content, reserved against the page cache's budget, so reads and
//! writes share one memory limit. When a writer fills a block and moves past it, the block is
//! *sealed*: uploaded with Put Block in a task of its own while the writer goes on, and copied
//! to an unlinked spill file under `--spill-dir` so that a later write or read of it (a header
//! patched after the body, a conflict sibling) never needs the network. Its memory is given
//! back when the upload is done. A writer that outruns the network waits for budget: that is
//! the backpressure.
//!
//! # Commit
//!
//! `flush`, `fsync` and the last `close` commit: a file of at most one block goes up as one
//! Put Blob; a larger one as one Put Block List naming, in order, the blocks this writer
//! staged and, for the parts it did not touch, the base's committed blocks where they line up
//! with the draft's blocks (so an append or a `dd conv=notrunc` to a large file sends only the
//! blocks it changed). Base parts that do not line up are downloaded and staged again.
//!
//! Every commit is conditional: `If-Match` the base's ETag, or `If-None-Match: *` for a new
//! file. If someone else committed first, nothing of theirs is overwritten: the draft is
//! written to a sibling blob named `<name>.conflict-<YYYYMMDDTHHMMSSZ>-<host>` and the commit fails,
//! which the application sees as an error from `close` or `fsync`. Uncommitted blocks are
//! invisible to readers and expire on their own, so a crash or a failed upload leaves the
//! previously committed blob as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::SystemTime;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::Digest;
use tokio::sync::watch;

use crate::blob::{BlobError, BlobProps, BlobStore, Condition, SystemProps, meta};
use crate::cache::link::Link;
use crate::cache::{BlobRef, Cache, Readahead};
use crate::stats::Stats;
use spill::Spill;

/// Size of the blocks a draft uploads and tracks.
pub const BLOCK: u64 = 4 << 20;
/// A block blob holds at most 50,000 blocks.
pub const MAX_SIZE: u64 = 50_000 * BLOCK;
/// Most blocks sent as one Put Block (32 MiB).
const MAX_GROUP: u64 = 8;
/// Dirty buffers grow in steps of at least this much budget.
const MIN_RESERVE: usize = 64 << 10;
/// How long a draft waits for budget before asking that other drafts' idle blocks be sent.
pub const PRESSURE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// A write at least this large at the start of a block takes the whole block at once.
const SEQUENTIAL_HINT: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Storage(#[from] BlobError),
    #[error("the blob was changed elsewhere first; this writer's data is in {0}")]
    Conflict(String),
    #[error("the blob was changed elsewhere first, and keeping this writer's data failed: {0}")]
    Lost(String),
    #[error("this file hit an earlier conflict and takes no more writes")]
    Failed,
    /// A change of metadata alone met a blob changed elsewhere since it was read.
    #[error("the blob was changed elsewhere before this change of its attributes")]
    Outdated,
    #[error("spill file: {0}")]
    Spill(String),
    #[error("larger than a block blob can be")]
    TooLarge,
    /// The budget stayed full for [`PRESSURE_WAIT`]: other drafts may be holding it with
    /// blocks nobody is filling. The operation changed nothing it cannot redo; see
    /// `Namespace::with_budget`.
    #[error("the cache budget is held by data of other open files")]
    NeedSpace,
}

/// The blob a draft becomes.
pub struct Target {
    pub acct: usize,
    pub container: String,
    pub name: String,
}

/// Times and mode bits `setattr` changes.
#[derive(Debug, Default, Clone)]
pub struct AttrChange {
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
    pub mode: Option<u16>,
}

/// What a successful commit made.
#[derive(Debug, Clone)]
pub struct Committed {
    pub etag: String,
    pub size: u64,
}

type UploadResult = Result<Sent, Arc<FailedUpload>>;

/// A block that went up.
#[derive(Debug, Clone)]
struct Sent {
    /// Its copy is in the spill file.
    spilled: bool,
    /// It went up again on its own under this id (see [`Draft::upload`]).
    alone: Option<String>,
}

/// An upload that failed: its bytes, and the budget they still hold. Whoever turns it back
/// into a dirty block takes the budget along; if nobody does (the draft was dropped), the
/// budget is given back when the last reference goes.
struct FailedUpload {
    error: BlobError,
    data: Bytes,
    reserved: std::sync::atomic::AtomicU64,
    cache: Arc<Cache>,
    stats: Arc<Stats>,
}

impl FailedUpload {
    fn take_reservation(&self) -> u64 {
        self.reserved.swap(0, std::sync::atomic::Ordering::AcqRel)
    }
}

impl Drop for FailedUpload {
    fn drop(&mut self) {
        let left = self.take_reservation();
        if left > 0 {
            self.cache.release(left);
            Stats::sub(&self.stats.dirty_bytes, left);
        }
    }
}

/// Size, modification and access time as the application sees them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
}

enum Block {
    /// The block's content from its start; shorter than the block means zeros follow.
    Dirty { buf: BytesMut, reserved: u64 },
    /// Part of a Put Block of `span` bytes: this block alone, or a run of blocks sent as one
    /// (see [`group`]), all with the same id.
    Uploading {
        id: String,
        len: u64,
        span: u64,
        done: watch::Receiver<Option<UploadResult>>,
    },
    Staged {
        id: String,
        len: u64,
        span: u64,
        spilled: bool,
    },
}

struct Base {
    etag: String,
    size: u64,
    /// Committed blocks (id, size), once asked for.
    committed: Option<Vec<(String, u64)>>,
}

struct State {
    container: String,
    name: String,
    base: Option<Base>,
    /// Bytes of the base that are still part of the file.
    base_len: u64,
    size: u64,
    blocks: BTreeMap<u64, Block>,
    metadata: BTreeMap<String, String>,
    /// The base's content headers, sent back with every new version of the data: Put Blob
    /// and Put Block List clear any they are not given.
    headers: SystemProps,
    data_dirty: bool,
    meta_dirty: bool,
    unlinked: bool,
    failed: bool,
    /// The last commit failed (storage, not a conflict): a close must not commit behind the
    /// back of a caller that was told it failed.
    commit_failed: bool,
    spill: Option<Arc<Spill>>,
    /// A snapshot of the base, taken when an edit first relies on more than one block of it:
    /// a conflict sibling can then be made whole even after the base was replaced.
    snapshot: Option<String>,
    snapshot_tried: bool,
    next_id: u64,
    mtime: SystemTime,
    atime: SystemTime,
}

pub struct Draft<S> {
    store: Arc<S>,
    cache: Arc<Cache>,
    stats: Arc<Stats>,
    acct: usize,
    spill_dir: PathBuf,
    session: u64,
    /// How large the storage account's uploads should be, by measurement.
    link: Arc<Link>,
    state: tokio::sync::Mutex<State>,
    /// Size and mtime as of the last change, readable without waiting for the state lock
    /// (getattr must not wait behind a write that waits for budget).
    shown: StdMutex<Shown>,
}

impl<S: BlobStore> Draft<S> {
    /// A draft of `target`, editing `base` (`None` for a new file).
    pub fn new(
        store: Arc<S>,
        cache: Arc<Cache>,
        stats: Arc<Stats>,
        spill_dir: PathBuf,
        target: Target,
        base: Option<&BlobProps>,
    ) -> Self {
        let Target {
            acct,
            container,
            name,
        } = target;
        let size = base.map_or(0, |b| b.size);
        let mtime = base.map_or_else(SystemTime::now, meta::mtime);
        let atime = base.map_or(mtime, meta::atime);
        let link = cache.upload_link(store.origin());
        Draft {
            store,
            cache,
            link,
            stats,
            acct,
            spill_dir,
            session: rand::random(),
            state: tokio::sync::Mutex::new(State {
                container,
                name,
                base: base.map(|b| Base {
                    etag: b.etag.clone(),
                    size: b.size,
                    committed: None,
                }),
                base_len: size,
                size,
                blocks: BTreeMap::new(),
                metadata: base.map(|b| b.metadata.clone()).unwrap_or_default(),
                headers: base
                    .map(|b| b.system().kept_by_rewrite())
                    .unwrap_or_default(),
                // A new file exists once it is closed, even if nothing was written.
                data_dirty: base.is_none(),
                meta_dirty: false,
                unlinked: false,
                failed: false,
                commit_failed: false,
                spill: None,
                snapshot: None,
                snapshot_tried: false,
                next_id: 0,
                mtime,
                atime,
            }),
            shown: StdMutex::new(Shown { size, mtime, atime }),
        }
    }

    /// Size and modification time as the application sees them now.
    pub fn shown(&self) -> Shown {
        *self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn show(&self, st: &State) {
        *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = Shown {
            size: st.size,
            mtime: st.mtime,
            atime: st.atime,
        };
    }

    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_SIZE {
            return Err(WriteError::TooLarge);
        }
        let mut st = self.state.lock().await;
        if st.failed {
            return Err(WriteError::Failed);
        }
        self.keep_base(&mut st).await;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        for i in first..=last {
            let bstart = i * BLOCK;
            let from = (offset.max(bstart) - bstart) as usize;
            let to = (end.min(bstart + BLOCK) - bstart) as usize;
            let src = &data[(bstart + from as u64 - offset) as usize..][..to - from];
            let old_len = len_of(st.size, i) as usize;
            if !matches!(st.blocks.get(&i), Some(Block::Dirty { .. })) {
                // Nothing to keep when the write covers all the block held, or the block
                // held only zeros: skip reading it back.
                let blank = !st.blocks.contains_key(&i) && bstart >= st.base_len;
                let content = if blank || (from == 0 && to >= old_len) {
                    Vec::new()
                } else {
                    self.load(&mut st, i).await?
                };
                // A large write at the start of a block is a sequential writer: give the
                // block its full size at once rather than growing (and copying) it.
                let hint = if from == 0 && to - from >= SEQUENTIAL_HINT {
                    BLOCK as usize
                } else {
                    to
                };
                self.make_dirty(&mut st, i, content, hint).await?;
            }
            self.grow(&mut st, i, to).await?;
            if let Some(Block::Dirty { buf, .. }) = st.blocks.get_mut(&i) {
                // An append (the sequential writer) is one copy, not zeros and then a copy.
                if buf.len() <= from {
                    buf.resize(from, 0);
                    buf.extend_from_slice(src);
                } else {
                    if buf.len() < to {
                        buf.resize(to, 0);
                    }
                    buf[from..to].copy_from_slice(src);
                }
            }
        }
        st.size = st.size.max(end);
        st.data_dirty = true;
        st.mtime = SystemTime::now();
        meta::remove(&mut st.metadata, meta::MTIME);
        // Upload the blocks the writer has filled and moved past, a group at a time.
        let most = self.most_grouped();
        for i in first..=last {
            let full = matches!(st.blocks.get(&i), Some(Block::Dirty { buf, .. }) if buf.len() as u64 == BLOCK);
            let (start, n) = group(i, most);
            if full && end >= (i + 1) * BLOCK && i + 1 == start + n {
                self.seal_run(&mut st, start, i + 1, None);
            }
        }
        self.show(&st);
        Ok(())
    }

    /// Snapshots the base the first time an edit keeps more than one block of it (a file of
    /// one block is read back whole at its first write and needs none).
    async fn keep_base(&self, st: &mut State) {
        if st.snapshot_tried || st.base_len <= BLOCK {
            return;
        }
        let Some(etag) = st.base.as_ref().map(|b| b.etag.clone()) else {
            return;
        };
        st.snapshot_tried = true;
        let taken = self
            .store
            .snapshot(&st.container, &st.name, Condition::IfMatch(etag))
            .await;
        match taken {
            Ok(id) => st.snapshot = Some(id),
            // Changed already: the commit will be refused, and the sibling is made from what
            // can still be read.
            Err(e) => tracing::warn!(
                container = %st.container,
                blob = %st.name,
                error = %e,
                "could not snapshot the version being edited"
            ),
        }
    }

    /// Deletes the base's snapshot once no commit or sibling can need it.
    async fn drop_snapshot(&self, st: &mut State) {
        st.snapshot_tried = false;
        if let Some(id) = st.snapshot.take()
            && let Err(e) = self
                .store
                .delete_snapshot(&st.container, &st.name, &id)
                .await
        {
            tracing::debug!(blob = %st.name, error = %e, "snapshot not deleted");
        }
    }

    /// Makes block `i` dirty with `content`, waiting for budget.
    async fn make_dirty(
        &self,
        st: &mut State,
        i: u64,
        content: Vec<u8>,
        capacity: usize,
    ) -> Result<(), WriteError> {
        let want = (content.len().max(capacity).max(MIN_RESERVE) as u64).min(BLOCK);
        let mut buf = if want == BLOCK {
            // Whole blocks come from the cache's spare buffers when it has some.
            let buf = match self.cache.try_block() {
                Some(b) => b,
                None => {
                    self.seal_all_but(st, i);
                    tokio::time::timeout(PRESSURE_WAIT, self.cache.block())
                        .await
                        .map_err(|_| WriteError::NeedSpace)?
                }
            };
            Stats::add(&self.stats.dirty_bytes, want);
            buf
        } else {
            self.reserve(st, want, i).await?;
            BytesMut::with_capacity(want as usize)
        };
        buf.extend_from_slice(&content);
        st.blocks.insert(
            i,
            Block::Dirty {
                buf,
                reserved: want,
            },
        );
        Ok(())
    }

    /// Makes sure dirty block `i` has budget for `len` bytes.
    async fn grow(&self, st: &mut State, i: u64, len: usize) -> Result<(), WriteError> {
        let reserved = match st.blocks.get(&i) {
            Some(Block::Dirty { reserved, .. }) => *reserved,
            _ => return Ok(()),
        };
        if len as u64 <= reserved {
            return Ok(());
        }
        let target = (len as u64).next_power_of_two().min(BLOCK);
        self.reserve(st, target - reserved, i).await?;
        if let Some(Block::Dirty { buf, reserved }) = st.blocks.get_mut(&i) {
            buf.reserve(target as usize - buf.len());
            *reserved = target;
        }
        Ok(())
    }

    /// Reserves budget; if none is free, first uploads this draft's own dirty blocks (other
    /// than `keep`) so that a writer never waits on memory that only it could free.
    async fn reserve(&self, st: &mut State, len: u64, keep: u64) -> Result<(), WriteError> {
        if !self.cache.try_reserve(len) {
            self.seal_all_but(st, keep);
            tokio::time::timeout(PRESSURE_WAIT, self.cache.reserve(len))
                .await
                .map_err(|_| WriteError::NeedSpace)?;
        }
        Stats::add(&self.stats.dirty_bytes, len);
        Ok(())
    }

    /// Starts uploading this draft's dirty blocks unless it is busy (a busy draft is either
    /// making progress or waiting for budget, and then has sent its blocks already).
    pub fn send_idle_blocks(&self) {
        if let Ok(mut st) = self.state.try_lock() {
            self.seal_all_but(&mut st, u64::MAX);
        }
    }

    /// Uploads this draft's dirty blocks other than `keep`, before waiting for budget, so
    /// that a writer never waits on memory that only it could free.
    fn seal_all_but(&self, st: &mut State, keep: u64) {
        self.revive_failed(st);
        let dirty: Vec<u64> = st
            .blocks
            .iter()
            .filter(|(k, b)| **k != keep && matches!(b, Block::Dirty { .. }))
            .map(|(k, _)| *k)
            .collect();
        for i in dirty {
            self.seal(st, i);
        }
    }

    /// Turns uploads that failed back into dirty blocks (with the budget they hold), so they
    /// are sent again: a file left open and idle must not hold the budget for ever once
    /// storage is back.
    fn revive_failed(&self, st: &mut State) {
        let failed: Vec<(u64, Arc<FailedUpload>)> = st
            .blocks
            .iter()
            .filter_map(|(i, b)| match b {
                Block::Uploading { done, .. } => match &*done.borrow() {
                    Some(Err(f)) => Some((*i, f.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for (i, f) in failed {
            let block = Block::Dirty {
                buf: BytesMut::from(&f.data[..]),
                reserved: f.take_reservation(),
            };
            st.blocks.insert(i, block);
        }
    }

    /// The most blocks one Put Block may carry: [`MAX_GROUP`], few enough that a group
    /// filling up holds at most an eighth of the budget, and as many as the link rewards.
    fn most_grouped(&self) -> u64 {
        let budget = (self.cache.budget() / 8 / BLOCK).clamp(1, MAX_GROUP);
        (self.link.chunk() / BLOCK).clamp(1, budget)
    }

    fn unreserve(&self, len: u64) {
        self.cache.release(len);
        Stats::sub(&self.stats.dirty_bytes, len);
    }

    fn block_id(&self, st: &mut State) -> String {
        st.next_id += 1;
        let raw = format!("batchfs-{:016x}-{:016x}", self.session, st.next_id);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn spill_file(&self, st: &mut State) -> Option<Arc<Spill>> {
        if st.spill.is_none() {
            match Spill::create(&self.spill_dir, &format!("{:016x}", self.session)) {
                Ok(f) => st.spill = Some(Arc::new(f)),
                Err(e) => tracing::warn!(
                    dir = %self.spill_dir.display(),
                    error = %e,
                    "cannot create a spill file; uploaded blocks are not kept locally"
                ),
            }
        }
        st.spill.clone()
    }

    /// Starts uploading dirty block `i` (padded or cut to its length in the file), in the
    /// background: the upload outlives the write that filled the block.
    fn seal(&self, st: &mut State, i: u64) {
        self.seal_run(st, i, i + 1, None);
    }

    /// As [`Self::seal`], bounded by `limit` (what is left of the operation that waits for it).
    fn seal_within(&self, st: &mut State, i: u64, limit: Option<std::time::Duration>) {
        self.seal_run(st, i, i + 1, limit);
    }

    /// Starts uploading the dirty blocks among `from..to`, each run of consecutive ones as
    /// one Put Block of their buffers in order (no copy): fewer, larger requests, which cut
    /// the per-request cost and the transaction bill. Each block keeps its own outcome, so a
    /// failed upload turns back into dirty blocks as a single one does.
    fn seal_run(&self, st: &mut State, from: u64, to: u64, limit: Option<std::time::Duration>) {
        // Without a spill file, one block of a group could not be rewritten later (its
        // neighbours would be nowhere to send again from): blocks go up alone.
        let spill = self.spill_file(st);
        let most = if spill.is_some() { usize::MAX } else { 1 };
        let mut i = from;
        while i < to {
            let mut parts = Vec::new();
            while i < to && parts.len() < most {
                let want = len_of(st.size, i) as usize;
                if !matches!(st.blocks.get(&i), Some(Block::Dirty { .. })) {
                    break;
                }
                let Some(Block::Dirty { mut buf, reserved }) = st.blocks.remove(&i) else {
                    break;
                };
                buf.resize(want, 0);
                parts.push((i, buf.freeze(), reserved));
                i += 1;
            }
            if parts.is_empty() {
                i += 1;
                continue;
            }
            self.upload(st, parts, spill.clone(), limit);
        }
    }

    /// Uploads consecutive blocks `parts` (index, bytes, budget held) as one Put Block, and
    /// copies each to `spill`.
    fn upload(
        &self,
        st: &mut State,
        parts: Vec<(u64, Bytes, u64)>,
        spill: Option<Arc<Spill>>,
        limit: Option<std::time::Duration>,
    ) {
        let id = self.block_id(st);
        let span: u64 = parts.iter().map(|(_, d, _)| d.len() as u64).sum();
        // Ids for each block of a group alone, used only if the group's local copy fails.
        let alone: Vec<String> = match parts.len() {
            1 => Vec::new(),
            _ => parts.iter().map(|_| self.block_id(st)).collect(),
        };
        let mut senders = Vec::with_capacity(parts.len());
        for (i, data, _) in &parts {
            let (tx, rx) = watch::channel(None);
            senders.push(tx);
            st.blocks.insert(
                *i,
                Block::Uploading {
                    id: id.clone(),
                    len: data.len() as u64,
                    span,
                    done: rx,
                },
            );
        }
        let (store, cache, link) = (self.store.clone(), self.cache.clone(), self.link.clone());
        let (container, name) = (st.container.clone(), st.name.clone());
        let stats = self.stats.clone();
        let task = async move {
            let copies: Vec<(u64, Bytes)> = parts.iter().map(|(i, d, _)| (*i, d.clone())).collect();
            let spilled = async move {
                let Some(f) = spill else { return false };
                tokio::task::spawn_blocking(move || {
                    copies.iter().all(|(i, d)| f.write_at(d, i * BLOCK).is_ok())
                })
                .await
                .unwrap_or(false)
            };
            let body = parts.iter().map(|(_, d, _)| d.clone()).collect();
            let upload = cache.with_permit(async {
                link.started();
                let sent = store.put_block_parts(&container, &name, &id, body).await;
                link.finished(if sent.is_ok() { span } else { 0 });
                sent
            });
            let (spilled, mut uploaded) = tokio::join!(spilled, upload);
            // A rewrite of one block of a group sends the group's other blocks again, from
            // the spill file: uncommitted blocks cannot be read back from storage. Where
            // that copy failed (a full disk), each block goes up again on its own, as a
            // single one would have, so that a later rewrite needs no neighbour.
            let resent = uploaded.is_ok() && !spilled && !alone.is_empty();
            if resent {
                for ((_, data, _), id) in parts.iter().zip(&alone) {
                    uploaded = cache
                        .with_permit(store.put_block(&container, &name, id, data.clone()))
                        .await;
                    if uploaded.is_err() {
                        break;
                    }
                }
            }
            for (k, ((_, data, reserved), tx)) in parts.into_iter().zip(senders).enumerate() {
                let result = match &uploaded {
                    Ok(()) => {
                        // The buffer goes back to the cache for the next block.
                        cache.release(cache.keep_spare(data, reserved));
                        Stats::sub(&stats.dirty_bytes, reserved);
                        Ok(Sent {
                            spilled,
                            alone: alone.get(k).filter(|_| resent).cloned(),
                        })
                    }
                    // The bytes stay, and so does the budget they hold: memory must not grow
                    // past the budget while storage is down.
                    Err(error) => Err(Arc::new(FailedUpload {
                        error: error.clone(),
                        data,
                        reserved: reserved.into(),
                        cache: cache.clone(),
                        stats: stats.clone(),
                    })),
                };
                let _ = tx.send(Some(result));
            }
        };
        match limit {
            Some(limit) => tokio::spawn(crate::blob::deadline::within(limit, task)),
            None => tokio::spawn(task),
        };
    }

    /// Waits for an upload of block `i` to end and records how it ended.
    async fn settle(&self, st: &mut State, i: u64) -> Result<(), WriteError> {
        let Some(Block::Uploading {
            id,
            len,
            span,
            done,
        }) = st.blocks.get(&i)
        else {
            return Ok(());
        };
        let (id, len, span, mut done) = (id.clone(), *len, *span, done.clone());
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| BlobError::BadResponse("upload abandoned".into()))?
            .clone();
        if matches!(outcome, Some(Ok(_))) {
            // Waiting for an upload that went through is progress, not a storage that hangs.
            crate::blob::deadline::progress();
        }
        match outcome {
            Some(Ok(sent)) => {
                let (id, span) = match sent.alone {
                    Some(alone) => (alone, len),
                    None => (id, span),
                };
                st.blocks.insert(
                    i,
                    Block::Staged {
                        id,
                        len,
                        span,
                        spilled: sent.spilled,
                    },
                );
                Ok(())
            }
            Some(Err(failed)) => {
                // The bytes become dirty again, with their budget, so a later flush can try
                // again.
                st.blocks.insert(
                    i,
                    Block::Dirty {
                        buf: BytesMut::from(&failed.data[..]),
                        reserved: failed.take_reservation(),
                    },
                );
                Err(failed.error.clone().into())
            }
            None => Err(BlobError::BadResponse("upload abandoned".into()).into()),
        }
    }

    /// The content of block `i` as the file holds it now (its length in the file).
    async fn load(&self, st: &mut State, i: u64) -> Result<Vec<u8>, WriteError> {
        let want = len_of(st.size, i) as usize;
        if matches!(st.blocks.get(&i), Some(Block::Uploading { .. })) {
            // A failed upload turns back into a dirty block, which is loaded below.
            let _ = self.settle(st, i).await;
        }
        let mut out = match st.blocks.get(&i) {
            Some(Block::Dirty { buf, .. }) => buf[..buf.len().min(want)].to_vec(),
            Some(Block::Staged { len, spilled, .. }) => {
                if !*spilled {
                    return Err(WriteError::Spill(
                        "an uploaded block was not kept locally (see --spill-dir)".into(),
                    ));
                }
                let n = (*len as usize).min(want);
                let f = st.spill.clone().ok_or(WriteError::Spill("gone".into()))?;
                tokio::task::spawn_blocking(move || f.read_at(n, i * BLOCK))
                    .await
                    .map_err(|e| WriteError::Spill(e.to_string()))?
                    .map_err(|e| WriteError::Spill(e.to_string()))?
            }
            // Its upload task went away without an answer (the runtime is shutting down).
            Some(Block::Uploading { .. }) => {
                return Err(BlobError::BadResponse("upload abandoned".into()).into());
            }
            None => {
                let from = i * BLOCK;
                let to = (from + want as u64).min(st.base_len);
                match &st.base {
                    Some(b) if to > from => {
                        let etag = b.etag.clone();
                        let (c, n) = (&st.container, &st.name);
                        let data = match &st.snapshot {
                            Some(snap) => {
                                let get =
                                    self.store.get_snapshot_range(c, n, snap, from, to - from);
                                self.cache.with_permit(get).await?
                            }
                            None => {
                                let get = self.store.get_range(c, n, from, to - from, Some(&etag));
                                self.cache.with_permit(get).await?
                            }
                        };
                        if (data.len() as u64) < to - from {
                            return Err(BlobError::PreconditionFailed.into());
                        }
                        data.to_vec()
                    }
                    _ => Vec::new(),
                }
            }
        };
        out.resize(want, 0);
        Ok(out)
    }

    /// Reads `[offset, offset+len)` as the file holds it now.
    pub async fn read(
        &self,
        ra: &StdMutex<Readahead>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, WriteError> {
        let mut st = self.state.lock().await;
        let end = offset.saturating_add(len).min(st.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        // Untouched base: the read engine, with its prefetch and page cache.
        if st.blocks.range(first..=last).next().is_none() && end <= st.base_len {
            return Ok(self
                .cache
                .read(&self.base_ref(&st)?, ra, offset, end - offset)
                .await?);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for i in first..=last {
            let bstart = i * BLOCK;
            let from = offset.max(bstart);
            let to = end.min(bstart + BLOCK);
            let (a, b) = ((from - bstart) as usize, (to - bstart) as usize);
            if let Some(Block::Dirty { buf, .. }) = st.blocks.get(&i) {
                out.extend_from_slice(&buf[a.min(buf.len())..b.min(buf.len())]);
            } else if st.blocks.contains_key(&i) {
                out.extend_from_slice(&self.load(&mut st, i).await?[a..b]);
            } else if from < st.base_len {
                let upto = to.min(st.base_len);
                let base = self.base_ref(&st)?;
                out.extend_from_slice(&self.cache.read(&base, ra, from, upto - from).await?);
            }
            out.resize((to - offset) as usize, 0);
        }
        Ok(out.freeze())
    }

    fn base_ref(&self, st: &State) -> Result<BlobRef<S>, WriteError> {
        let b = st
            .base
            .as_ref()
            .ok_or(BlobError::BadResponse("no base".into()))?;
        Ok(BlobRef::new(
            self.store.clone(),
            self.acct,
            st.container.clone(),
            st.name.clone(),
            b.etag.clone(),
            b.size,
        ))
    }

    pub async fn truncate(&self, size: u64) -> Result<(), WriteError> {
        if size > MAX_SIZE {
            return Err(WriteError::TooLarge);
        }
        let mut st = self.state.lock().await;
        if st.failed {
            return Err(WriteError::Failed);
        }
        if size == st.size {
            return Ok(());
        }
        if size < st.size {
            let cut = size.div_ceil(BLOCK);
            for (_, b) in st.blocks.split_off(&cut) {
                if let Block::Dirty { reserved, .. } = b {
                    self.unreserve(reserved);
                }
            }
            let edge = size / BLOCK;
            if !size.is_multiple_of(BLOCK) && st.blocks.contains_key(&edge) {
                // What lies past the cut must read as zeros if the file grows again.
                let mut content = self.load(&mut st, edge).await?;
                content.truncate((size - edge * BLOCK) as usize);
                if let Some(Block::Dirty { reserved, .. }) = st.blocks.remove(&edge) {
                    self.unreserve(reserved);
                }
                let len = content.len();
                self.make_dirty(&mut st, edge, content, len).await?;
            }
            st.base_len = st.base_len.min(size);
        }
        st.size = size;
        st.data_dirty = true;
        st.mtime = SystemTime::now();
        meta::remove(&mut st.metadata, meta::MTIME);
        self.show(&st);
        Ok(())
    }

    /// Sets times and/or mode bits, kept in metadata at the next commit.
    pub async fn set_attrs(&self, change: &AttrChange) {
        let mut st = self.state.lock().await;
        if let Some(t) = change.mtime {
            st.mtime = meta::round_trip(t);
            meta::set_mtime(&mut st.metadata, t);
        }
        if let Some(t) = change.atime {
            st.atime = meta::round_trip(t);
            meta::set_atime(&mut st.metadata, t);
        }
        if let Some(m) = change.mode {
            meta::set_mode(&mut st.metadata, m);
        }
        st.meta_dirty = true;
        self.show(&st);
    }

    /// Sets the content type of the blob this draft edits: 1 HEAD and 1 Set Blob Properties
    /// (the other headers sent back as they are), made under the draft's lock so that no
    /// commit of it runs in between. Its next commit is pinned to the new ETag and sends the
    /// new type; a file not committed yet takes the type with its first commit. A blob
    /// changed elsewhere since the draft's base gives `PreconditionFailed`.
    pub async fn set_content_type(&self, value: &str) -> Result<(), BlobError> {
        let mut st = self.state.lock().await;
        let Some(base) = st.base.as_ref().map(|b| b.etag.clone()) else {
            st.headers.content_type = Some(value.to_string());
            return Ok(());
        };
        let p = self.store.head(&st.container, &st.name).await?;
        if p.etag != base {
            return Err(BlobError::PreconditionFailed);
        }
        let system = SystemProps {
            content_type: Some(value.to_string()),
            ..p.system().clone()
        };
        let cond = Condition::IfMatch(base);
        let etag = (self.store)
            .set_content_headers(&st.container, &st.name, &system, cond)
            .await?;
        if let Some(b) = st.base.as_mut() {
            b.etag = etag;
        }
        st.headers = system.kept_by_rewrite();
        Ok(())
    }

    /// The blob's metadata as the next commit will write it.
    pub async fn metadata(&self) -> BTreeMap<String, String> {
        self.state.lock().await.metadata.clone()
    }

    /// Changes the metadata, kept at the next commit (one Set Blob Metadata if the data is
    /// unchanged). `change` leaves it as it was when it fails.
    pub async fn change_metadata<E>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut st = self.state.lock().await;
        change(&mut st.metadata)?;
        st.meta_dirty = true;
        Ok(())
    }

    /// The file is about to be unlinked while open: nothing is to be committed, but its open
    /// handles keep reading and writing it until the last close (POSIX temporary files). What
    /// only storage holds, the untouched parts of the base, is copied to the spill file first;
    /// if that fails, the unlink must not go ahead.
    pub async fn unlink(&self) -> Result<(), WriteError> {
        let mut st = self.state.lock().await;
        for i in 0..st.size.div_ceil(BLOCK) {
            if st.blocks.contains_key(&i) || i * BLOCK >= st.base_len {
                continue;
            }
            let data = self.load(&mut st, i).await?;
            let len = data.len() as u64;
            let f = self
                .spill_file(&mut st)
                .ok_or_else(|| WriteError::Spill("no spill file for an unlinked file".into()))?;
            tokio::task::spawn_blocking(move || f.write_at(&data, i * BLOCK))
                .await
                .map_err(|e| WriteError::Spill(e.to_string()))?
                .map_err(|e| WriteError::Spill(e.to_string()))?;
            let id = String::new();
            st.blocks.insert(
                i,
                Block::Staged {
                    id,
                    len,
                    span: len,
                    spilled: true,
                },
            );
        }
        st.unlinked = true;
        Ok(())
    }

    /// The unlink that [`Self::unlink`] prepared did not happen: the file is a file again, and
    /// the base blocks copied aside are the base's again (storage still has them).
    pub async fn relink(&self) {
        let mut st = self.state.lock().await;
        st.unlinked = false;
        st.blocks
            .retain(|_, b| !matches!(b, Block::Staged { id, .. } if id.is_empty()));
    }

    /// The draft is dropped (unlinked and closed, or its data kept elsewhere): its data goes,
    /// and any handle still holding it gets `EIO` from now on.
    pub async fn abandon(&self) {
        let mut st = self.state.lock().await;
        st.failed = true;
        self.discard(&mut st);
    }

    /// Whether the last commit failed (and nothing committed since).
    pub async fn commit_failed(&self) -> bool {
        self.state.lock().await.commit_failed
    }

    /// Keeps what the draft holds in a local file under `dir`, for a commit that failed and
    /// must not be retried behind the caller's back. Parts only storage held and that cannot be
    /// read now are left as holes; returns the file and whether it is complete.
    pub async fn save_local(&self, dir: &std::path::Path) -> Result<(PathBuf, bool), WriteError> {
        let mut st = self.state.lock().await;
        let dir = dir.join("batchfs-unsaved");
        // `<container>--<last segment, cut>-<hash of the whole name>.<UTC time>-<ns>`: short
        // enough for any local file system, unique per blob and per failure.
        let last = st.name.rsplit('/').next().unwrap_or_default();
        let mut cut = last.len().min(80);
        while !last.is_char_boundary(cut) {
            cut -= 1;
        }
        let hash = sha2::Sha256::digest(st.name.as_bytes());
        let now = SystemTime::now();
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{}--{}-{:02x}{:02x}{:02x}{:02x}.{}-{nanos:09}",
            st.container,
            &last[..cut],
            hash[0],
            hash[1],
            hash[2],
            hash[3],
            meta::sortable_stamp(now)
        );
        let path = dir.join(name);
        // File I/O off the runtime's threads (they serve every other call).
        let size = st.size;
        on_file(path.clone(), move |p| {
            std::fs::create_dir_all(p.parent().unwrap_or(p))?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)?;
            f.set_len(size)
        })
        .await?;
        let mut complete = true;
        for i in 0..st.size.div_ceil(BLOCK) {
            match self.load(&mut st, i).await {
                Ok(data) => {
                    let write = move |p: &std::path::Path| {
                        use std::os::unix::fs::FileExt;
                        let f = std::fs::OpenOptions::new().write(true).open(p)?;
                        f.write_all_at(&data, i * BLOCK)
                    };
                    on_file(path.clone(), write).await?;
                }
                Err(_) => complete = false,
            }
        }
        Ok((path, complete))
    }

    fn discard(&self, st: &mut State) {
        // Failed uploads give their budget back when dropped.
        for (_, b) in std::mem::take(&mut st.blocks) {
            if let Block::Dirty { reserved, .. } = b {
                self.unreserve(reserved);
            }
        }
        st.data_dirty = false;
        st.meta_dirty = false;
        if let Some(f) = &st.spill {
            f.clear();
        }
    }

    /// The blob was renamed (after a commit): later commits go to the new name.
    pub async fn retarget(&self, name: String, etag: String) {
        let mut st = self.state.lock().await;
        st.name = name;
        if let Some(b) = &mut st.base {
            b.etag = etag;
            b.committed = None;
        }
    }

    /// Whether the draft holds data storage does not have: what a failed close keeps in a
    /// local file. A change of metadata alone has nothing to keep there.
    pub async fn has_unsaved_data(&self) -> bool {
        let st = self.state.lock().await;
        st.data_dirty && !st.unlinked
    }

    /// Commits the draft if it changed; `None` if there was nothing to commit. A bare
    /// truncation is a change like any other: when `close` returns, storage has it.
    pub async fn commit(&self) -> Result<Option<Committed>, WriteError> {
        let mut st = self.state.lock().await;
        let r = self.commit_locked(&mut st).await;
        st.commit_failed = match &r {
            Ok(_) | Err(WriteError::Conflict(_) | WriteError::Failed | WriteError::Outdated) => {
                false
            }
            Err(_) => true,
        };
        r
    }

    async fn commit_locked(&self, st: &mut State) -> Result<Option<Committed>, WriteError> {
        if st.failed {
            return Err(WriteError::Failed);
        }
        if st.unlinked || !(st.data_dirty || st.meta_dirty) {
            return Ok(None);
        }
        tracing::debug!(container = %st.container, blob = %st.name, size = st.size, "commit");
        let cond = match &st.base {
            Some(b) => Condition::IfMatch(b.etag.clone()),
            None => Condition::IfNoneMatchAny,
        };
        // The time the application saw is kept, to the nanosecond: Last-Modified is the
        // commit's time (whole seconds on some services), and a file's times must not move
        // by themselves after it is closed.
        let t = st.mtime;
        meta::set_mtime(&mut st.metadata, t);
        // Each commit carries its own id, so that a commit whose reply was lost is recognised
        // when the retry that follows is refused.
        let commit_id = format!("{:016x}", rand::random::<u64>());
        meta::set(&mut st.metadata, meta::COMMIT, commit_id.clone());
        // A block already staged (a new file of exactly one block) is committed as it is, not
        // uploaded again.
        let staged = matches!(
            st.blocks.get(&0),
            Some(Block::Staged { .. } | Block::Uploading { .. })
        );
        let result = if !st.data_dirty && st.base.is_some() {
            self.store
                .set_metadata(&st.container, &st.name, &st.metadata, cond.clone())
                .await
                .map(|etag| (etag, st.base.as_ref().and_then(|b| b.committed.clone())))
        } else if st.size <= BLOCK && !staged {
            let data = Bytes::from(self.load(st, 0).await?);
            let put = self.store.put_with(
                &st.container,
                &st.name,
                data,
                cond.clone(),
                &st.metadata,
                &st.headers,
            );
            let r = self.cache.with_permit(put).await;
            r.map(|etag| (etag, Some(Vec::new())))
        } else {
            self.commit_blocks(st, cond.clone()).await?
        };
        let put_blob = st.data_dirty && st.size <= BLOCK && !staged;
        // A refusal is checked against what storage holds now (one HEAD). A storage error
        // while checking is that error: never a conflict, so the draft is kept.
        let result = match result {
            Err(e) if changed_elsewhere(&e) => match self.store.head(&st.container, &st.name).await
            {
                Ok(p) if own_commit(&p, st, &commit_id) => Ok((p.etag, None)),
                // A new blob's name may hold uncommitted blocks (an upload that was cut
                // off), which some services count as existing for Put Blob: a block list is
                // refused only by a committed blob.
                Err(BlobError::NotFound) if st.base.is_none() && put_blob => {
                    self.commit_blocks(st, cond.clone()).await?
                }
                Ok(_) | Err(BlobError::NotFound) => Err(e),
                Err(h) => Err(h),
            },
            r => r,
        };
        match result {
            // Only metadata changed (times, mode, attributes): the writer has no data at stake,
            // so no sibling is made; the caller may make the change again on the new version.
            Err(e) if changed_elsewhere(&e) && !st.data_dirty => {
                Stats::add(&self.stats.conflicts, 1);
                st.failed = true;
                Err(WriteError::Outdated)
            }
            Ok((etag, committed)) => {
                Stats::add(&self.stats.commits, 1);
                let size = st.size;
                st.base = Some(Base {
                    etag: etag.clone(),
                    size,
                    committed,
                });
                st.base_len = size;
                self.discard(st);
                self.drop_snapshot(st).await;
                Ok(Some(Committed { etag, size }))
            }
            Err(e) if changed_elsewhere(&e) => {
                Stats::add(&self.stats.conflicts, 1);
                let saved = self.save_conflict(st).await;
                st.failed = true;
                // Data that could not be kept in a sibling stays, for the close to keep it
                // locally.
                if saved.is_ok() {
                    self.discard(st);
                    self.drop_snapshot(st).await;
                }
                match saved {
                    Ok(sibling) => {
                        tracing::error!(
                            container = %st.container,
                            blob = %st.name,
                            kept_in = %sibling,
                            "commit refused: the blob was changed elsewhere first; \
                             this writer's data is kept in the sibling"
                        );
                        Err(WriteError::Conflict(sibling))
                    }
                    Err(e) => {
                        tracing::error!(
                            container = %st.container,
                            blob = %st.name,
                            error = %e,
                            "commit refused: the blob was changed elsewhere first, \
                             and this writer's data could not be kept"
                        );
                        Err(WriteError::Lost(e.to_string()))
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stages what is not staged yet and commits the block list. The outer error is one to
    /// return as it is; the inner one is the commit's answer.
    async fn commit_blocks(
        &self,
        st: &mut State,
        cond: Condition,
    ) -> Result<Result<(String, Option<Vec<(String, u64)>>), BlobError>, WriteError> {
        match self.stage_all(st).await {
            Ok(list) => {
                let ids: Vec<String> = list.iter().map(|(id, _)| id.clone()).collect();
                Ok(self
                    .store
                    .put_block_list_with(
                        &st.container,
                        &st.name,
                        &ids,
                        cond,
                        &st.metadata,
                        &st.headers,
                    )
                    .await
                    .map(|etag| (etag, Some(list))))
            }
            Err(WriteError::Storage(e)) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Stages every block that is not already in storage, runs of them as one Put Block;
    /// returns the block list in order.
    async fn stage_all(&self, st: &mut State) -> Result<Vec<(String, u64)>, WriteError> {
        let n = st.size.div_ceil(BLOCK);
        let needs_base = (0..n).any(|i| !st.blocks.contains_key(&i) && i * BLOCK < st.base_len);
        if needs_base
            && let Some(b) = &st.base
            && b.committed.is_none()
        {
            let (etag, list) = self.store.get_block_list(&st.container, &st.name).await?;
            if etag != b.etag {
                return Err(BlobError::PreconditionFailed.into());
            }
            if let Some(b) = &mut st.base {
                b.committed = Some(list);
            }
        }
        let torn = torn_groups(st, n);
        let most = self.most_grouped();
        let mut reused: BTreeMap<u64, (u64, Vec<(String, u64)>)> = BTreeMap::new();
        // The first block of a run of dirty blocks not sent yet.
        let mut run: Option<u64> = None;
        let mut i = 0;
        while i < n {
            let want = len_of(st.size, i);
            let kept = match st.blocks.get(&i) {
                Some(Block::Uploading { len, .. } | Block::Staged { len, .. }) => {
                    *len == want && !torn.contains(&i)
                }
                _ => false,
            };
            let reuse = match st.blocks.get(&i) {
                None if !kept => self.reusable(st, i, n),
                _ => None,
            };
            if kept || reuse.is_some() {
                if let Some(start) = run.take() {
                    self.seal_run(st, start, i, None);
                }
                match reuse {
                    Some((j, ids)) => {
                        reused.insert(i, (j, ids));
                        i = j;
                    }
                    None => i += 1,
                }
                continue;
            }
            if !matches!(st.blocks.get(&i), Some(Block::Dirty { .. })) {
                let content = self.load(st, i).await?;
                let len = content.len();
                self.make_dirty(st, i, content, len).await?;
            }
            let start = *run.get_or_insert(i);
            i += 1;
            if i - start == most {
                self.seal_run(st, start, i, None);
                run = None;
            }
        }
        if let Some(start) = run {
            self.seal_run(st, start, n, None);
        }
        let mut list: Vec<(String, u64)> = Vec::new();
        let mut i = 0;
        while i < n {
            if let Some((j, ids)) = reused.remove(&i) {
                list.extend(ids);
                i = j;
                continue;
            }
            if self.settle(st, i).await.is_err() {
                // One more try for a block whose upload failed (its bytes came back), within
                // what is left of the commit's operation.
                self.seal_within(st, i, crate::blob::deadline::remaining());
                self.settle(st, i).await?;
            }
            match (st.blocks.get(&i), list.last_mut()) {
                // The next part of a block sent with the one before.
                (Some(Block::Staged { id, len, span, .. }), Some((last, at)))
                    if span > len && last == id =>
                {
                    *at += len;
                }
                (Some(Block::Staged { id, len, .. }), _) => list.push((id.clone(), *len)),
                _ => return Err(BlobError::BadResponse("block not staged".into()).into()),
            }
            i += 1;
        }
        Ok(list)
    }

    /// The base's committed blocks that make up exactly draft blocks `i..j` for the
    /// smallest such `j`, if the draft left all of those blocks untouched and their ids have
    /// the length of this writer's ids (a blob's ids must all be one length): one committed
    /// block may span several draft blocks (a group), or several make up one (another
    /// tool's smaller blocks).
    fn reusable(&self, st: &State, i: u64, n: u64) -> Option<(u64, Vec<(String, u64)>)> {
        let from = i * BLOCK;
        let committed = st.base.as_ref()?.committed.as_ref()?;
        let mut at = 0u64;
        let mut out = Vec::new();
        for (id, len) in committed {
            let next = at + len;
            if next <= from || *len == 0 {
                at = next;
                continue;
            }
            if at < from || id.len() != ID_LEN || next > st.base_len {
                return None;
            }
            let last = (next - 1) / BLOCK;
            if last >= n || (at / BLOCK..=last).any(|b| st.blocks.contains_key(&b)) {
                return None;
            }
            out.push((id.clone(), *len));
            if next == last * BLOCK + len_of(st.size, last) {
                return Some((last + 1, out));
            }
            at = next;
        }
        None
    }

    /// Writes the whole draft to a new sibling blob; returns its name.
    async fn save_conflict(&self, st: &mut State) -> Result<String, WriteError> {
        let host = hostname();
        let stamp = meta::sortable_stamp(SystemTime::now());
        let original = st.name.clone();
        let mut attempt = 0;
        loop {
            let sibling = match attempt {
                0 => format!("{original}.conflict-{stamp}-{host}"),
                n => format!("{original}.conflict-{stamp}-{host}-{n}"),
            };
            let n = st.size.div_ceil(BLOCK);
            let mut contents = Vec::new();
            // The bytes come from this draft (memory or spill) and from the base it edited.
            let result = if n <= 1 {
                let data = match n {
                    0 => Bytes::new(),
                    _ => Bytes::from(self.load(st, 0).await?),
                };
                self.store
                    .put_with(
                        &st.container,
                        &sibling,
                        data,
                        Condition::IfNoneMatchAny,
                        &st.metadata,
                        &st.headers,
                    )
                    .await
            } else {
                // A few blocks in flight while the next are read: a large sibling should not
                // take a round trip per block. Uploads also count against `--max-requests`.
                let mut uploads = tokio::task::JoinSet::new();
                for i in 0..n {
                    let id = self.block_id(st);
                    let data = Bytes::from(self.load(st, i).await?);
                    contents.push(id.clone());
                    let (store, cache) = (self.store.clone(), self.cache.clone());
                    let (container, name) = (st.container.clone(), sibling.clone());
                    uploads.spawn(async move {
                        let put = store.put_block(&container, &name, &id, data);
                        cache.with_permit(put).await
                    });
                    while uploads.len() >= SIBLING_UPLOADS {
                        joined(uploads.join_next().await)?;
                    }
                }
                while let Some(done) = uploads.join_next().await {
                    joined(Some(done))?;
                }
                self.store
                    .put_block_list_with(
                        &st.container,
                        &sibling,
                        &contents,
                        Condition::IfNoneMatchAny,
                        &st.metadata,
                        &st.headers,
                    )
                    .await
            };
            match result {
                Ok(_) => return Ok(sibling),
                Err(e) if changed_elsewhere(&e) && attempt < 5 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether `current` is the commit `id` of this draft: it went through and only its reply was
/// lost.
fn own_commit(current: &BlobProps, st: &State, id: &str) -> bool {
    meta::get(&current.metadata, meta::COMMIT) == Some(id) && current.size == st.size
}

/// Blocks of a conflict sibling uploaded at once (each holds a 4 MiB buffer meanwhile).
const SIBLING_UPLOADS: usize = 4;

/// The outcome of one finished upload task; a task that vanished is an I/O error.
fn joined(
    done: Option<Result<Result<(), BlobError>, tokio::task::JoinError>>,
) -> Result<(), WriteError> {
    match done {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(e)) => Err(WriteError::Storage(BlobError::Transport(format!(
            "an upload task ended: {e}"
        )))),
    }
}

/// Whether a refused commit means that someone else committed first (412 for `If-Match`,
/// 409 `BlobAlreadyExists` for `If-None-Match: *`), as opposed to any other 409.
fn changed_elsewhere(e: &BlobError) -> bool {
    match e {
        BlobError::PreconditionFailed => true,
        BlobError::Conflict(code) => code == "BlobAlreadyExists" || code.is_empty(),
        _ => false,
    }
}

/// Length of the (base64) block ids [`Draft::block_id`] makes: 41 bytes encoded.
const ID_LEN: usize = "batchfs-0123456789abcdef-0123456789abcdef"
    .len()
    .div_ceil(3)
    * 4;

/// Blocks of a Put Block that no longer holds together: one of its blocks was written or
/// cut off since, or no longer has its length in the file (a short last block the file
/// grew past), so the rest must go up again without it.
fn torn_groups(st: &State, n: u64) -> std::collections::HashSet<u64> {
    let mut torn = std::collections::HashSet::new();
    let mut run: Vec<u64> = Vec::new();
    let mut held = 0;
    let mut whole = true;
    let mut of: Option<(&str, u64)> = None;
    for i in 0..=n {
        let part =
            match st.blocks.get(&i) {
                Some(
                    Block::Uploading { id, len, span, .. } | Block::Staged { id, len, span, .. },
                ) if i < n && span > len => Some((id.as_str(), *len, *span)),
                _ => None,
            };
        let same = matches!((part, of), (Some((id, ..)), Some((prev, _))) if id == prev);
        if !same {
            if let Some((_, span)) = of
                && (held != span || !whole)
            {
                torn.extend(run.iter().copied());
            }
            run.clear();
            held = 0;
            whole = true;
            of = part.map(|(id, _, span)| (id, span));
        }
        if let Some((_, len, _)) = part {
            run.push(i);
            held += len;
            whole &= len == len_of(st.size, i);
        }
    }
    torn
}

/// The group of block `i`, as (first block, blocks), for a sequential writer: blocks go up
/// alone for the first 16 MiB of a file (a small file is not held back), then two at a time
/// up to 48 MiB, four up to 112 MiB, then eight (32 MiB per Put Block), at most `most`.
fn group(i: u64, most: u64) -> (u64, u64) {
    let (base, n) = match i {
        0..4 => (0, 1),
        4..12 => (4, 2),
        12..28 => (12, 4),
        _ => (28, 8),
    };
    let n = n.min(most.max(1));
    (base + (i - base) / n * n, n)
}

/// Length of block `i` in a file of `size` bytes.
fn len_of(size: u64, i: u64) -> u64 {
    size.saturating_sub(i * BLOCK).min(BLOCK)
}

/// Runs `job` on the file at `path` on a blocking thread.
async fn on_file(
    path: PathBuf,
    job: impl FnOnce(&std::path::Path) -> std::io::Result<()> + Send + 'static,
) -> Result<(), WriteError> {
    let shown = path.display().to_string();
    let err = |e: String| WriteError::Spill(format!("{shown}: {e}"));
    tokio::task::spawn_blocking(move || job(&path))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
}

/// This machine's name, for conflict siblings (a syscall, not a file read on a runtime thread).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and the last byte is never written below.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(0);
    let name = String::from_utf8_lossy(&buf[..len]);
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if rc != 0 || name.is_empty() {
        "host".into()
    } else {
        name
    }
}

pub mod spill;
#[cfg(test)]
mod tests;
