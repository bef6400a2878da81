//! Drafts over an in-memory store: content, what each kind of change costs, and conflicts.

use std::sync::atomic::Ordering;

use super::*;
use crate::blob::memory::MemoryStore;

const MIB: usize = 1 << 20;

struct Fixture {
    store: Arc<MemoryStore>,
    cache: Arc<Cache>,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_budget(64 << 20).await
    }

    async fn with_budget(budget: u64) -> Fixture {
        let store = Arc::new(MemoryStore::new(5000));
        store.create_container("c").await.unwrap();
        Fixture {
            store,
            cache: Arc::new(Cache::new(budget, 8, Arc::default())),
        }
    }

    /// Uploads of `size` from now on, whatever is measured.
    fn pin_uploads(&self, size: u64) {
        self.cache.upload_link(self.store.origin()).pin(size);
    }

    async fn draft(&self, name: &str) -> Draft<MemoryStore> {
        draft_over(&self.store, &self.cache, std::env::temp_dir(), name).await
    }

    fn requests(&self) -> u64 {
        self.store.requests.load(Ordering::Relaxed)
    }

    fn content(&self, name: &str) -> Vec<u8> {
        self.store.content("c", name).expect("blob exists").to_vec()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn write_all<S: BlobStore>(d: &Draft<S>, data: &[u8], step: usize) {
    for (i, chunk) in data.chunks(step).enumerate() {
        d.write((i * step) as u64, chunk).await.unwrap();
    }
}

#[tokio::test]
async fn a_small_file_is_one_put_and_a_large_one_a_block_list() {
    let f = Fixture::new().await;
    let d = f.draft("small").await;
    d.write(0, b"hello").await.unwrap();
    let before = f.requests();
    d.commit().await.unwrap().expect("committed");
    assert_eq!(f.requests() - before, 1);
    assert_eq!(f.content("small"), b"hello");

    let data = pattern(10 * MIB + 123, 1);
    let d = f.draft("large").await;
    write_all(&d, &data, 128 << 10).await;
    let c = d.commit().await.unwrap().expect("committed");
    assert_eq!(c.size, data.len() as u64);
    assert!(f.content("large") == data);
    // Nothing left to commit: a second flush sends nothing.
    let before = f.requests();
    assert!(d.commit().await.unwrap().is_none());
    assert_eq!(f.requests(), before);
}

#[tokio::test]
async fn an_edit_in_the_middle_sends_only_the_blocks_it_touches() {
    let f = Fixture::new().await;
    let mut data = pattern(5 * BLOCK as usize, 2);
    let d = f.draft("big").await;
    write_all(&d, &data, MIB).await;
    d.commit().await.unwrap();
    drop(d);

    let d = f.draft("big").await;
    let at = 2 * BLOCK as usize + 1000;
    let gets = f.store.bytes.load(Ordering::Relaxed);
    d.write(at as u64, b"patch").await.unwrap();
    data[at..at + 5].copy_from_slice(b"patch");
    d.commit().await.unwrap();
    // One block read back (to merge the patch) and nothing else.
    assert_eq!(f.store.bytes.load(Ordering::Relaxed) - gets, BLOCK);
    assert!(f.content("big") == data);

    // Appending reuses every full block and rewrites only the last, partial one.
    let d = f.draft("big").await;
    let tail = pattern(3 * MIB, 3);
    d.write(data.len() as u64, &tail).await.unwrap();
    data.extend_from_slice(&tail);
    d.commit().await.unwrap();
    assert!(f.content("big") == data);
}

#[tokio::test]
async fn truncate_and_regrow_reads_zeros_and_reads_see_the_draft() {
    let f = Fixture::new().await;
    let data = pattern(9 * MIB, 4);
    f.store
        .put(
            "c",
            "t",
            Bytes::from(data.clone()),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let d = f.draft("t").await;
    d.truncate(5 * MIB as u64 + 7).await.unwrap();
    d.truncate(7 * MIB as u64).await.unwrap();
    d.write(MIB as u64, b"xyz").await.unwrap();
    let mut want = data[..5 * MIB + 7].to_vec();
    want.resize(7 * MIB, 0);
    want[MIB..MIB + 3].copy_from_slice(b"xyz");
    let ra = StdMutex::new(Readahead::default());
    let got = d.read(&ra, 0, 8 * MIB as u64).await.unwrap();
    assert!(got == want, "a read of the draft differs");
    d.commit().await.unwrap();
    assert!(f.content("t") == want);
}

#[tokio::test]
async fn a_write_back_into_an_uploaded_block_comes_from_the_spill_file() {
    let f = Fixture::new().await;
    let mut data = pattern(3 * BLOCK as usize, 5);
    let d = f.draft("header").await;
    write_all(&d, &data, MIB).await;
    // Block 0 was sealed and uploaded when the writer moved past it; patch its header.
    d.write(10, b"HEADER").await.unwrap();
    data[10..16].copy_from_slice(b"HEADER");
    let gets = f.store.gets.load(Ordering::Relaxed);
    d.commit().await.unwrap();
    assert_eq!(
        f.store.gets.load(Ordering::Relaxed),
        gets,
        "nothing read back"
    );
    assert!(f.content("header") == data);
}

#[tokio::test]
async fn a_truncation_alone_is_committed_at_the_first_flush() {
    let f = Fixture::new().await;
    f.store
        .put(
            "c",
            "keep",
            Bytes::from_static(b"old"),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let d = f.draft("keep").await;
    d.truncate(0).await.unwrap();
    // `truncate -s 0 f` closes right after: the close must find it in storage.
    d.commit()
        .await
        .unwrap()
        .expect("a bare truncation is committed");
    assert_eq!(f.content("keep"), b"");
    assert!(d.commit().await.unwrap().is_none(), "and only once");
}
#[tokio::test]
async fn a_commit_after_a_change_elsewhere_keeps_both() {
    let f = Fixture::new().await;
    f.store
        .put(
            "c",
            "r",
            Bytes::from_static(b"v1"),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let big = pattern(6 * MIB, 6);
    let small = f.draft("r").await;
    let large = f.draft("r").await;
    small.write(0, b"mine").await.unwrap();
    write_all(&large, &big, MIB).await;
    // Someone else commits first.
    f.store
        .put(
            "c",
            "r",
            Bytes::from_static(b"theirs"),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    for (d, want) in [(&small, b"mine".to_vec()), (&large, big.clone())] {
        match d.commit().await {
            Err(WriteError::Conflict(sibling)) => {
                assert!(sibling.starts_with("r.conflict-"), "{sibling}");
                assert!(f.content(&sibling) == want);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(matches!(d.write(0, b"x").await, Err(WriteError::Failed)));
    }
    assert_eq!(f.content("r"), b"theirs");
    let siblings = f.store.names("c").len();
    assert_eq!(siblings, 3);
}

#[tokio::test]
async fn an_unlinked_draft_commits_nothing() {
    let f = Fixture::new().await;
    let d = f.draft("gone").await;
    d.write(0, b"data").await.unwrap();
    d.unlink().await.unwrap();
    assert!(d.commit().await.unwrap().is_none());
    assert!(f.store.content("c", "gone").is_none());
    // Its handles still read and write what it holds.
    d.write(4, b"more").await.unwrap();
    let ra = std::sync::Mutex::new(Default::default());
    assert_eq!(&d.read(&ra, 0, 100).await.unwrap()[..], b"datamore");
}

#[tokio::test]
async fn an_edit_refused_after_a_replacement_keeps_the_whole_edited_file() {
    let f = Fixture::new().await;
    let mut data = pattern(3 * BLOCK as usize, 8);
    f.store
        .put(
            "c",
            "e",
            Bytes::from(data.clone()),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    let d = f.draft("e").await;
    d.write(BLOCK + 10, b"edit").await.unwrap();
    data[BLOCK as usize + 10..BLOCK as usize + 14].copy_from_slice(b"edit");
    // The version being edited is replaced (and so gone) before the commit.
    f.store
        .put(
            "c",
            "e",
            Bytes::from_static(b"new"),
            Condition::None,
            &Default::default(),
        )
        .await
        .unwrap();
    match d.commit().await {
        Err(WriteError::Conflict(sibling)) => assert!(f.content(&sibling) == data),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(f.content("e"), b"new");

    // After a commit that went through, no snapshot is left behind.
    let d = f.draft("e").await;
    d.write(0, b"x").await.unwrap();
    d.commit().await.unwrap();
    let big = f.draft("e").await;
    big.truncate(2 * BLOCK + 5).await.unwrap();
    big.write(BLOCK, b"y").await.unwrap();
    big.commit().await.unwrap();
    assert!(f.store.snapshot_count() == 0);
}

#[test]
fn block_ids_have_the_length_reuse_checks_for() {
    let raw = format!("batchfs-{:016x}-{:016x}", u64::MAX, 7u64);
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(raw).len(),
        ID_LEN
    );
}

#[tokio::test]
async fn a_new_file_commits_over_uncommitted_blocks_left_by_another_writer() {
    let f = Fixture::new().await;
    // An upload cut off before its commit left a staged block under the name.
    let stale = base64::engine::general_purpose::STANDARD.encode(format!("{:041}", 0));
    f.store
        .put_block("c", "n", &stale, Bytes::from_static(b"stale"))
        .await
        .unwrap();
    let d = f.draft("n").await;
    d.write(0, b"small").await.unwrap();
    d.commit().await.unwrap().expect("committed");
    assert_eq!(f.content("n"), b"small");
    // A new file of exactly one block: its staged block is committed, not sent again.
    let d = f.draft("one-block").await;
    let data = pattern(BLOCK as usize, 3);
    write_all(&d, &data, 1 << 20).await;
    let puts_before = f.requests();
    d.commit().await.unwrap().expect("committed");
    assert_eq!(f.content("one-block"), data);
    assert!(
        f.requests() - puts_before <= 2,
        "no second upload of the block"
    );
}

#[tokio::test]
async fn a_long_sequential_write_goes_up_in_larger_blocks_that_later_edits_reuse() {
    let f = Fixture::with_budget(256 << 20).await;
    // A link that rewards large uploads.
    f.pin_uploads(8 * BLOCK);
    let mut data = pattern(40 * BLOCK as usize, 4);
    let d = f.draft("long").await;
    write_all(&d, &data, MIB).await;
    d.commit().await.unwrap().expect("committed");
    assert!(f.content("long") == data);
    let (_, list) = f.store.get_block_list("c", "long").await.unwrap();
    let sizes: Vec<u64> = list.iter().map(|(_, n)| n / BLOCK).collect();
    // Alone for 16 MiB, then by twos, fours and eights; the tail at the commit as one.
    assert_eq!(sizes, [1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 4]);

    // An append reuses every block, large ones included: nothing is read back.
    let d = f.draft("long").await;
    let bytes = f.store.bytes.load(Ordering::Relaxed);
    let tail = pattern(3 * MIB, 5);
    d.write(data.len() as u64, &tail).await.unwrap();
    data.extend_from_slice(&tail);
    d.commit().await.unwrap();
    assert!(f.content("long") == data);
    assert_eq!(f.store.bytes.load(Ordering::Relaxed), bytes);

    // An edit inside a block of two reads back and sends again just those two.
    let d = f.draft("long").await;
    let at = 7 * BLOCK as usize + 7;
    d.write(at as u64, b"patch").await.unwrap();
    data[at..at + 5].copy_from_slice(b"patch");
    d.commit().await.unwrap();
    assert!(f.content("long") == data);
    assert_eq!(f.store.bytes.load(Ordering::Relaxed) - bytes, 2 * BLOCK);
}

#[tokio::test]
async fn a_rewrite_into_a_block_sent_with_others_sends_them_again() {
    let f = Fixture::with_budget(256 << 20).await;
    let mut data = pattern(12 * BLOCK as usize, 6);
    let d = f.draft("torn").await;
    write_all(&d, &data, MIB).await;
    // Block 5 went up with block 4; it changes before the commit.
    let at = 5 * BLOCK as usize + 10;
    d.write(at as u64, b"again").await.unwrap();
    data[at..at + 5].copy_from_slice(b"again");
    d.commit().await.unwrap().expect("committed");
    assert!(f.content("torn") == data);
    let (_, list) = f.store.get_block_list("c", "torn").await.unwrap();
    let total: u64 = list.iter().map(|(_, n)| n).sum();
    assert_eq!(total, data.len() as u64);
}

/// A draft of `name` in container "c" of `store`, with its copies of uploaded blocks in
/// `spill`.
async fn draft_over<S: BlobStore>(
    store: &Arc<S>,
    cache: &Arc<Cache>,
    spill: std::path::PathBuf,
    name: &str,
) -> Draft<S> {
    let base = store.head("c", name).await.ok();
    Draft::new(
        store.clone(),
        cache.clone(),
        Arc::default(),
        spill,
        Target {
            acct: 0,
            container: "c".into(),
            name: name.into(),
        },
        base.as_ref(),
    )
}

#[tokio::test]
async fn a_short_last_block_sent_with_others_is_not_reused_once_the_file_grows_past_it() {
    use crate::blob::faulty::{Fault, FaultyStore, Op, Rule};
    let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new(5000)), 1));
    store.create_container("c").await.unwrap();
    let cache = Arc::new(Cache::new(256 << 20, 8, Arc::default()));
    cache.upload_link(store.origin()).pin(8 * BLOCK);
    // Blocks 28 and 29 and 1 MiB of block 30 go up as one Put Block at the first commit,
    // whose block list storage refuses.
    let mut data = pattern(30 * BLOCK as usize + MIB, 7);
    let d = draft_over(&store, &cache, std::env::temp_dir(), "short").await;
    write_all(&d, &data, MIB).await;
    store.add(
        Rule::on(
            Op::PutBlockList,
            Fault::Fail(BlobError::Transport("down".into())),
        )
        .times(1),
    );
    assert!(d.commit().await.is_err());
    // The file grows past its short block without writing it: zeros follow the old end.
    d.truncate(32 * BLOCK).await.unwrap();
    data.resize(32 * BLOCK as usize, 0);
    d.commit().await.unwrap().expect("committed");
    let stored = store.inner().content("c", "short").expect("blob exists");
    assert_eq!(stored.len(), data.len());
    assert!(
        stored == data,
        "content after growing past a short grouped block differs"
    );
}

#[tokio::test]
async fn without_a_spill_file_a_rewrite_into_a_group_still_commits() {
    let f = Fixture::with_budget(256 << 20).await;
    // No spill file can be made under a regular file.
    let nowhere = std::path::PathBuf::from("/dev/null/spill");
    let mut data = pattern(12 * BLOCK as usize, 8);
    let d = draft_over(&f.store, &f.cache, nowhere, "nospill").await;
    write_all(&d, &data, MIB).await;
    // All of block 5, which would go up with block 4 as the writer passed it, is written
    // again: block 4's bytes are nowhere but in storage's uncommitted block.
    let again = pattern(BLOCK as usize, 9);
    d.write(5 * BLOCK, &again).await.unwrap();
    data[5 * BLOCK as usize..6 * BLOCK as usize].copy_from_slice(&again);
    d.commit().await.unwrap().expect("committed");
    assert!(f.content("nospill") == data);
}

#[tokio::test]
async fn a_link_that_rewards_small_uploads_gets_blocks_alone() {
    let f = Fixture::with_budget(256 << 20).await;
    // A per-connection cap: many 4 MiB uploads at once beat a few large ones.
    f.pin_uploads(BLOCK);
    let data = pattern(40 * BLOCK as usize, 3);
    let d = f.draft("capped").await;
    write_all(&d, &data, MIB).await;
    d.commit().await.unwrap().expect("committed");
    assert!(f.content("capped") == data);
    let (_, list) = f.store.get_block_list("c", "capped").await.unwrap();
    let sizes: Vec<u64> = list.iter().map(|(_, n)| n / MIB as u64).collect();
    assert!(sizes.iter().all(|&n| n == 4), "{sizes:?}");
}

#[tokio::test]
async fn a_rewrite_keeps_the_content_headers_and_drops_the_old_md5() {
    let f = Fixture::new().await;
    let headers = SystemProps {
        content_type: Some("text/csv".into()),
        content_md5: Some("1B2M2Y8AsgTpgAEHEjGoTw==".into()),
        content_encoding: Some("gzip".into()),
        content_language: Some("en".into()),
        content_disposition: Some("attachment".into()),
        cache_control: Some("no-cache".into()),
        ..Default::default()
    };
    for (name, len) in [("small", 10), ("large", 2 * BLOCK as usize + 5)] {
        let d = f.draft(name).await;
        write_all(&d, &pattern(len, 4), MIB).await;
        d.commit().await.unwrap();
        drop(d);
        let cond = Condition::None;
        (f.store.set_content_headers("c", name, &headers, cond))
            .await
            .unwrap();

        // Put Blob for the small file, a block list for the large one.
        let d = f.draft(name).await;
        d.write(1, b"edit").await.unwrap();
        d.commit().await.unwrap().expect("committed");
        let after = f.store.head("c", name).await.unwrap().system.unwrap();
        assert_eq!(
            *after,
            SystemProps {
                content_md5: None,
                access_tier: after.access_tier.clone(),
                blob_type: after.blob_type.clone(),
                lease_state: after.lease_state.clone(),
                ..headers.clone()
            },
            "{name}"
        );
    }
    // A new file gets the default type.
    let d = f.draft("new").await;
    d.write(0, b"x").await.unwrap();
    d.commit().await.unwrap();
    let p = f.store.head("c", "new").await.unwrap();
    assert_eq!(
        p.system().content_type.as_deref(),
        Some("application/octet-stream")
    );
}
