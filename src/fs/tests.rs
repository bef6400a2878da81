//! The namespace over an in-memory store: layout, listing rules and what each operation costs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::*;
use crate::accounts::config::parse;
use crate::blob::memory::MemoryStore;
use crate::blob::{BlobStore, Condition};

fn setup(page: usize) -> (Arc<MemoryStore>, Namespace<MemoryStore>) {
    let cfg = parse(
        std::path::Path::new("t.toml"),
        "[[account]]\nname = \"alpha\"\nprimary_key = \"k\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n\
         [[account]]\nname = \"beta\"\n",
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new(page));
    let accounts = vec![
        Account::new(&cfg.accounts[0], Some(store.clone())),
        Account::new(&cfg.accounts[1], None),
    ];
    (
        store,
        Namespace::new(accounts, Options::default(), Default::default()),
    )
}

async fn put(s: &MemoryStore, c: &str, name: &str, data: &'static [u8]) {
    s.put(
        c,
        name,
        Bytes::from_static(data),
        Condition::None,
        &Default::default(),
    )
    .await
    .unwrap();
}

async fn walk(ns: &Namespace<MemoryStore>, path: &str) -> Result<Attr> {
    let mut ino = ROOT_INO;
    let mut attr = ns.getattr(ino).await?;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        attr = ns.lookup(ino, seg).await?;
        ino = attr.ino;
    }
    Ok(attr)
}

fn names(l: &Listing) -> Vec<&str> {
    l.entries().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn layout_and_pagination() {
    let (store, ns) = setup(3);
    store.create_container("c").await.unwrap();
    for i in 0..10 {
        let name: &'static str = Box::leak(format!("d/f{i}").into_boxed_str());
        put(&store, "c", name, b"x").await;
    }
    put(&store, "c", "top", b"hello").await;
    assert_eq!(
        names(&ns.listing(ROOT_INO).await.unwrap()),
        ["alpha", "beta"]
    );
    let alpha = walk(&ns, "alpha").await.unwrap();
    assert_eq!(
        names(&ns.listing(alpha.ino).await.unwrap()),
        ["account.json", "keys", "storage"]
    );
    let beta = walk(&ns, "beta").await.unwrap();
    assert_eq!(
        names(&ns.listing(beta.ino).await.unwrap()),
        ["account.json"]
    );
    let d = walk(&ns, "alpha/storage/c/d").await.unwrap();
    assert_eq!(d.kind, Kind::Dir);
    assert_eq!(ns.listing(d.ino).await.unwrap().len(), 10);
    let c = walk(&ns, "alpha/storage/c").await.unwrap();
    assert_eq!(names(&ns.listing(c.ino).await.unwrap()), ["d", "top"]);
}

#[tokio::test]
async fn a_fresh_listing_answers_lookups_for_free() {
    let (store, ns) = setup(5000);
    store.create_container("c").await.unwrap();
    put(&store, "c", "a", b"1").await;
    put(&store, "c", "b", b"22").await;
    let c = walk(&ns, "alpha/storage/c").await.unwrap();
    ns.listing(c.ino).await.unwrap();
    let before = store.requests.load(Ordering::Relaxed);
    let b = ns.lookup(c.ino, "b").await.unwrap();
    assert_eq!(b.size, 2);
    assert!(matches!(
        ns.lookup(c.ino, "zzz").await,
        Err(FsError::NotFound)
    ));
    ns.getattr(b.ino).await.unwrap();
    assert_eq!(
        store.requests.load(Ordering::Relaxed),
        before,
        "no request while the listing is fresh"
    );
}

#[tokio::test]
async fn reads_are_pinned_to_the_etag_seen_at_open() {
    let (store, ns) = setup(5000);
    store.create_container("c").await.unwrap();
    let v1: &'static [u8] = Box::leak(vec![1u8; 3 << 20].into_boxed_slice());
    let v2: &'static [u8] = Box::leak(vec![2u8; 3 << 20].into_boxed_slice());
    put(&store, "c", "f", v1).await;
    let f = walk(&ns, "alpha/storage/c/f").await.unwrap();
    let o = ns.open(f.ino, false).await.unwrap();
    assert!(!o.keep_cache, "first open: nothing to keep");
    assert_eq!(&ns.read(o.fh, 0, 7).await.unwrap()[..], &[1u8; 7]);
    put(&store, "c", "f", v2).await;
    // Cached pages of version 1 may still be served; anything fetched now must be refused.
    assert!(matches!(
        ns.read(o.fh, 5 << 19, 4096).await,
        Err(FsError::Stale)
    ));
    ns.release(o.fh).await;
    let o = ns.open(f.ino, false).await.unwrap();
    assert!(
        !o.keep_cache,
        "a new version: the kernel must drop its pages"
    );
    assert_eq!(&ns.read(o.fh, 0, 100).await.unwrap()[..], &[2u8; 100]);
    assert!(ns.read(o.fh, 3 << 20, 10).await.unwrap().is_empty());
    ns.release(o.fh).await;
    assert!(
        ns.open(f.ino, false).await.unwrap().keep_cache,
        "same version: keep"
    );
}

#[tokio::test]
async fn account_files_and_errors() {
    let (_store, ns) = setup(5000);
    let keys = walk(&ns, "alpha/keys").await.unwrap();
    assert_eq!(keys.perm, 0o400);
    let fh = ns.open(keys.ino, false).await.unwrap().fh;
    let text = ns.read(fh, 0, 4096).await.unwrap();
    assert!(
        std::str::from_utf8(&text)
            .unwrap()
            .contains("\"primary\": \"k\"")
    );
    assert!(matches!(
        walk(&ns, "beta/keys").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        walk(&ns, "beta/storage").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        walk(&ns, "alpha/keys/x").await,
        Err(FsError::NotDir)
    ));
    assert!(matches!(
        walk(&ns, "alpha/storage/nocontainer/x").await,
        Err(FsError::NotFound)
    ));
    let acct = walk(&ns, "alpha").await.unwrap();
    assert!(matches!(
        ns.open(acct.ino, false).await,
        Err(FsError::IsDir)
    ));
}

#[tokio::test]
async fn files_being_written_are_listed_and_an_unlinked_one_is_not() {
    let (store, ns) = setup(5000);
    store.create_container("c").await.unwrap();
    let dir = walk(&ns, "alpha/storage/c").await.unwrap();
    let (a, o) = ns.create(dir.ino, "new", 0o644).await.unwrap();
    ns.write(o.fh, 0, b"hello").await.unwrap();
    // Not committed yet, but this mount shows it, with its size.
    assert!(store.content("c", "new").is_none());
    let l = ns.listing(dir.ino).await.unwrap();
    assert_eq!(names(&l), vec!["new"]);
    assert_eq!(ns.lookup(dir.ino, "new").await.unwrap().size, 5);

    ns.unlink(dir.ino, "new").await.unwrap();
    assert!(names(&ns.listing(dir.ino).await.unwrap()).is_empty());
    assert!(matches!(
        ns.lookup(dir.ino, "new").await,
        Err(FsError::NotFound)
    ));
    // A new file of the same name is another inode, and the old handle commits nothing.
    let (b, o2) = ns.create(dir.ino, "new", 0o644).await.unwrap();
    assert_ne!(a.ino, b.ino);
    ns.write(o2.fh, 0, b"second").await.unwrap();
    ns.flush(o.fh).await.unwrap();
    ns.release(o.fh).await;
    ns.flush(o2.fh).await.unwrap();
    ns.release(o2.fh).await;
    assert_eq!(store.content("c", "new").unwrap(), &b"second"[..]);
    // The commit updated the cached listing: no request to see it.
    let before = store.requests.load(Ordering::Relaxed);
    assert_eq!(ns.lookup(dir.ino, "new").await.unwrap().size, 6);
    assert_eq!(store.requests.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn a_writer_is_not_starved_by_idle_files_holding_the_budget() {
    let (store, _) = setup(5000);
    store.create_container("c").await.unwrap();
    let cfg = parse(
        std::path::Path::new("t.toml"),
        "[[account]]\nname = \"alpha\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n",
    )
    .unwrap();
    let opts = Options {
        cache_size: crate::cache::MIN_BUDGET,
        ..Options::default()
    };
    let ns = Namespace::new(
        vec![Account::new(&cfg.accounts[0], Some(store.clone()))],
        opts,
        Default::default(),
    );
    let dir = walk(&ns, "alpha/storage/c").await.unwrap();
    // One writer, round-robin over more open files than the budget has 4 MiB blocks: each
    // file's first 1 MiB takes a whole block, and no file fills its block.
    let chunk = vec![7u8; 1 << 20];
    let mut handles = Vec::new();
    for i in 0..8 {
        let (_, o) = ns.create(dir.ino, &format!("f{i}"), 0o644).await.unwrap();
        handles.push(o.fh);
    }
    let all = async {
        for &fh in &handles {
            ns.write(fh, 0, &chunk).await.unwrap();
        }
        for &fh in &handles {
            ns.flush(fh).await.unwrap();
            ns.release(fh).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), all)
        .await
        .expect("writers must not wait forever for budget held by idle files");
    for i in 0..8 {
        assert_eq!(store.content("c", &format!("f{i}")).unwrap().len(), 1 << 20);
    }
}

#[tokio::test]
async fn accounts_come_and_go_and_unchanged_files_keep_their_mtime() {
    let (store, ns) = setup(10);
    let cfg = |text: &str| parse(std::path::Path::new("t.toml"), text).unwrap();
    let before = walk(&ns, "alpha/account.json").await.unwrap();
    walk(&ns, "beta").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    // alpha unchanged, beta gone, gamma new.
    let next = cfg(
        "[[account]]\nname = \"alpha\"\nprimary_key = \"k\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n\
         [[account]]\nname = \"gamma\"\n",
    );
    ns.set_accounts(vec![
        Account::new(&next.accounts[0], Some(store.clone())),
        Account::new(&next.accounts[1], None),
    ]);
    let after = walk(&ns, "alpha/account.json").await.unwrap();
    assert_eq!((after.ino, after.mtime), (before.ino, before.mtime));
    assert!(matches!(walk(&ns, "beta").await, Err(FsError::NotFound)));
    walk(&ns, "gamma/account.json").await.unwrap();
    let root = ns.listing(ROOT_INO).await.unwrap();
    assert_eq!(names(&root), ["alpha", "gamma"]);

    // A rotated key changes `keys` and its mtime.
    let rotated = cfg(
        "[[account]]\nname = \"alpha\"\nprimary_key = \"k2\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n",
    );
    ns.set_accounts(vec![Account::new(
        &rotated.accounts[0],
        Some(store.clone()),
    )]);
    let keys = walk(&ns, "alpha/keys").await.unwrap();
    assert!(keys.mtime > before.mtime);
    assert!(matches!(walk(&ns, "gamma").await, Err(FsError::NotFound)));
}

#[tokio::test]
async fn an_attribute_change_costs_a_head_and_a_set_metadata_and_keeps_the_rest() {
    let (store, ns) = setup(100);
    store.create_container("c").await.unwrap();
    let md = [("owner".to_string(), "bob".to_string())].into();
    let data = Bytes::from_static(b"data");
    store
        .put("c", "f", data, Condition::None, &md)
        .await
        .unwrap();
    let f = walk(&ns, "alpha/storage/c/f").await.unwrap();
    let before = store.requests.load(Ordering::Relaxed);
    ns.setxattr(f.ino, "user.tag", Some(b"t"), 0).await.unwrap();
    assert_eq!(store.requests.load(Ordering::Relaxed) - before, 2);
    let p = store.head("c", "f").await.unwrap();
    assert_eq!(meta::get(&p.metadata, "owner"), Some("bob"));
    assert_eq!(meta::get(&p.metadata, "tag"), Some("t"));
    assert_eq!(store.content("c", "f").unwrap(), &b"data"[..]);
    assert_eq!(
        ns.listxattr(f.ino).await.unwrap(),
        ["user.owner", "user.tag"]
    );
    assert!(matches!(
        ns.getxattr(f.ino, "security.selinux").await,
        Err(FsError::NotSupported)
    ));
    assert_eq!(
        ns.getxattr(f.ino, "user.azure.blob_type").await.unwrap(),
        b"BlockBlob"
    );
    // A refused change sends nothing.
    let before = store.requests.load(Ordering::Relaxed);
    let r = ns.setxattr(f.ino, "user.mtime", Some(b"1"), 0).await;
    assert!(matches!(r, Err(FsError::NotPermitted)));
    assert_eq!(store.requests.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn a_link_is_a_blob_holding_its_target() {
    let (store, ns) = setup(100);
    store.create_container("c").await.unwrap();
    // One another tool wrote, in another case.
    let md = [("IS_SYMLINK".to_string(), "True".to_string())].into();
    let target = Bytes::from_static(b"/abs");
    store
        .put("c", "theirs", target, Condition::None, &md)
        .await
        .unwrap();
    put(&store, "c", "plain", b"x").await;
    let c = walk(&ns, "alpha/storage/c").await.unwrap();
    let l = ns.symlink(c.ino, "l", "../t").await.unwrap();
    assert_eq!((l.kind, l.perm, l.size), (Kind::Symlink, 0o777, 4));
    assert_eq!(store.content("c", "l").unwrap(), &b"../t"[..]);
    assert_eq!(ns.readlink(l.ino).await.unwrap(), b"../t");
    assert!(matches!(
        ns.symlink(c.ino, "l", "x").await,
        Err(FsError::Exists)
    ));
    let t = walk(&ns, "alpha/storage/c/theirs").await.unwrap();
    assert_eq!(t.kind, Kind::Symlink);
    assert_eq!(ns.readlink(t.ino).await.unwrap(), b"/abs");
    // A file is no link.
    let p = walk(&ns, "alpha/storage/c/plain").await.unwrap();
    assert!(matches!(ns.readlink(p.ino).await, Err(FsError::Invalid)));
    // Replaced elsewhere by a longer target while this mount still holds the old size: the
    // target is read whole, not cut to the size shown.
    let longer = Bytes::from_static(b"/a/much/longer/target");
    store
        .put("c", "theirs", longer, Condition::None, &md)
        .await
        .unwrap();
    assert_eq!(ns.readlink(t.ino).await.unwrap(), b"/a/much/longer/target");
}
