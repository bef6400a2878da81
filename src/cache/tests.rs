//! The cache over an in-memory store: what each access pattern costs, and the budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::blob::memory::MemoryStore;
use crate::blob::{BlobStore, Condition};
use disk::DiskTier;

const MIB: u64 = 1 << 20;

async fn blob_of(len: usize) -> (Arc<MemoryStore>, BlobRef<MemoryStore>, Vec<u8>) {
    let store = Arc::new(MemoryStore::new(5000));
    store.create_container("c").await.unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let blob = put_b(&store, &data).await;
    (store, blob, data)
}

/// Writes `data` as blob "b" of container "c"; returns the new version.
async fn put_b(store: &Arc<MemoryStore>, data: &[u8]) -> BlobRef<MemoryStore> {
    let etag = store
        .put(
            "c",
            "b",
            Bytes::copy_from_slice(data),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    BlobRef::new(
        store.clone(),
        0,
        "c".into(),
        "b".into(),
        etag,
        data.len() as u64,
    )
}

fn cache(budget: u64) -> Arc<Cache> {
    Arc::new(Cache::new(budget, 8, Arc::default()))
}

async fn read_all<S: Source>(c: &Arc<Cache>, blob: &BlobRef<S>, step: u64) -> Vec<u8> {
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

fn cache_on_disk(budget: u64, dir: &std::path::Path, fill: FillMode) -> Arc<Cache> {
    let stats = Arc::new(Stats::default());
    let tier = DiskTier::open(dir, 256 * MIB, stats.clone()).unwrap();
    Arc::new(Cache::with_disk(budget, 8, stats, Some(tier), fill))
}

/// Waits until the disk tier has written what was handed to it (it writes on blocking
/// threads, behind the reader).
async fn settle(c: &Cache, what: impl Fn(&Stats) -> bool) {
    for _ in 0..500 {
        if what(&c.stats) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the disk tier did not settle: {:?}", c.stats.snapshot());
}

#[tokio::test]
async fn a_reread_past_the_ram_budget_comes_from_disk_and_survives_a_new_cache() {
    let (store, blob, data) = blob_of((40 * MIB) as usize).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let c = cache_on_disk(16 * MIB, dir.path(), FillMode::Pages);
        assert!(read_all(&c, &blob, MIB).await == data);
        settle(&c, |s| {
            s.disk_written_bytes.load(Ordering::Relaxed) == 40 * MIB
        })
        .await;
        let gets = store.gets.load(Ordering::Relaxed);
        assert!(read_all(&c, &blob, MIB).await == data, "second pass");
        assert_eq!(
            store.gets.load(Ordering::Relaxed),
            gets,
            "no GET: RAM held 16 MiB"
        );
        assert!(c.stats.disk_hits.load(Ordering::Relaxed) > 0);
        // The tier is dropped with the cache, as at unmount, once the tasks of the GETs
        // that fed the reader (gone now) have seen it leave.
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let c = cache_on_disk(16 * MIB, dir.path(), FillMode::Pages);
    let gets = store.gets.load(Ordering::Relaxed);
    assert!(read_all(&c, &blob, MIB).await == data, "after a 'remount'");
    assert_eq!(store.gets.load(Ordering::Relaxed), gets);
    // Another version of the blob is not served from the tier.
    store
        .put(
            "c",
            "b",
            Bytes::from(vec![7u8; data.len()]),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let props = store.head("c", "b").await.unwrap();
    let new = BlobRef::new(
        store.clone(),
        0,
        "c".into(),
        "b".into(),
        props.etag,
        props.size,
    );
    assert!(read_all(&c, &new, MIB).await == vec![7u8; data.len()]);
}

#[tokio::test]
async fn a_whole_fill_brings_the_rest_after_one_small_read() {
    let (store, blob, data) = blob_of((24 * MIB + 5) as usize).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache_on_disk(64 * MIB, dir.path(), FillMode::Whole);
    let ra = Mutex::new(Readahead::default());
    let got = c.read(&blob, &ra, 5 * MIB, 4096).await.unwrap();
    assert_eq!(&got[..], &data[5 * MIB as usize..5 * MIB as usize + 4096]);
    settle(&c, |s| s.disk_fills.load(Ordering::Relaxed) == 1).await;
    let tier = c.disk.as_ref().unwrap();
    assert!(tier.is_whole(blob.disk.as_ref().unwrap()));
    let file = c.pin_whole(&blob).unwrap();
    let mut back = vec![0u8; data.len()];
    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut back, 0).unwrap();
    assert!(back == data);
    // Large GETs, not pages: a budget of 64 MiB allows 4 MiB ranges, so 24 MiB split around
    // the reader's own page takes 2 + 5 of them, plus that page.
    assert!(
        store.gets.load(Ordering::Relaxed) <= 8,
        "{}",
        store.gets.load(Ordering::Relaxed)
    );
    // Random reads now come from disk.
    let gets = store.gets.load(Ordering::Relaxed);
    let fresh = Arc::new(Cache::with_disk(
        16 * MIB,
        8,
        c.stats.clone(),
        c.disk.clone(),
        FillMode::Whole,
    ));
    let ra = Mutex::new(Readahead::default());
    for off in [3 * MIB, 17 * MIB, 11 * MIB, 24 * MIB] {
        let got = fresh.read(&blob, &ra, off, 4096).await.unwrap();
        assert_eq!(
            &got[..],
            &data[off as usize..(off as usize + 4096).min(data.len())]
        );
    }
    assert_eq!(store.gets.load(Ordering::Relaxed), gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jumps_answered_at_once_and_readers_on_the_runtime_share_tier_pages() {
    let (store, blob, data) = blob_of((8 * MIB) as usize).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache_on_disk(16 * MIB, dir.path(), FillMode::Pages);
    // The whole blob on disk, nothing in RAM.
    let tier = c.disk.clone().unwrap();
    assert!(tier.write(blob.disk.as_ref().unwrap(), 0, &data));
    let gets = store.gets.load(Ordering::Relaxed);
    let blob = Arc::new(blob);
    let data = Arc::new(data);
    // A thread outside the runtime (as a FUSE thread is) answers jumps at once, while tasks
    // on the runtime read the same pages: a page one of them claims, the others wait for.
    let handle = tokio::runtime::Handle::current();
    let sync_side = {
        let (c, blob, data) = (c.clone(), blob.clone(), data.clone());
        std::thread::spawn(move || {
            let _rt = handle.enter();
            let ra = Mutex::new(Readahead::default());
            let mut at_once = 0;
            for i in 0..3000u64 {
                let off = (i * 7919 * 4096) % (8 * MIB - 4096);
                match c.read_ready(&blob, &ra, off, 4096) {
                    Some(got) => {
                        assert_eq!(&got.unwrap()[..], &data[off as usize..off as usize + 4096]);
                        at_once += 1;
                    }
                    None => {
                        let got = handle.block_on(c.read(&blob, &ra, off, 4096)).unwrap();
                        assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
                    }
                }
            }
            at_once
        })
    };
    let mut tasks = Vec::new();
    for t in 0..2u64 {
        let (c, blob, data) = (c.clone(), blob.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let ra = Mutex::new(Readahead::default());
            for i in 0..3000u64 {
                let off = ((i + t) * 7919 * 4096) % (8 * MIB - 4096);
                let got = c.read(&blob, &ra, off, 4096).await.unwrap();
                assert_eq!(&got[..], &data[off as usize..off as usize + 4096]);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let at_once = sync_side.join().unwrap();
    assert!(at_once > 1000, "most jumps are answered at once: {at_once}");
    assert_eq!(
        store.gets.load(Ordering::Relaxed),
        gets,
        "all from RAM and the tier"
    );
}

#[tokio::test]
async fn reads_under_faults_keep_only_whole_right_pages_in_the_tier() {
    use crate::blob::faulty::{Fault, FaultyStore, Op, Rule, busy};
    let (mem, blob, data) = blob_of((12 * MIB) as usize).await;
    let store = Arc::new(FaultyStore::new(mem.clone(), 7));
    // Replies cut mid-body and throttling, by chance, for every ranged read.
    store.add(Rule::on(Op::GetRange, Fault::CutShort).chance(0.3));
    store.add(Rule::on(Op::GetRange, Fault::Fail(busy())).chance(0.2));
    store.add(Rule::on(Op::OpenRange, Fault::CutShort).chance(0.3));
    store.add(Rule::on(Op::OpenRange, Fault::Fail(busy())).chance(0.2));
    let blob = BlobRef::new(
        store.clone(),
        0,
        "c".into(),
        "b".into(),
        blob.etag,
        blob.size,
    );
    let dir = tempfile::tempdir().unwrap();
    let c = cache_on_disk(16 * MIB, dir.path(), FillMode::Pages);
    let ra = Mutex::new(Readahead::default());
    // Every read either returns the right bytes or fails; none returns other bytes.
    let mut off = 0;
    let mut failed = 0;
    while off < blob.size {
        match c.read(&blob, &ra, off, MIB).await {
            Ok(got) => {
                assert!(got[..] == data[off as usize..off as usize + got.len()]);
                off += got.len() as u64;
            }
            Err(_) => failed += 1,
        }
        assert!(failed < 1000, "the faults never let a read through");
    }
    assert!(failed > 0, "the rules fired");
    // What the tier kept is only ever the blob's own bytes: read back with storage gone.
    settle(&c, |s| {
        s.disk_written_bytes.load(Ordering::Relaxed) > 0 && c.disk.as_ref().unwrap().queue_idle()
    })
    .await;
    store.clear();
    store.add(Rule::on(Op::GetRange, Fault::Fail(busy())));
    store.add(Rule::on(Op::OpenRange, Fault::Fail(busy())));
    let tier = c.disk.clone().unwrap();
    let key = blob.disk.clone().unwrap();
    let mut held = 0;
    for p in 0..blob.size / PAGE {
        if let Some(page) = tier.read(&key, p, p + 1) {
            let at = (p * PAGE) as usize;
            assert!(page[..] == data[at..at + PAGE as usize], "page {p}");
            held += 1;
        }
    }
    assert!(held > 0, "the tier kept what came whole");
}

#[tokio::test]
async fn a_link_that_rewards_one_get_streams_the_blob_through_one_and_survives_a_break() {
    use crate::blob::faulty::{Fault, FaultyStore, Op, Rule};
    let (mem, blob, data) = blob_of((40 * MIB + 777) as usize).await;
    let store = Arc::new(FaultyStore::new(mem.clone(), 3));
    let blob = BlobRef::new(
        store.clone(),
        0,
        "c".into(),
        "b".into(),
        blob.etag,
        blob.size,
    );
    let c = cache(64 * MIB);
    c.links.of(&blob.origin).pin(link::REST);
    assert!(read_all(&c, &blob, 128 * 1024).await == data);
    // The first read's own GET, then one for the rest: not one per window or range.
    let gets = mem.gets.load(Ordering::Relaxed);
    assert!(gets <= 3, "{gets} GETs");

    // The stream breaks halfway (the body ends early): the piece it broke in is read again
    // from a GET opened there, and the reader sees neither an error nor other bytes.
    store.add(Rule::on(Op::OpenRange, Fault::CutShort).nth(1));
    let c = cache(64 * MIB);
    c.links.of(&blob.origin).pin(link::REST);
    let before = mem.gets.load(Ordering::Relaxed);
    assert!(read_all(&c, &blob, 128 * 1024).await == data);
    let gets = mem.gets.load(Ordering::Relaxed) - before;
    assert!(
        (3..=5).contains(&gets),
        "{gets} GETs: the break cost one more"
    );
}

#[tokio::test]
async fn a_reader_whose_file_changes_version_is_not_fed_by_the_old_versions_get() {
    // A handle being written to reads on after a commit: same reader, a new version.
    let (store, old, _) = blob_of((40 * MIB) as usize).await;
    let c = cache(64 * MIB);
    c.links.of(&old.origin).pin(link::REST);
    let ra = Mutex::new(Readahead::default());
    let mut off = 0;
    while off < 16 * MIB {
        off += c.read(&old, &ra, off, 128 * 1024).await.unwrap().len() as u64;
    }
    let new: Vec<u8> = (0..40 * MIB).map(|i| (i * 13 % 241) as u8).collect();
    let blob = put_b(&store, &new).await;
    while off < blob.size {
        let got = c.read(&blob, &ra, off, 128 * 1024).await.unwrap();
        assert!(
            got[..] == new[off as usize..off as usize + got.len()],
            "old bytes at {off}"
        );
        off += got.len() as u64;
    }
}

#[tokio::test]
async fn a_spare_write_buffer_given_up_frees_what_it_held_of_the_budget() {
    let c = cache(64 * MIB);
    assert!(c.try_reserve(8 * MIB));
    let b = c.try_block().expect("room for a block");
    c.release(c.keep_spare(b.freeze(), WRITE_BLOCK as u64));
    assert_eq!(c.lock().used, 8 * MIB + WRITE_BLOCK as u64);
    // Making room evicts the spare: the budget goes back to what the rest holds, not less.
    assert!(c.try_reserve(56 * MIB));
    assert_eq!(c.lock().used, 64 * MIB);
}
