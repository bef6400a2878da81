//! A reference-model test of the namespace: random sequences of operations by two mounts
//! ("nodes") on one in-memory store, checked after every step against a simple model of what
//! POSIX and SEMANTICS.md promise. With attribute and listing TTLs of zero, each node must see
//! every change the other committed (close-to-open). A failure shrinks to a minimal sequence.
//!
//! The model: files by path, and whether the one directory `d` has a marker. A directory
//! without a marker exists in storage while it holds a file (as blobs other tools write); one
//! that a node emptied stays, for that node only, until it removes it (a phantom). Conflict
//! siblings (`.conflict-`) are left out of the comparison. Files carry one user attribute,
//! `user.tag` (blob metadata), which every kind of rewrite and rename must keep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::accounts::config::parse;
use crate::blob::memory::MemoryStore;

const FILES: [&str; 4] = ["f1", "f2", "d/f1", "d/f2"];

#[derive(Debug, Clone)]
enum Op {
    /// Create or replace (`O_TRUNC`) with this content, then close.
    Put(usize, Vec<u8>),
    /// Open an existing file without truncating, write at an offset, fsync, close.
    Write(usize, u64, Vec<u8>),
    Truncate(usize, u64),
    Rename(usize, usize),
    Unlink(usize),
    Mkdir,
    Rmdir,
    /// Create, write, unlink while open, read back through the handle, close.
    Scratch(usize, Vec<u8>),
    /// Node 0 opens a file for writing; node 1 replaces it; node 0 writes and closes: the
    /// close must fail and node 1's version must stay.
    Race(usize, Vec<u8>),
    /// `setfattr -n user.tag -v <value>`, or `setfattr -x user.tag` for `None`.
    Tag(usize, Option<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotFound,
    Exists,
    NotEmpty,
    NoAttr,
    Failed,
}

fn outcome<T>(r: &Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(FsError::NotFound) => Outcome::NotFound,
        Err(FsError::Exists) => Outcome::Exists,
        Err(FsError::NotEmpty) => Outcome::NotEmpty,
        Err(FsError::NoAttr) => Outcome::NoAttr,
        Err(_) => Outcome::Failed,
    }
}

#[derive(Debug, Default, Clone)]
struct Model {
    files: BTreeMap<&'static str, Vec<u8>>,
    /// `user.tag` of the files that have one.
    tags: BTreeMap<&'static str, String>,
    marker: bool,
    /// Conflict siblings made in `d`: real files, under names the model does not predict.
    siblings_in_d: usize,
    /// Node i emptied `d` (without a marker) and still shows it.
    phantom: [bool; 2],
}

impl Model {
    fn holds(&self) -> bool {
        self.siblings_in_d > 0 || self.files.keys().any(|f| f.starts_with("d/"))
    }

    fn dir_exists(&self) -> bool {
        self.marker || self.holds()
    }

    fn parent_exists(&self, path: &str) -> bool {
        !path.starts_with("d/") || self.dir_exists()
    }

    /// Whether node `n` shows `d`.
    fn shows_dir(&self, n: usize) -> bool {
        self.dir_exists() || self.phantom[n]
    }

    /// Node `n` removed an entry of `d`: if that emptied it, it stays for node `n`.
    fn removed_in_d(&mut self, n: usize) {
        if !self.holds() {
            self.phantom[n] = true;
        }
    }
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    let data = prop::collection::vec(any::<u8>(), 0..40);
    let file = 0..FILES.len();
    let op = prop_oneof![
        3 => (file.clone(), data.clone()).prop_map(|(f, d)| Op::Put(f, d)),
        2 => (file.clone(), 0..50u64, data.clone()).prop_map(|(f, o, d)| Op::Write(f, o, d)),
        1 => (file.clone(), 0..60u64).prop_map(|(f, n)| Op::Truncate(f, n)),
        2 => (file.clone(), file.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => file.clone().prop_map(Op::Unlink),
        1 => Just(Op::Mkdir),
        1 => Just(Op::Rmdir),
        1 => (file.clone(), data.clone()).prop_map(|(f, d)| Op::Scratch(f, d)),
        1 => (file.clone(), data).prop_map(|(f, d)| Op::Race(f, d)),
        2 => (file, prop::option::of(0..3u8)).prop_map(|(f, v)| Op::Tag(f, v)),
    ];
    (0..2usize, op)
}

struct Node {
    ns: Namespace<MemoryStore>,
    root: u64,
}

impl Node {
    /// A node; with `tier`, it reads through a disk tier of its own under `spill`.
    async fn new(store: &Arc<MemoryStore>, spill: &std::path::Path, tier: bool) -> Node {
        let cfg = parse(
            std::path::Path::new("t.toml"),
            "[[account]]\nname = \"acct\"\n[account.storage]\naccount = \"sto\"\nsas = \"sig=x\"\n",
        )
        .expect("config");
        let opts = Options {
            attr_ttl: Duration::ZERO,
            dir_ttl: Duration::ZERO,
            spill_dir: spill.to_path_buf(),
            timeout: Duration::from_secs(5),
            disk: tier.then(|| {
                crate::cache::disk::DiskTier::open(&spill.join("tier"), 64 << 20, Arc::default())
                    .expect("disk tier")
            }),
            ..Options::default()
        };
        let ns = Namespace::new(
            vec![Account::new(&cfg.accounts[0], Some(store.clone()))],
            opts,
            Default::default(),
        );
        let mut root = ROOT_INO;
        for seg in ["acct", "storage", "c"] {
            root = ns.lookup(root, seg).await.expect("container").ino;
        }
        Node { ns, root }
    }

    /// The parent directory's inode and the last segment of `path`.
    async fn parent(&self, path: &str) -> Result<(u64, String)> {
        match path.split_once('/') {
            Some((dir, name)) => Ok((self.ns.lookup(self.root, dir).await?.ino, name.into())),
            None => Ok((self.root, path.into())),
        }
    }

    async fn lookup(&self, path: &str) -> Result<Attr> {
        let (dir, name) = self.parent(path).await?;
        self.ns.lookup(dir, &name).await
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let a = self.lookup(path).await?;
        let o = self.ns.open(a.ino, false).await?;
        let data = self.ns.read(o.fh, 0, 1 << 20).await;
        self.ns.release(o.fh).await;
        Ok(data?.to_vec())
    }

    async fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        let fh = match self.lookup(path).await {
            Ok(a) => self.ns.open_truncated(a.ino).await?.fh,
            Err(FsError::NotFound) => {
                let (dir, name) = self.parent(path).await?;
                self.ns.create(dir, &name, 0o644).await?.1.fh
            }
            Err(e) => return Err(e),
        };
        let r = self.write_close(fh, 0, data).await;
        self.ns.release(fh).await;
        r
    }

    async fn write_close(&self, fh: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.ns.write(fh, offset, data).await?;
        self.ns.flush(fh).await
    }

    /// Names and sizes in `dir` ("" for the container), as a listing shows them.
    async fn list(&self, dir: &str) -> Result<BTreeMap<String, Option<u64>>> {
        let ino = match dir {
            "" => self.root,
            d => self.ns.lookup(self.root, d).await?.ino,
        };
        let l = self.ns.listing(ino).await?;
        let entries = l.entries().filter(|e| !e.name.contains(".conflict-"));
        Ok(entries
            .map(|e| {
                let size = (e.attr.kind == Kind::File).then_some(e.attr.size);
                (e.name.clone(), size)
            })
            .collect())
    }
}

async fn apply(nodes: &[Node; 2], model: &mut Model, n: usize, op: &Op) {
    let node = &nodes[n];
    match op {
        Op::Put(f, data) => {
            let path = FILES[*f];
            let r = node.put(path, data).await;
            let want =
                match model.parent_exists(path) || (path.starts_with("d/") && model.phantom[n]) {
                    true => Outcome::Ok,
                    false => Outcome::NotFound,
                };
            assert_eq!(outcome(&r), want, "put {path}: {r:?}");
            if r.is_ok() {
                model.files.insert(path, data.clone());
            }
        }
        Op::Write(f, offset, data) => {
            let path = FILES[*f];
            let r = async {
                let a = node.lookup(path).await?;
                let o = node.ns.open(a.ino, true).await?;
                let r = node.write_close(o.fh, *offset, data).await;
                node.ns.release(o.fh).await;
                r
            }
            .await;
            let Some(content) = model.files.get_mut(path) else {
                assert_eq!(outcome(&r), Outcome::NotFound, "write {path}: {r:?}");
                return;
            };
            r.unwrap_or_else(|e| panic!("write {path}: {e:?}"));
            if !data.is_empty() {
                let end = *offset as usize + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*offset as usize..end].copy_from_slice(data);
            }
        }
        Op::Truncate(f, size) => {
            let path = FILES[*f];
            let r = async {
                let a = node.lookup(path).await?;
                let change = SetAttr {
                    size: Some(*size),
                    ..Default::default()
                };
                node.ns.setattr(a.ino, change).await
            }
            .await;
            match model.files.get_mut(path) {
                Some(content) => {
                    r.unwrap_or_else(|e| panic!("truncate {path}: {e:?}"));
                    content.resize(*size as usize, 0);
                }
                None => assert_eq!(outcome(&r), Outcome::NotFound, "truncate {path}: {r:?}"),
            }
        }
        Op::Rename(a, b) => {
            let (from, to) = (FILES[*a], FILES[*b]);
            let r = async {
                let (p1, n1) = node.parent(from).await?;
                let (p2, n2) = node.parent(to).await?;
                node.ns.rename(p1, &n1, p2, &n2, false).await
            }
            .await;
            let to_parent = model.parent_exists(to) || (to.starts_with("d/") && model.phantom[n]);
            let want = if !model.files.contains_key(from) || !to_parent {
                Outcome::NotFound
            } else {
                Outcome::Ok
            };
            assert_eq!(outcome(&r), want, "rename {from} {to}: {r:?}");
            if r.is_ok() && from != to {
                let content = model.files.remove(from).expect("modelled");
                model.files.insert(to, content);
                // The file moves with its metadata; the one it replaced is gone with its own.
                match model.tags.remove(from) {
                    Some(t) => model.tags.insert(to, t),
                    None => model.tags.remove(to),
                };
                if from.starts_with("d/") {
                    model.removed_in_d(n);
                }
            }
        }
        Op::Unlink(f) => {
            let path = FILES[*f];
            let r = async {
                let (dir, name) = node.parent(path).await?;
                node.ns.unlink(dir, &name).await
            }
            .await;
            let want = match model.files.remove(path) {
                Some(_) => Outcome::Ok,
                None => Outcome::NotFound,
            };
            assert_eq!(outcome(&r), want, "unlink {path}: {r:?}");
            if r.is_ok() {
                model.tags.remove(path);
            }
            if r.is_ok() && path.starts_with("d/") {
                model.removed_in_d(n);
            }
        }
        Op::Mkdir => {
            let r = node.ns.mkdir(node.root, "d", 0o755).await;
            let want = match model.dir_exists() {
                true => Outcome::Exists,
                false => Outcome::Ok,
            };
            assert_eq!(outcome(&r), want, "mkdir d: {r:?}");
            if r.is_ok() {
                model.marker = true;
            }
            model.phantom[n] = false;
        }
        Op::Rmdir => {
            let r = node.ns.rmdir(node.root, "d").await;
            let want = match (model.holds(), model.shows_dir(n)) {
                (true, _) => Outcome::NotEmpty,
                (false, false) => Outcome::NotFound,
                (false, true) => Outcome::Ok,
            };
            // A marker-less directory this node saw empties away with its last file: its
            // rmdir succeeds (rm -r), where the model says it is already gone.
            let vanished = want == Outcome::NotFound && r.is_ok();
            assert!(
                outcome(&r) == want || vanished,
                "rmdir d: {r:?}, want {want:?}"
            );
            if r.is_ok() {
                model.marker = false;
                model.phantom[n] = false;
            }
        }
        Op::Scratch(f, data) => {
            let path = FILES[*f];
            if model.files.contains_key(path) || !model.parent_exists(path) {
                return;
            }
            let (dir, name) = node.parent(path).await.expect("parent exists");
            let (a, o) = node.ns.create(dir, &name, 0o600).await.expect("create");
            node.ns.write(o.fh, 0, data).await.expect("write");
            node.ns.unlink(dir, &name).await.expect("unlink while open");
            let back = node.ns.read(o.fh, 0, 1 << 20).await.expect("read");
            assert_eq!(&back[..], &data[..], "an unlinked open file keeps its data");
            assert_eq!(node.ns.getattr(a.ino).await.expect("fstat").nlink, 0);
            node.ns.flush(o.fh).await.expect("close");
            node.ns.release(o.fh).await;
            if path.starts_with("d/") {
                model.removed_in_d(n);
            }
        }
        Op::Race(f, data) => {
            let path = FILES[*f];
            if !model.files.contains_key(path) {
                return;
            }
            let a = nodes[0].lookup(path).await.expect("exists");
            let o = nodes[0].ns.open(a.ino, true).await.expect("open");
            let theirs = b"theirs".to_vec();
            nodes[1]
                .put(path, &theirs)
                .await
                .expect("the other node's commit");
            let mine = nodes[0].write_close(o.fh, 0, data).await;
            nodes[0].ns.release(o.fh).await;
            // Writing nothing changes nothing, and commits nothing.
            assert_eq!(
                mine.is_err(),
                !data.is_empty(),
                "a commit over a change made elsewhere must fail: {mine:?}"
            );
            model.files.insert(path, theirs);
            // The refusal comes at the write (the base it patches changed: nothing kept) or
            // at the commit (the data is kept in a sibling): which, the model cannot tell.
            if path.starts_with("d/") {
                let d = nodes[0].ns.lookup(nodes[0].root, "d").await.expect("d");
                let l = nodes[0].ns.listing(d.ino).await.expect("list d");
                model.siblings_in_d = l
                    .entries()
                    .filter(|e| e.name.contains(".conflict-"))
                    .count();
            }
        }
        Op::Tag(f, value) => {
            let path = FILES[*f];
            let value = value.map(|v| format!("t{v}"));
            let r = async {
                let a = node.lookup(path).await?;
                let v = value.as_deref().map(str::as_bytes);
                node.ns.setxattr(a.ino, "user.tag", v, 0).await
            }
            .await;
            let want = match (model.files.contains_key(path), &value) {
                (false, _) => Outcome::NotFound,
                (true, None) if !model.tags.contains_key(path) => Outcome::NoAttr,
                (true, _) => Outcome::Ok,
            };
            assert_eq!(outcome(&r), want, "tag {path} {value:?}: {r:?}");
            if r.is_ok() {
                match value {
                    Some(v) => model.tags.insert(path, v),
                    None => model.tags.remove(path),
                };
            }
        }
    }
}

async fn check(nodes: &[Node; 2], model: &Model) {
    for (i, node) in nodes.iter().enumerate() {
        let mut want_root: BTreeMap<String, Option<u64>> = model
            .files
            .iter()
            .filter(|(f, _)| !f.contains('/'))
            .map(|(f, c)| (f.to_string(), Some(c.len() as u64)))
            .collect();
        if model.shows_dir(i) {
            want_root.insert("d".into(), None);
        }
        assert_eq!(node.list("").await.expect("list"), want_root, "node {i}: /");
        if model.shows_dir(i) {
            let want_d: BTreeMap<String, Option<u64>> = model
                .files
                .iter()
                .filter_map(|(f, c)| {
                    Some((f.strip_prefix("d/")?.to_string(), Some(c.len() as u64)))
                })
                .collect();
            assert_eq!(
                node.list("d").await.expect("list d"),
                want_d,
                "node {i}: d/"
            );
        } else {
            assert!(
                matches!(node.lookup("d").await, Err(FsError::NotFound)),
                "node {i}: d"
            );
        }
        for (path, content) in &model.files {
            let got = node.read(path).await.expect("read");
            assert_eq!(&got, content, "node {i}: {path}");
            let ino = node.lookup(path).await.expect("lookup").ino;
            let tag = node.ns.getxattr(ino, "user.tag").await;
            let tag = match tag {
                Ok(t) => Some(String::from_utf8_lossy(&t).into_owned()),
                Err(FsError::NoAttr) => None,
                Err(e) => panic!("node {i}: {path} user.tag: {e:?}"),
            };
            assert_eq!(
                tag.as_ref(),
                model.tags.get(path),
                "node {i}: {path} user.tag"
            );
        }
    }
}

fn run(ops: Vec<(usize, Op)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let spill = tempfile::tempdir().expect("spill dir");
        let store = Arc::new(MemoryStore::new(3));
        store.create_container("c").await.expect("container");
        let nodes = [
            // One node reads through a disk tier, the other does not: both must agree with
            // the model.
            Node::new(&store, spill.path(), true).await,
            Node::new(&store, spill.path(), false).await,
        ];
        let mut model = Model::default();
        for (n, op) in &ops {
            apply(&nodes, &mut model, *n, op).await;
            check(&nodes, &model).await;
        }
        for node in &nodes {
            assert_eq!(node.ns.drafts.len(), 0, "no draft outlives its handles");
        }
    });
}

proptest! {
    // A fixed budget: about a minute in the test command, same cases every run.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0BA7_C4F5),
        ..ProptestConfig::default()
    })]

    #[test]
    fn two_nodes_on_one_store_follow_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
