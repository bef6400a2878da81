//! The namespace over a fault-injecting store, and over trees other tools wrote: what callers
//! get when storage fails, and that nothing is lost or committed behind a caller's back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::accounts::config::parse;
use crate::blob::faulty::{Fault, FaultyStore, Op, Rule, busy, unreachable};
use crate::blob::memory::MemoryStore;
use crate::blob::{BlobStore, Condition};

type Store = FaultyStore<MemoryStore>;

struct Fx {
    store: Arc<Store>,
    ns: Namespace<Store>,
    dir: u64,
    spill: tempfile::TempDir,
}

async fn fx_with(tune: impl FnOnce(&mut Options)) -> Fx {
    let cfg = parse(
        std::path::Path::new("t.toml"),
        "[[account]]\nname = \"acct\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n",
    )
    .unwrap();
    let store = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new(5000)), 42));
    store.create_container("c").await.unwrap();
    let spill = tempfile::tempdir().unwrap();
    let mut opts = Options {
        spill_dir: spill.path().to_path_buf(),
        ..Options::default()
    };
    tune(&mut opts);
    let ns = Namespace::new(
        vec![Account::new(&cfg.accounts[0], Some(store.clone()))],
        opts,
        Default::default(),
    );
    let mut dir = ROOT_INO;
    for seg in ["acct", "storage", "c"] {
        dir = ns.lookup(dir, seg).await.unwrap().ino;
    }
    Fx {
        store,
        ns,
        dir,
        spill,
    }
}

/// A `chmod` as the kernel asks for it.
fn chmod(mode: u16) -> SetAttr {
    SetAttr {
        attrs: AttrChange {
            mode: Some(mode),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn fx() -> Fx {
    fx_with(|_| {}).await
}

impl Fx {
    async fn put(&self, name: &str, data: &[u8], metadata: &[(&str, &str)]) {
        let md: BTreeMap<String, String> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let data = Bytes::copy_from_slice(data);
        let inner = self.store.inner();
        inner
            .put("c", name, data, Condition::None, &md)
            .await
            .unwrap();
    }

    fn content(&self, name: &str) -> Option<Vec<u8>> {
        self.store.inner().content("c", name).map(|b| b.to_vec())
    }

    async fn walk(&self, path: &str) -> Result<Attr> {
        let mut ino = self.dir;
        let mut attr = self.ns.getattr(ino).await?;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            attr = self.ns.lookup(ino, seg).await?;
            ino = attr.ino;
        }
        Ok(attr)
    }

    async fn read_all(&self, fh: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let chunk = self.ns.read(fh, out.len() as u64, 1 << 20).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    fn unsaved(&self) -> Vec<std::path::PathBuf> {
        match std::fs::read_dir(self.spill.path().join("batchfs-unsaved")) {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[tokio::test]
async fn rm_r_of_a_tree_without_markers_succeeds() {
    let f = fx().await;
    for name in ["d/f0", "d/x/f0", "d/x/y/f0"] {
        f.put(name, b"1", &[]).await;
    }
    // As `rm -r d` does it: depth first, files, then each directory once it is empty.
    let d = f.walk("d").await.unwrap().ino;
    let x = f.walk("d/x").await.unwrap().ino;
    f.walk("d/x/y").await.unwrap();
    f.ns.unlink(d, "f0").await.unwrap();
    let y = f.walk("d/x/y").await.unwrap().ino;
    f.ns.unlink(y, "f0").await.unwrap();
    f.ns.rmdir(x, "y")
        .await
        .expect("y vanished with its last file");
    f.ns.unlink(x, "f0").await.unwrap();
    f.ns.rmdir(d, "x")
        .await
        .expect("x vanished with its last file");
    f.ns.rmdir(f.dir, "d").await.expect("d too");
    assert!(matches!(f.walk("d").await, Err(FsError::NotFound)));
    // A name never seen is still not there.
    assert!(matches!(
        f.ns.rmdir(f.dir, "nope").await,
        Err(FsError::NotFound)
    ));
    // A file is not a directory.
    f.put("file", b"1", &[]).await;
    assert!(matches!(
        f.ns.rmdir(f.dir, "file").await,
        Err(FsError::NotDir)
    ));
}

#[tokio::test]
async fn odd_metadata_never_takes_a_directory_down() {
    let f = fx().await;
    f.put("odd/big", b"1", &[("mtime", "18446744073709551615")])
        .await;
    f.put(
        "odd/neg",
        b"1",
        &[("mtime", "-5"), ("mode", "99999999999999999999")],
    )
    .await;
    f.put("odd/rfc", b"1", &[("mtime", "2001-02-03T05:05:06.5+01:00")])
        .await;
    f.put("odd/ok", b"1", &[]).await;
    f.put(
        "odd/m/",
        b"",
        &[("hdi_isfolder", "true"), ("mtime", "nonsense")],
    )
    .await;
    let d = f.walk("odd").await.unwrap().ino;
    let l = f.ns.listing(d).await.unwrap();
    let names: Vec<_> = l.entries().map(|e| e.name.clone()).collect();
    assert_eq!(names, ["big", "m", "neg", "ok", "rfc"]);
    let rfc = f.walk("odd/rfc").await.unwrap();
    let want = SystemTime::UNIX_EPOCH + Duration::new(981_173_106, 500_000_000);
    assert_eq!(rfc.mtime, want, "rclone's RFC 3339 mtime is read");
    assert_eq!(f.walk("odd/neg").await.unwrap().perm, 0o644);
}

#[tokio::test]
async fn an_unlinked_open_file_keeps_its_data_until_the_last_close() {
    let f = fx().await;
    f.put("old", &vec![9u8; 5 << 20], &[]).await;
    // A new temporary file: open, write, unlink, then read and write on.
    let (_, o) = f.ns.create(f.dir, "tmp", 0o600).await.unwrap();
    f.ns.write(o.fh, 0, b"scratch").await.unwrap();
    f.ns.unlink(f.dir, "tmp").await.unwrap();
    assert_eq!(f.read_all(o.fh).await.unwrap(), b"scratch");
    let h = f.ns.handle(o.fh).unwrap();
    let Handle::Draft { ino, .. } = h.as_ref() else {
        panic!("a draft handle");
    };
    assert_eq!(f.ns.getattr(*ino).await.unwrap().nlink, 0);
    f.ns.write(o.fh, 7, b"!").await.unwrap();
    f.ns.flush(o.fh).await.unwrap();
    assert_eq!(f.read_all(o.fh).await.unwrap(), b"scratch!");
    f.ns.release(o.fh).await;
    assert_eq!(f.content("tmp"), None, "nothing of it reaches storage");

    // An existing blob opened for writing and unlinked: its content stays readable, though
    // storage no longer has it.
    let old = f.walk("old").await.unwrap();
    let o = f.ns.open(old.ino, true).await.unwrap();
    f.ns.write(o.fh, 0, b"X").await.unwrap();
    f.ns.unlink(f.dir, "old").await.unwrap();
    assert_eq!(f.content("old"), None);
    let got = f.read_all(o.fh).await.unwrap();
    assert_eq!(got.len(), 5 << 20);
    assert_eq!(&got[..2], b"X\x09");
    assert!(got[1..].iter().all(|b| *b == 9));
    f.ns.release(o.fh).await;
    assert_eq!(f.content("old"), None);
    assert_eq!(f.ns.drafts.len(), 0);
}

#[tokio::test]
async fn a_bare_truncation_is_in_storage_when_close_returns() {
    let f = fx().await;
    f.put("big", &vec![1u8; 1 << 20], &[]).await;
    let a = f.walk("big").await.unwrap();
    // `truncate -s 100 big`: open without O_TRUNC, ftruncate, close.
    let o = f.ns.open(a.ino, true).await.unwrap();
    let change = SetAttr {
        size: Some(100),
        ..Default::default()
    };
    f.ns.setattr(a.ino, change).await.unwrap();
    f.ns.flush(o.fh).await.unwrap();
    assert_eq!(f.content("big").unwrap().len(), 100);
    f.ns.release(o.fh).await;
    // `: > big`: open with O_TRUNC, close.
    let a = f.walk("big").await.unwrap();
    let o = f.ns.open_truncated(a.ino).await.unwrap();
    f.ns.flush(o.fh).await.unwrap();
    assert_eq!(f.content("big").unwrap().len(), 0);
    f.ns.release(o.fh).await;
}

#[tokio::test]
async fn a_close_that_failed_is_never_committed_later_and_its_data_is_kept() {
    let f = fx().await;
    f.put("f", b"old", &[]).await;
    let a = f.walk("f").await.unwrap();
    let o = f.ns.open_truncated(a.ino).await.unwrap();
    f.ns.write(o.fh, 0, b"new data").await.unwrap();
    f.store.add(Rule::on(Op::Put, Fault::Fail(unreachable())));
    assert!(f.ns.flush(o.fh).await.is_err(), "close reports the failure");
    f.ns.release(o.fh).await;
    f.store.clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.content("f").unwrap(), b"old", "the caller was told EIO");
    let kept = f.unsaved();
    assert_eq!(kept.len(), 1, "the data is kept locally");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), b"new data");
    // The file works as before.
    let a = f.walk("f").await.unwrap();
    let o = f.ns.open_truncated(a.ino).await.unwrap();
    f.ns.write(o.fh, 0, b"again").await.unwrap();
    f.ns.flush(o.fh).await.unwrap();
    f.ns.release(o.fh).await;
    assert_eq!(f.content("f").unwrap(), b"again");
}

#[tokio::test]
async fn a_failed_fsync_can_be_retried() {
    let f = fx().await;
    let (_, o) = f.ns.create(f.dir, "g", 0o644).await.unwrap();
    f.ns.write(o.fh, 0, &vec![3u8; 9 << 20]).await.unwrap();
    f.store
        .add(Rule::on(Op::PutBlockList, Fault::Fail(busy())).times(1));
    assert!(f.ns.flush(o.fh).await.is_err());
    assert!(f.content("g").is_none());
    f.ns.flush(o.fh).await.expect("a later fsync succeeds");
    f.ns.release(o.fh).await;
    assert_eq!(f.content("g").unwrap(), vec![3u8; 9 << 20]);
    assert!(f.unsaved().is_empty());
}

#[tokio::test]
async fn a_commit_whose_reply_was_lost_is_not_a_conflict() {
    let f = fx().await;
    // The retry after a lost reply is refused: 409 for a new blob, 412 for an edit.
    let cases = [
        (
            "new",
            Op::Put,
            BlobError::Conflict("BlobAlreadyExists".into()),
            100usize,
        ),
        ("edit", Op::Put, BlobError::PreconditionFailed, 100),
        (
            "large",
            Op::PutBlockList,
            BlobError::PreconditionFailed,
            9 << 20,
        ),
    ];
    for (name, op, refusal, len) in cases {
        if name != "new" {
            f.put(name, b"before", &[]).await;
        }
        let (ino, o) = match f.walk(name).await {
            Ok(a) => (a.ino, f.ns.open_truncated(a.ino).await.unwrap()),
            Err(_) => {
                let (a, o) = f.ns.create(f.dir, name, 0o644).await.unwrap();
                (a.ino, o)
            }
        };
        let data = vec![name.len() as u8; len];
        f.ns.write(o.fh, 0, &data).await.unwrap();
        f.store
            .add(Rule::on(op, Fault::LoseReply(refusal)).times(1));
        f.ns.flush(o.fh)
            .await
            .expect("its own commit is recognised");
        f.store.clear();
        assert_eq!(f.ns.getattr(ino).await.unwrap().size, len as u64);
        f.ns.release(o.fh).await;
        assert_eq!(f.content(name).unwrap(), data, "{name}");
    }
    let l = f.ns.listing(f.dir).await.unwrap();
    assert!(l.entries().all(|e| !e.name.contains(".conflict-")));
}

#[tokio::test]
async fn writing_into_an_outage_stays_within_the_budget_and_fails_in_time() {
    let budget = crate::cache::MIN_BUDGET;
    let f = fx_with(|o| {
        o.cache_size = budget;
        o.timeout = Duration::from_secs(2);
    })
    .await;
    f.store
        .add(Rule::on(Op::PutBlock, Fault::Fail(unreachable())));
    let (_, o) = f.ns.create(f.dir, "big", 0o644).await.unwrap();
    let chunk = vec![5u8; 1 << 20];
    let start = std::time::Instant::now();
    let mut failed = None;
    for i in 0..64u64 {
        if let Err(e) = f.ns.write(o.fh, i << 20, &chunk).await {
            failed = Some((i, e));
            break;
        }
        let held = f.ns.stats().cache_bytes.load(Ordering::Relaxed);
        assert!(held <= budget, "{held} bytes held over a {budget} budget");
    }
    let (at, e) = failed.expect("a writer into an outage gets an error");
    assert!(matches!(e, FsError::Storage(_)), "{e:?}");
    assert!(at < 64);
    assert!(start.elapsed() < Duration::from_secs(10));
    f.ns.release(o.fh).await;
    f.store.clear();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        f.ns.stats().cache_bytes.load(Ordering::Relaxed),
        0,
        "all given back"
    );
    assert!(f.content("big").is_none());
}

#[tokio::test]
async fn a_read_cut_short_or_refused_is_an_error_never_wrong_bytes() {
    let f = fx().await;
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    f.put("r", &data, &[]).await;
    let a = f.walk("r").await.unwrap();
    let o = f.ns.open(a.ino, false).await.unwrap();
    f.store.add(Rule::on(Op::GetRange, Fault::CutShort));
    match f.read_all(o.fh).await {
        Ok(got) => assert_eq!(got, data, "bytes returned must be right"),
        Err(e) => assert!(matches!(e, FsError::Storage(_) | FsError::Stale), "{e:?}"),
    }
    f.store.clear();
    f.store
        .add(Rule::on(Op::GetRange, Fault::Fail(busy())).times(1));
    let first = f.ns.read(o.fh, 0, 4096).await;
    assert!(first.is_err());
    // After the fault, the same handle reads on.
    assert_eq!(f.read_all(o.fh).await.unwrap(), data);
    f.ns.release(o.fh).await;
}

#[tokio::test]
async fn throttled_listings_fail_and_recover_without_a_remount() {
    let f = fx().await;
    f.put("t/a", b"1", &[]).await;
    f.store.add(Rule::on(Op::List, Fault::Fail(busy())));
    f.store.add(Rule::on(Op::Head, Fault::Fail(busy())));
    assert!(matches!(f.walk("t").await, Err(FsError::Storage(_))));
    f.store.clear();
    assert_eq!(f.walk("t/a").await.unwrap().size, 1);
}

#[tokio::test]
async fn an_unlink_that_storage_refuses_leaves_the_open_file_as_it_was() {
    let f = fx().await;
    f.put("keep", &vec![7u8; 5 << 20], &[]).await;
    let a = f.walk("keep").await.unwrap();
    let o = f.ns.open(a.ino, true).await.unwrap();
    f.ns.write(o.fh, 0, b"Z").await.unwrap();
    f.store
        .add(Rule::on(Op::Delete, Fault::Fail(busy())).times(1));
    assert!(f.ns.unlink(f.dir, "keep").await.is_err());
    // Still a file of its directory, and its close commits as before.
    assert_eq!(f.walk("keep").await.unwrap().ino, a.ino);
    f.ns.flush(o.fh).await.unwrap();
    f.ns.release(o.fh).await;
    let got = f.content("keep").unwrap();
    assert_eq!(got.len(), 5 << 20);
    assert_eq!(&got[..2], b"Z\x07");
}

/// An attribute change storage refuses is an error and changes nothing; one whose reply is
/// lost after storage made it is known as made (its commit id), not an error. A link that
/// cannot be written leaves no blob.
#[tokio::test]
async fn attribute_changes_and_links_under_a_failing_store() {
    let f = fx().await;
    f.put("f", b"data", &[("owner", "bob")]).await;
    let ino = f.walk("f").await.unwrap().ino;
    f.store
        .add(Rule::on(Op::SetMetadata, Fault::Fail(unreachable())).times(1));
    assert!(f.ns.setxattr(ino, "user.tag", Some(b"t"), 0).await.is_err());
    let md = f.store.inner().head("c", "f").await.unwrap().metadata;
    assert_eq!(md, [("owner".to_string(), "bob".to_string())].into());
    // The change is made, its reply lost, and the client's retry refused (the ETag moved).
    let refused = BlobError::PreconditionFailed;
    f.store
        .add(Rule::on(Op::SetMetadata, Fault::LoseReply(refused)).times(1));
    f.ns.setxattr(ino, "user.tag", Some(b"t"), 0).await.unwrap();
    let md = f.store.inner().head("c", "f").await.unwrap().metadata;
    assert_eq!(meta::get(&md, "tag"), Some("t"));
    assert_eq!(meta::get(&md, "owner"), Some("bob"));
    assert_eq!(f.content("f").as_deref(), Some(&b"data"[..]));

    f.store
        .add(Rule::on(Op::Put, Fault::Fail(unreachable())).times(1));
    assert!(f.ns.symlink(f.dir, "l", "f").await.is_err());
    assert!(f.content("l").is_none());
    let l = f.ns.symlink(f.dir, "l", "f").await.unwrap();
    assert_eq!(f.ns.readlink(l.ino).await.unwrap(), b"f");
}

/// A change of attributes alone that meets a blob replaced elsewhere after its HEAD is made
/// again on the new version: no conflict sibling (no data of this writer is at stake), the
/// other writer's data and metadata kept, and the change made.
#[tokio::test]
async fn an_attribute_change_that_meets_a_replaced_blob_is_made_again_on_it() {
    let f = fx().await;
    f.put("f", b"old", &[("owner", "bob")]).await;
    let ino = f.walk("f").await.unwrap().ino;
    let f = &f;
    let replace = |owner: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.put("f", b"theirs", &[("owner", owner)]).await;
    };
    // Each change's Set Blob Metadata waits, so the replacement lands between it and its HEAD.
    let hold = || Rule::on(Op::SetMetadata, Fault::Delay(Duration::from_millis(300))).times(1);
    f.store.add(hold());
    let (r, ()) = tokio::join!(
        f.ns.setxattr(ino, "user.tag", Some(b"t"), 0),
        replace("carol")
    );
    r.unwrap();
    let md = f.store.inner().head("c", "f").await.unwrap().metadata;
    assert_eq!(meta::get(&md, "owner"), Some("carol"));
    assert_eq!(meta::get(&md, "tag"), Some("t"));

    f.store.add(hold());
    let mode = chmod(0o600);
    let (r, ()) = tokio::join!(f.ns.setattr(ino, mode), replace("dave"));
    r.unwrap();
    let md = f.store.inner().head("c", "f").await.unwrap().metadata;
    assert_eq!(meta::get(&md, "owner"), Some("dave"));
    assert_eq!(meta::mode(&md), Some(0o600));
    assert_eq!(f.content("f").as_deref(), Some(&b"theirs"[..]));
    assert_eq!(f.store.inner().names("c"), ["f"], "no conflict sibling");
    // Both changes were refused once: the replacement did land between HEAD and change.
    assert_eq!(f.ns.stats().conflicts.load(Ordering::Relaxed), 2);

    // On a file open for writing, with nothing written, the close says the change was
    // outdated: no sibling, and no local copy of data the writer never wrote.
    let o = f.ns.open(ino, true).await.unwrap();
    let mode = chmod(0o640);
    f.ns.setattr(ino, mode).await.unwrap();
    f.put("f", b"replaced again", &[]).await;
    assert!(matches!(f.ns.flush(o.fh).await, Err(FsError::Stale)));
    f.ns.release(o.fh).await;
    assert_eq!(f.content("f").as_deref(), Some(&b"replaced again"[..]));
    assert_eq!(f.store.inner().names("c"), ["f"], "no conflict sibling");
    assert!(f.unsaved().is_empty(), "{:?}", f.unsaved());

    // The same change refused by a failing store: EIO, the blob as it was, and still no
    // local copy (the writer wrote no data; reading the base back would be all it could do).
    let ino = f.walk("f").await.unwrap().ino;
    let o = f.ns.open(ino, true).await.unwrap();
    let mode = chmod(0o604);
    f.ns.setattr(ino, mode).await.unwrap();
    f.store
        .add(Rule::on(Op::SetMetadata, Fault::Fail(unreachable())));
    assert!(f.ns.flush(o.fh).await.is_err());
    f.ns.release(o.fh).await;
    f.store.clear();
    let md = f.store.inner().head("c", "f").await.unwrap().metadata;
    assert_ne!(meta::mode(&md), Some(0o604));
    assert_eq!(f.content("f").as_deref(), Some(&b"replaced again"[..]));
    assert!(f.unsaved().is_empty(), "{:?}", f.unsaved());
}

/// An attribute set on a directory without a marker, while another writer makes its
/// marker: the change is made on theirs, not dropped.
#[tokio::test]
async fn a_directory_attribute_meets_a_marker_made_meanwhile() {
    let f = fx().await;
    f.put("d/x", b"1", &[]).await;
    let d = f.walk("d").await.unwrap().ino;
    let f = &f;
    let theirs = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f.put("d/", b"", &[("hdi_isfolder", "true"), ("owner", "carol")])
            .await;
    };
    let hold = Rule::on(Op::Put, Fault::Delay(Duration::from_millis(300))).times(1);
    f.store.add(hold);
    let (r, ()) = tokio::join!(f.ns.setxattr(d, "user.tag", Some(b"t"), 0), theirs);
    r.unwrap();
    let md = f.store.inner().head("c", "d/").await.unwrap().metadata;
    assert_eq!(meta::get(&md, "owner"), Some("carol"));
    assert_eq!(meta::get(&md, "tag"), Some("t"));
}
