//! Whole-blob fills (`--disk-cache-fill whole`): after the first read of a blob, the rest of
//! it is pulled into the disk tier in the background, so a random reader soon reads locally.
//!
//! A fill asks storage for large ranges (up to [`FILL_CHUNK`]), a few at a time, each holding
//! one of the request permits that readers use, so a fill never takes more than its share of
//! the link; its bytes are counted in the RAM budget until written, and never enter the RAM
//! page cache, so a fill does not push out what readers use. The reader never waits for a
//! fill. A fill that fails (the blob changed, storage refused) stops with a log line; the next
//! read starts another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{debug, info};

use super::disk::{DiskKey, DiskTier};
use super::{BlobRef, Cache, PAGE, Source};
use crate::blob::BlobError;
use crate::stats::Stats;

/// Largest GET of a fill.
const FILL_CHUNK: u64 = 8 << 20;
/// GETs of one fill in flight at once.
const FILL_PARALLEL: usize = 4;
/// A fill that failed is not tried again for the same blob version before this.
const RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillMode {
    /// Keep the pages readers fetch, nothing more.
    Pages,
    /// Also fetch the rest of every blob read (that fits in the tier).
    Whole,
}

impl std::str::FromStr for FillMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pages" => Ok(FillMode::Pages),
            "whole" => Ok(FillMode::Whole),
            _ => Err(format!("{s}: use pages or whole")),
        }
    }
}

/// The fills running now, one per blob version, and when the last one of each failed.
pub(super) struct Fills {
    mode: FillMode,
    running: Mutex<HashMap<Arc<str>, Option<Instant>>>,
}

impl Fills {
    pub(super) fn new(mode: FillMode) -> Self {
        Fills {
            mode,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a fill of `blob` unless one runs, it is held whole, or it cannot fit.
    pub(super) fn start<S: Source>(
        &self,
        cache: &Arc<Cache>,
        blob: &BlobRef<S>,
        tier: &Arc<DiskTier>,
        key: &Arc<DiskKey>,
    ) {
        if self.mode != FillMode::Whole {
            return;
        }
        {
            // `None`: running now; `Some(t)`: failed at t (a fill that cannot be kept must
            // not download the blob again at every jump).
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|_, failed| failed.is_none_or(|t| t.elapsed() < RETRY_AFTER));
            match running.get(&blob.id) {
                Some(None) => return,
                Some(Some(t)) if t.elapsed() < RETRY_AFTER => return,
                _ => {}
            }
            if tier.is_whole(key) || !tier.fits(key.size) {
                return;
            }
            running.insert(blob.id.clone(), None);
        }
        let (cache, tier, key) = (cache.clone(), tier.clone(), key.clone());
        let (store, container, name, etag, id) = (
            blob.store.clone(),
            blob.container.clone(),
            blob.name.clone(),
            blob.etag.clone(),
            blob.id.clone(),
        );
        tokio::spawn(async move {
            let result = fill(&cache, &*store, &tier, &key, &container, &name, &etag).await;
            let failed = match result {
                Ok(()) if tier.is_whole(&key) => {
                    Stats::add(&cache.stats.disk_fills, 1);
                    debug!("filled {container}/{name} into the disk cache");
                    false
                }
                // Pages went missing meanwhile (evicted, or a bad page): try again later.
                Ok(()) => true,
                Err(e) => {
                    info!("disk cache fill of {container}/{name} stopped: {e}");
                    true
                }
            };
            let mut running = cache
                .fills
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match failed {
                true => running.insert(id, Some(Instant::now())),
                false => running.remove(&id),
            };
        });
    }
}

async fn fill<S: Source>(
    cache: &Arc<Cache>,
    store: &S,
    tier: &Arc<DiskTier>,
    key: &Arc<DiskKey>,
    container: &str,
    name: &str,
    etag: &str,
) -> Result<(), BlobError> {
    // A quarter of the RAM budget at most is in flight for a fill.
    let chunk_pages = (FILL_CHUNK.min(cache.budget / 16) / PAGE).max(1);
    let runs: Vec<(u64, u64)> = tier
        .missing(key, 0, key.size.div_ceil(PAGE))
        .into_iter()
        .flat_map(|(a, b)| {
            (a..b)
                .step_by(chunk_pages as usize)
                .map(move |p| (p, (p + chunk_pages).min(b)))
        })
        .collect();
    let mut results = futures::stream::iter(runs)
        .map(|run| async move {
            let start = run.0 * PAGE;
            let len = (run.1 * PAGE).min(key.size) - start;
            cache.reserve(len).await;
            let got = cache
                .with_permit(store.get_range(container, name, start, len, Some(etag)))
                .await;
            let res = match got {
                Ok(data) if data.len() as u64 == len => {
                    let (tier, key) = (tier.clone(), key.clone());
                    let kept =
                        tokio::task::spawn_blocking(move || tier.write(&key, run.0, &data)).await;
                    match kept {
                        Ok(true) => Ok(()),
                        _ => Err(BlobError::BadResponse(
                            "the disk cache had no room for it".into(),
                        )),
                    }
                }
                Ok(_) => Err(BlobError::PreconditionFailed),
                Err(e) => Err(e),
            };
            cache.release(len);
            res
        })
        .buffer_unordered(FILL_PARALLEL);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}
