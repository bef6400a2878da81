//! The cache over an in-memory store: what each access pattern costs, and the budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::blob::memory::MemoryStore;
use crate::blob::{BlobStore, Condition};

const MIB: u64 = 1 << 20;

async fn blob_of(len: usize) -> (Arc<MemoryStore>, BlobRef<MemoryStore>, Vec<u8>) {
    let store = Arc::new(MemoryStore::new(5000));
    store.create_container("c").await.unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let etag = store
        .put(
            "c",
            "b",
            Bytes::from(data.clone()),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let blob = BlobRef::new(store.clone(), 0, "c".into(), "b".into(), etag, len as u64);
    (store, blob, data)
}

fn cache(budget: u64) -> Arc<Cache> {
    Arc::new(Cache::new(budget, 8, Arc::default()))
}

async fn read_all(c: &Arc<Cache>, blob: &BlobRef<MemoryStore>, step: u64) -> Vec<u8> {
    let ra = Mutex::new(Readahead::default());
    let mut out = Vec::new();
    let mut off = 0;
    while off < blob.size {
        let got = c.read(blob, &ra, off, step).await.unwrap();
        assert!(!got.is_empty());
        off += got.len() as u64;
        out.extend_from_slice(&got);
    }
    out
}

#[tokio::test]
async fn sequential_read_is_correct_and_a_warm_reread_fetches_nothing() {
    let (store, blob, data) = blob_of((20 * MIB + 12345) as usize).await;
    let c = cache(256 * MIB);
    assert!(read_all(&c, &blob, 128 * 1024).await == data);
    let gets = store.gets.load(Ordering::Relaxed);
    assert!(gets < 20, "large parallel GETs, not one per read: {gets}");
    assert_eq!(
        store.bytes.load(Ordering::Relaxed),
        data.len() as u64,
        "each byte fetched once"
    );
    assert!(read_all(&c, &blob, MIB).await == data);
    assert_eq!(
        store.gets.load(Ordering::Relaxed),
        gets,
        "warm re-read: no GET"
    );
}

#[tokio::test]
async fn random_small_reads_fetch_one_page_each() {
    let (store, blob, data) = blob_of((64 * MIB) as usize).await;
    let c = cache(256 * MIB);
    let ra = Mutex::new(Readahead::default());
    // The first read of a handle brings FIRST_FETCH; count from after it.
    c.read(&blob, &ra, 0, 4096).await.unwrap();
    let before = store.bytes.load(Ordering::Relaxed);
    let mut x: u64 = 12345;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (blob.size / 4096) * 4096;
        let got = c.read(&blob, &ra, off, 4096).await.unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
    }
    let per_read = (store.bytes.load(Ordering::Relaxed) - before) / 200;
    // The target is 64 KiB per 4 KiB read; a page is 32 KiB, the rest is chance streaks.
    assert!(per_read <= 64 * 1024, "{per_read} bytes per 4 KiB read");
}

#[tokio::test]
async fn the_budget_holds_with_concurrent_readers_of_large_blobs() {
    let (_store, blob, data) = blob_of((48 * MIB) as usize).await;
    let blob = Arc::new(blob);
    let data = Arc::new(data);
    let c = cache(16 * MIB);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, blob, data) = (c.clone(), blob.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            assert!(read_all(&c, &blob, MIB).await == *data);
        }));
    }
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..2000 {
                peak = peak.max(c.lock().used);
                tokio::task::yield_now().await;
            }
            peak
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let peak = watcher.await.unwrap();
    assert!(peak <= 16 * MIB, "peak {peak}");
    assert!(c.stats.evictions.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn readers_share_an_inflight_fetch() {
    let (store, blob, _) = blob_of((4 * MIB) as usize).await;
    let c = cache(64 * MIB);
    let (a, b) = (
        Mutex::new(Readahead::default()),
        Mutex::new(Readahead::default()),
    );
    let (x, y) = tokio::join!(c.read(&blob, &a, 0, 65536), c.read(&blob, &b, 0, 65536));
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_changed_blob_is_refused_not_mixed() {
    let (store, blob, _) = blob_of((8 * MIB) as usize).await;
    let c = cache(64 * MIB);
    let ra = Mutex::new(Readahead::default());
    c.read(&blob, &ra, 0, 4096).await.unwrap();
    store
        .put(
            "c",
            "b",
            Bytes::from(vec![9u8; 8 << 20]),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let err = c.read(&blob, &ra, 6 * MIB, 4096).await.unwrap_err();
    assert_eq!(err, BlobError::PreconditionFailed);
}
