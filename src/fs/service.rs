//! The Batch service as files: `jobs/` and `pools/` under each account, read-only.
//!
//! ```text
//! jobs/<job>/job.json                    Get Job
//! jobs/<job>/tasks/<task>/task.json      Get Task
//! jobs/<job>/tasks/<task>/files/...      List Files From Task, Get File (Properties)
//! jobs/<job>/output                      symlink to the job's output container in storage/
//! pools/<pool>/pool.json                 Get Pool
//! pools/<pool>/nodes/<node>/node.json    Get Compute Node
//! pools/<pool>/nodes/<node>/files/...    List Files From Compute Node, Get File (Properties)
//! ```
//!
//! Costs: listing `jobs/`, `tasks/`, `pools/` or `nodes/` is one List request per 1000 items,
//! with `$select` of the id and a time, and `ls -l` costs nothing more (attributes come from
//! the listing). Listing a job, task, pool or node directory is one Get of its JSON document,
//! which then serves `*.json` for `--attr-timeout`. A `files/` directory is one List Files
//! (the root non-recursively, a subdirectory recursively under a `startswith` filter). A lookup
//! outside a fresh listing is one Get (`$select`ed) or one Get File Properties. Reading a file
//! goes through the page cache in ranged Get File requests, like a blob.
//!
//! Task files grow while their task runs: a file's size is what the last listing or Get File
//! Properties said (re-read after `--attr-timeout`, so `tail -f` sees it grow), and a read
//! never goes past it, so it never returns bytes that were not in the file. Files are not
//! pinned to a version (the service has no ETag for them): a file rewritten in place while
//! open may read as a mix; a file that shrank gives ESTALE.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;

use super::inode::{DirMeta, Meta, NodeKey};
use super::listing::valid_name;
use super::{Attr, Entry, FsError, Handle, Kind, Listing, Namespace, Opened, Result, lock};
use crate::batch::{self, FileItem, FileProps, ServiceClient, conventions, encode_path};
use crate::blob::{BlobError, BlobStore};
use crate::cache::{BlobRef, Readahead, Source};

/// `*.json`: the Get answers carry environment settings, which can hold secrets.
const DOC_MODE: u16 = 0o440;
/// How long a job, task, pool or node seen in a listing is taken to exist without asking.
const LISTED_EXISTS: Duration = Duration::from_secs(60);
/// What a lookup of a node file fetches of it on the side: a read of a log's first 128 KiB
/// (what `cat` asks for first) then costs no request.
const LOOKAHEAD: u64 = 128 * 1024;
/// The most those bytes take (one try); once the lookup's HEAD has answered they get only
/// [`AHEAD_GRACE`] more: they are a bonus, worth at most a short delay.
const AHEAD_WAIT: Duration = Duration::from_secs(2);
const AHEAD_GRACE: Duration = Duration::from_millis(300);

/// A node of the service's trees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Svc {
    Jobs,
    Job(String),
    JobJson(String),
    Tasks(String),
    Task(String, String),
    TaskJson(String, String),
    /// `jobs/<job>/output`, a symlink.
    Output(String),
    Pools,
    Pool(String),
    PoolJson(String),
    Nodes(String),
    Node(String, String),
    NodeJson(String, String),
    /// A directory of a task's or node's files; the path is empty for `files/` itself.
    Dir(Files, String),
    File(Files, String),
}

/// Whose files: a task's (job, task) or a compute node's (pool, node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Files {
    Task(String, String),
    Node(String, String),
}

impl Files {
    /// The URL path of the files root, e.g. `/jobs/j1/tasks/t1/files`.
    fn root(&self) -> String {
        match self {
            Files::Task(j, t) => format!("/jobs/{}/tasks/{}/files", enc(j), enc(t)),
            Files::Node(p, n) => format!("/pools/{}/nodes/{}/files", enc(p), enc(n)),
        }
    }
}

fn enc(id: &str) -> String {
    urlencoding::encode(id).into_owned()
}

fn join(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        d => format!("{d}/{name}"),
    }
}

/// Batch ids: 1-64 letters, digits, `-` and `_`. Anything else is not asked about.
fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Svc {
    pub fn kind(&self) -> Kind {
        match self {
            Svc::JobJson(_)
            | Svc::TaskJson(..)
            | Svc::PoolJson(_)
            | Svc::NodeJson(..)
            | Svc::File(..) => Kind::File,
            Svc::Output(_) => Kind::Symlink,
            _ => Kind::Dir,
        }
    }

    /// The child `name`, if this directory can have one of that name and kind.
    pub fn child(&self, name: &str, is_dir: bool) -> Option<Svc> {
        let s = name.to_string();
        Some(match (self, name) {
            (Svc::Jobs, _) => Svc::Job(s),
            (Svc::Job(j), "job.json") => Svc::JobJson(j.clone()),
            (Svc::Job(j), "tasks") => Svc::Tasks(j.clone()),
            (Svc::Job(j), "output") => Svc::Output(j.clone()),
            (Svc::Tasks(j), _) => Svc::Task(j.clone(), s),
            (Svc::Task(j, t), "task.json") => Svc::TaskJson(j.clone(), t.clone()),
            (Svc::Task(j, t), "files") => {
                Svc::Dir(Files::Task(j.clone(), t.clone()), String::new())
            }
            (Svc::Pools, _) => Svc::Pool(s),
            (Svc::Pool(p), "pool.json") => Svc::PoolJson(p.clone()),
            (Svc::Pool(p), "nodes") => Svc::Nodes(p.clone()),
            (Svc::Nodes(p), _) => Svc::Node(p.clone(), s),
            (Svc::Node(p, n), "node.json") => Svc::NodeJson(p.clone(), n.clone()),
            (Svc::Node(p, n), "files") => {
                Svc::Dir(Files::Node(p.clone(), n.clone()), String::new())
            }
            (Svc::Dir(f, d), _) if is_dir => Svc::Dir(f.clone(), join(d, name)),
            (Svc::Dir(f, d), _) => Svc::File(f.clone(), join(d, name)),
            _ => return None,
        })
    }

    /// The fixed entries of a job, task, pool or node directory.
    fn fixed_names(&self) -> &'static [&'static str] {
        match self {
            Svc::Job(_) => &["job.json", "tasks", "output"],
            Svc::Task(..) => &["task.json", "files"],
            Svc::Pool(_) => &["pool.json", "nodes"],
            Svc::Node(..) => &["node.json", "files"],
            _ => &[],
        }
    }

    /// Where the JSON document of a `*.json` file (or of the directory holding it) is.
    fn doc_path(&self) -> Option<String> {
        Some(match self {
            Svc::Job(j) | Svc::JobJson(j) => format!("/jobs/{}", enc(j)),
            Svc::Task(j, t) | Svc::TaskJson(j, t) => format!("/jobs/{}/tasks/{}", enc(j), enc(t)),
            Svc::Pool(p) | Svc::PoolJson(p) => format!("/pools/{}", enc(p)),
            Svc::Node(p, n) | Svc::NodeJson(p, n) => format!("/pools/{}/nodes/{}", enc(p), enc(n)),
            _ => return None,
        })
    }

    /// The List request of a collection directory, and what it selects.
    fn collection(&self) -> Option<(String, &'static str)> {
        Some(match self {
            Svc::Jobs => ("/jobs".into(), "id,lastModified,creationTime"),
            Svc::Tasks(j) => (
                format!("/jobs/{}/tasks", enc(j)),
                "id,lastModified,creationTime",
            ),
            Svc::Pools => ("/pools".into(), "id,lastModified,creationTime"),
            Svc::Nodes(p) => (
                format!("/pools/{}/nodes", enc(p)),
                "id,stateTransitionTime,allocationTime",
            ),
            _ => return None,
        })
    }
}

/// The time that best says when an item last changed.
fn item_time(v: &Value) -> Option<SystemTime> {
    [
        "lastModified",
        "stateTransitionTime",
        "allocationTime",
        "creationTime",
    ]
    .iter()
    .find_map(|k| batch::parse_time(&v[*k]))
}

/// The most items recursive answers keep in all (a few hundred bytes each).
const MAX_SUBTREE_ITEMS: usize = 100_000;
/// Past this many documents kept, those older than [`DOC_KEEP`] are dropped.
const MAX_DOCS: usize = 4096;
const DOC_KEEP: Duration = Duration::from_secs(10);

/// JSON documents (`job.json`...) as last fetched: the one owner of that state.
#[derive(Default)]
pub struct Docs {
    map: Mutex<HashMap<u64, Doc>>,
}

#[derive(Clone)]
pub struct Doc {
    pub bytes: Arc<[u8]>,
    pub mtime: SystemTime,
    fetched: Instant,
}

impl Docs {
    fn get(&self, ino: u64) -> Option<Doc> {
        lock(&self.map).get(&ino).cloned()
    }

    fn fresh(&self, ino: u64, ttl: std::time::Duration) -> Option<Doc> {
        self.get(ino).filter(|d| d.fetched.elapsed() < ttl)
    }

    fn put(&self, ino: u64, bytes: Vec<u8>, mtime: SystemTime) -> Doc {
        let doc = Doc {
            bytes: bytes.into(),
            mtime,
            fetched: Instant::now(),
        };
        let mut map = lock(&self.map);
        // Documents of entries the kernel never held are not forgotten by it: past a bound,
        // those no longer fresh go (they are fetched again when asked for).
        if map.len() >= MAX_DOCS {
            map.retain(|_, d| d.fetched.elapsed() < DOC_KEEP);
        }
        map.insert(ino, doc.clone());
        doc
    }

    pub fn forget(&self, ino: u64) {
        lock(&self.map).remove(&ino);
    }
}

/// The bytes of task and node files, for the page cache: `container` is a files root
/// ([`Files::root`]) and `name` a path under it.
pub struct NodeFiles(pub Arc<ServiceClient>);

impl Source for NodeFiles {
    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
        _if_match: Option<&str>,
    ) -> std::result::Result<Bytes, BlobError> {
        let path = format!("{container}/{}", encode_path(name));
        self.0.file_range(&path, offset, len).await
    }
}

/// An answer of the service as the caller sees it. A 409 means the node holding the files is
/// not reachable (`TaskFilesUnavailable`, `NodeBeingRebooted`...): EHOSTDOWN; files that
/// were cleaned up are gone for good: ENOENT.
pub fn error(e: BlobError) -> FsError {
    match e {
        BlobError::NotFound => FsError::NotFound,
        BlobError::Conflict(code) if code.to_ascii_lowercase().contains("cleanedup") => {
            FsError::NotFound
        }
        BlobError::Conflict(code) => FsError::Unavailable(code),
        // A range past the end: the file shrank since its size was read.
        BlobError::PreconditionFailed | BlobError::Status { status: 416, .. } => FsError::Stale,
        e => FsError::Storage(e),
    }
}

/// What is known of a node file after `new` came: the answer to the request asked last wins
/// (`fetched` is when a request was sent), so an answer that was overtaken (a listing sent
/// before a HEAD but answered after it) never puts an older size back, which would make the
/// kernel drop pages and `tail -f` start again. A file replaced by an older or smaller one is
/// shown as it is now.
fn learnt(old: Option<Meta>, new: Meta) -> Meta {
    match old {
        Some(old) if old.fetched > new.fetched => old,
        _ => new,
    }
}

/// What a version of a node file is known by: its size and time.
fn version(m: &Meta) -> String {
    let t = m
        .mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}@{}", m.size, t.as_nanos())
}

/// What `p` says of a file, as asked at `asked`.
fn file_meta(p: &FileProps, asked: Instant) -> Meta {
    Meta {
        size: p.size,
        mtime: p.last_modified,
        atime: p.last_modified,
        // Read-only: whatever the node says, no write bits.
        mode: p.mode.map(|m| (m & 0o555) as u16),
        link: false,
        fetched: asked,
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

impl<S: BlobStore> Namespace<S> {
    fn service(&self, acct: usize) -> Result<Arc<ServiceClient>> {
        self.account(acct)?.service.clone().ok_or(FsError::NotFound)
    }

    /// Where `jobs/<job>/output` points, if the job's output container can be in `storage/`.
    fn output_target(&self, acct: usize, job: &str) -> Option<String> {
        let a = self.account(acct).ok()?;
        let storage = a.storage.as_ref()?;
        let container = conventions::output_container(job);
        match &storage.pinned {
            None => Some(format!("../../storage/{container}")),
            Some(c) if *c == container => Some("../../storage".into()),
            Some(_) => None,
        }
    }

    /// Registers a service node under `parent` with what is known of it.
    fn svc_node(&self, acct: usize, svc: Svc, parent: u64, known: Known) -> Attr {
        let key = NodeKey::Service { acct, node: svc };
        let mut t = lock(&self.inodes);
        let ino = t.ino(key.clone(), parent);
        let (meta, dir) = match t.get_mut(ino) {
            Some(n) => {
                match known {
                    Known::Dir(mtime) => n.dir.merge(&DirMeta {
                        mtime,
                        ..Default::default()
                    }),
                    Known::File(p, asked) => {
                        n.meta = Some(learnt(n.meta.take(), file_meta(&p, asked)));
                    }
                    Known::Nothing => {}
                }
                (n.meta.clone(), n.dir)
            }
            None => (None, DirMeta::default()),
        };
        drop(t);
        self.attr_from(ino, &key, meta.as_ref(), dir)
    }

    pub(super) fn svc_attr(
        &self,
        ino: u64,
        acct: usize,
        svc: &Svc,
        meta: Option<&Meta>,
        dir: DirMeta,
    ) -> Attr {
        match svc {
            Svc::Output(job) => {
                let len = self.output_target(acct, job).map_or(0, |t| t.len());
                let mut a = self.file_attr(ino, len as u64, self.mount_time, 0o777);
                a.kind = Kind::Symlink;
                a
            }
            Svc::File(..) => {
                let perm = meta.and_then(|m| m.mode).unwrap_or(0o444);
                let (size, mtime) = meta.map_or((0, self.mount_time), |m| (m.size, m.mtime));
                self.file_attr(ino, size, mtime, perm)
            }
            // Documents may hold environment settings (secrets, at times): owner and group.
            s if s.kind() == Kind::File => match self.docs.get(ino) {
                Some(d) => self.file_attr(ino, d.bytes.len() as u64, d.mtime, DOC_MODE),
                None => self.file_attr(ino, 0, self.mount_time, DOC_MODE),
            },
            _ => self.dir_attr(ino, 0o555, dir.mtime),
        }
    }

    /// The JSON document of `svc` (a `*.json` file or the directory that holds it), from
    /// memory if fetched within `--attr-timeout`. The document is kept under `ino`.
    async fn doc(&self, ino: u64, acct: usize, svc: &Svc) -> Result<Doc> {
        if let Some(d) = self.docs.fresh(ino, self.opts.attr_ttl) {
            return Ok(d);
        }
        let path = svc.doc_path().ok_or(FsError::NotFound)?;
        let v = self
            .service(acct)?
            .get_json(&path, &[])
            .await
            .map_err(error)?;
        let mtime = item_time(&v).unwrap_or(self.mount_time);
        Ok(self.docs.put(ino, pretty(&v), mtime))
    }

    /// The document of the `*.json` child of directory `dir_ino`, fetched with it.
    async fn dir_doc(&self, dir_ino: u64, acct: usize, svc: &Svc) -> Result<(Svc, Doc)> {
        let json = svc.fixed_names()[0];
        let child = svc.child(json, false).ok_or(FsError::NotFound)?;
        let ino = lock(&self.inodes).ino(
            NodeKey::Service {
                acct,
                node: child.clone(),
            },
            dir_ino,
        );
        Ok((child.clone(), self.doc(ino, acct, &child).await?))
    }

    pub(super) async fn svc_listing(
        &self,
        ino: u64,
        acct: usize,
        svc: &Svc,
    ) -> Result<Arc<Listing>> {
        if let Some(e) = self.dirs.fresh(ino) {
            return Ok(e);
        }
        let mut ticket = self.dirs.ticket(ino);
        let entry = |name: &str, attr: Attr| Entry {
            name: name.to_string(),
            attr,
        };
        let mut v = Vec::new();
        if let Some((path, select)) = svc.collection() {
            let items = self
                .service(acct)?
                .list(&path, &[("$select", select)])
                .await
                .map_err(error)?;
            for item in &items {
                let Some(id) = item["id"].as_str().filter(|id| valid_name(id)) else {
                    continue;
                };
                if let Some(child) = svc.child(id, true) {
                    let attr = self.svc_node(acct, child, ino, Known::Dir(item_time(item)));
                    v.push(entry(id, attr));
                }
            }
        } else if let Svc::Dir(files, dir) = svc {
            let (asked, children) = self.list_files(acct, files, dir).await?;
            ticket = ticket.as_of(asked);
            for (name, props) in children {
                if let Some(child) = svc.child(&name, props.is_dir) {
                    let known = match props.is_dir {
                        true => Known::dir_at(props.last_modified),
                        false => Known::File(props, asked),
                    };
                    v.push(entry(&name, self.svc_node(acct, child, ino, known)));
                }
            }
        } else {
            // A job, task, pool or node: its document gives the directory's time.
            let (_, doc) = self.dir_doc(ino, acct, svc).await?;
            if let Some(n) = lock(&self.inodes).get_mut(ino) {
                n.dir.merge(&DirMeta {
                    mtime: Some(doc.mtime),
                    ..Default::default()
                });
            }
            for name in svc.fixed_names() {
                if let Svc::Job(job) = svc
                    && *name == "output"
                    && self.output_target(acct, job).is_none()
                {
                    continue;
                }
                if let Some(child) = svc.child(name, false) {
                    v.push(entry(name, self.svc_node(acct, child, ino, Known::Nothing)));
                }
            }
        }
        Ok(self.dirs.store(ino, ticket, Listing::new(v)))
    }

    /// The entries of one directory of a task's or node's files, by name, and when the answer
    /// they come from was asked for: a recursive answer for it or a directory above it asked
    /// for within `--dir-timeout`, else one List Files (the root non-recursively; a
    /// subdirectory with everything under its first path segment, kept).
    async fn list_files(
        &self,
        acct: usize,
        files: &Files,
        dir: &str,
    ) -> Result<(Instant, BTreeMap<String, FileProps>)> {
        let ttl = self.opts.dir_ttl;
        if let Some((asked, items)) = self.subtrees.covering(acct, files, dir, ttl) {
            return Ok((asked, children(&items, dir)));
        }
        let client = self.service(acct)?;
        let filter;
        let top = dir.split('/').next().unwrap_or(dir);
        let query: Vec<(&str, &str)> = match dir {
            "" => vec![("recursive", "false")],
            _ => {
                // The first segment only, with no separator after it: Windows nodes separate
                // with `\\`. What is not under `dir` is skipped. OData literals double quotes.
                filter = format!("startswith(name,'{}')", top.replace('\'', "''"));
                vec![("recursive", "true"), ("$filter", filter.as_str())]
            }
        };
        let asked = Instant::now();
        let items = client.list(&files.root(), &query).await.map_err(error)?;
        let items: Vec<FileItem> = items.iter().filter_map(batch::file_item).collect();
        let out = children(&items, dir);
        if !dir.is_empty() && !ttl.is_zero() {
            self.subtrees.put(acct, files, top, asked, items, ttl);
        }
        Ok((asked, out))
    }

    pub(super) async fn svc_lookup(
        &self,
        parent: u64,
        acct: usize,
        svc: &Svc,
        name: &str,
    ) -> Result<Attr> {
        let listed = |l: Arc<Listing>| l.find(name).cloned().ok_or(FsError::NotFound);
        match svc {
            Svc::Jobs | Svc::Tasks(_) | Svc::Pools | Svc::Nodes(_) => {
                if let Some(l) = self.dirs.fresh(parent) {
                    return listed(l);
                }
                // Jobs, tasks, pools and nodes come and go rarely: one listed a moment ago is
                // taken as there (its documents are still fetched within --attr-timeout), so
                // reading every task of a listing does not ask for each task again.
                let recent = match self.opts.dir_ttl.is_zero() {
                    true => None,
                    false => self.dirs.within(parent, LISTED_EXISTS),
                };
                if let Some(a) = recent.as_ref().and_then(|l| l.find(name)) {
                    return Ok(a.clone());
                }
                if !valid_id(name) {
                    return Err(FsError::NotFound);
                }
                let child = svc.child(name, true).ok_or(FsError::NotFound)?;
                let path = child.doc_path().ok_or(FsError::NotFound)?;
                let select = svc.collection().map_or("id", |c| c.1);
                let v = self
                    .service(acct)?
                    .get_json(&path, &[("$select", select)])
                    .await
                    .map_err(error)?;
                Ok(self.svc_node(acct, child, parent, Known::Dir(item_time(&v))))
            }
            Svc::Job(_) | Svc::Task(..) | Svc::Pool(_) | Svc::Node(..) => {
                if !svc.fixed_names().contains(&name) {
                    return Err(FsError::NotFound);
                }
                let child = svc.child(name, false).ok_or(FsError::NotFound)?;
                if let Svc::Output(job) = &child
                    && self.output_target(acct, job).is_none()
                {
                    return Err(FsError::NotFound);
                }
                let attr = self.svc_node(acct, child.clone(), parent, Known::Nothing);
                if child.kind() == Kind::File {
                    self.doc(attr.ino, acct, &child).await?;
                    return self.getattr(attr.ino).await;
                }
                Ok(attr)
            }
            Svc::Dir(files, dir) => {
                if let Some(l) = self.dirs.fresh(parent) {
                    return listed(l);
                }
                if !valid_name(name) {
                    return Err(FsError::NotFound);
                }
                let rel = join(dir, name);
                let path = format!("{}/{}", files.root(), encode_path(&rel));
                let client = self.service(acct)?;
                // The first bytes come along, in parallel: a lookup is mostly followed by a
                // read, and a log is mostly small, so `cat` of a task's file costs one round
                // trip. Not when the cache holds them already.
                let cached = self
                    .known_file(acct, files, &rel)
                    .is_some_and(|f| self.cache.has_start(&f));
                // A name a recent listing showed as a directory has no bytes to bring.
                let recent = self.dirs.within(parent, LISTED_EXISTS);
                let listed_dir = recent
                    .as_ref()
                    .and_then(|l| l.find(name))
                    .is_some_and(|a| a.kind == Kind::Dir);
                let ahead = async {
                    match cached || listed_dir {
                        true => None,
                        false => {
                            tokio::time::timeout(AHEAD_WAIT, client.file_start(&path, LOOKAHEAD))
                                .await
                                .ok()
                        }
                    }
                };
                let asked = Instant::now();
                let head = client.file_props(&path);
                tokio::pin!(head, ahead);
                // Once the HEAD has answered, the bytes get only a short grace.
                let (props, ahead) = tokio::select! {
                    p = &mut head => {
                        let a = tokio::time::timeout(AHEAD_GRACE, &mut ahead).await;
                        (p, a.ok().flatten())
                    }
                    a = &mut ahead => (head.await, a),
                };
                let props = match (props, ahead.as_ref()) {
                    (Ok(p), _) => p,
                    // The GET's answer has the code the HEAD's could not carry.
                    (
                        Err(BlobError::NotFound | BlobError::Conflict(_)),
                        Some(Err(e @ (BlobError::NotFound | BlobError::Conflict(_)))),
                    ) => return Err(error(e.clone())),
                    (Err(e @ (BlobError::NotFound | BlobError::Conflict(_))), _) => {
                        return Err(error(client.explain(&path, e).await));
                    }
                    (Err(e), _) => return Err(error(e)),
                };
                let ahead = ahead.and_then(|r| r.ok());
                let child = svc.child(name, props.is_dir).ok_or(FsError::NotFound)?;
                let known = match props.is_dir {
                    true => Known::dir_at(props.last_modified),
                    false => {
                        if let Some((modified, data)) = ahead
                            && modified == props.last_modified
                            && data.len() as u64 == props.size.min(LOOKAHEAD)
                        {
                            let meta = file_meta(&props, asked);
                            let file = self.node_file(acct, files, &rel, &meta)?;
                            self.cache.prime(&file, &data);
                        }
                        Known::File(props, asked)
                    }
                };
                Ok(self.svc_node(acct, child, parent, known))
            }
            _ => Err(FsError::NotDir),
        }
    }

    /// Attributes of a service node: a file's size is asked for again after
    /// `--attr-timeout` (so a growing log shows its growth), a document is fetched again.
    pub(super) async fn svc_getattr(&self, ino: u64, acct: usize, svc: &Svc) -> Result<Attr> {
        match svc {
            Svc::File(files, path) => {
                self.fresh_file_meta(ino, acct, files, path).await?;
            }
            s if s.kind() == Kind::File => {
                self.doc(ino, acct, s).await?;
            }
            _ => {}
        }
        let t = lock(&self.inodes);
        let n = t.get(ino).ok_or(FsError::NotFound)?;
        let (meta, dir) = (n.meta.clone(), n.dir);
        drop(t);
        Ok(self.svc_attr(ino, acct, svc, meta.as_ref(), dir))
    }

    async fn fresh_file_meta(
        &self,
        ino: u64,
        acct: usize,
        files: &Files,
        path: &str,
    ) -> Result<Meta> {
        let known = lock(&self.inodes).get(ino).and_then(|n| n.meta.clone());
        if let Some(m) = known.filter(|m| m.fetched.elapsed() < self.opts.attr_ttl) {
            return Ok(m);
        }
        let url = format!("{}/{}", files.root(), encode_path(path));
        let client = self.service(acct)?;
        let asked = Instant::now();
        let props = match client.file_props(&url).await {
            Ok(p) => p,
            // A file this mount knew is gone, or its node is: say which.
            Err(e) => return Err(error(client.explain(&url, e).await)),
        };
        if props.is_dir {
            // The name is a directory now: this node is not what it named.
            return Err(FsError::Stale);
        }
        let mut meta = file_meta(&props, asked);
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            meta = learnt(n.meta.take(), meta);
            n.meta = Some(meta.clone());
        }
        Ok(meta)
    }

    pub(super) async fn svc_open(
        &self,
        ino: u64,
        acct: usize,
        svc: &Svc,
        write: bool,
    ) -> Result<Opened> {
        if write {
            return Err(FsError::ReadOnly);
        }
        match svc {
            Svc::File(files, path) => {
                let meta = self.fresh_file_meta(ino, acct, files, path).await?;
                let v = version(&meta);
                let keep_cache = self.opened_version(ino, &v);
                let file = self.node_file(acct, files, path, &meta)?;
                let handle = Handle::Service {
                    ino,
                    file: Mutex::new((meta, Arc::new(file))),
                    readahead: Mutex::new(Readahead::default()),
                };
                Ok(self.add_handle(handle, keep_cache, false))
            }
            // Documents are fetched again at open once older than the attribute timeout; their
            // length may differ from what the kernel was told, so reads go past its cache.
            s if s.kind() == Kind::File => {
                let doc = self.doc(ino, acct, s).await?;
                Ok(self.add_handle(Handle::Static(doc.bytes), false, true))
            }
            Svc::Output(_) => Err(FsError::Invalid),
            _ => Err(FsError::IsDir),
        }
    }

    /// The version of a node file this mount knows now, if any.
    fn known_file(&self, acct: usize, files: &Files, path: &str) -> Option<BlobRef<NodeFiles>> {
        let key = NodeKey::Service {
            acct,
            node: Svc::File(files.clone(), path.to_string()),
        };
        let t = lock(&self.inodes);
        let meta = t.get(t.find(&key)?)?.meta.clone()?;
        drop(t);
        self.node_file(acct, files, path, &meta).ok()
    }

    fn node_file(
        &self,
        acct: usize,
        files: &Files,
        path: &str,
        meta: &Meta,
    ) -> Result<BlobRef<NodeFiles>> {
        let client = self.service(acct)?;
        Ok(BlobRef::new(
            Arc::new(NodeFiles(client)),
            acct,
            files.root(),
            path.to_string(),
            version(meta),
            meta.size,
        ))
    }

    /// Reads a node file as far as its size is known now: the size the last getattr saw,
    /// which grows with a running task's output.
    pub(super) async fn svc_read(
        &self,
        ino: u64,
        file: &Mutex<(Meta, Arc<BlobRef<NodeFiles>>)>,
        readahead: &Mutex<Readahead>,
        offset: u64,
        size: u32,
    ) -> Result<Bytes> {
        let blob = {
            // Under the handle's lock, so two reads never swap an older version back in.
            let mut f = lock(file);
            let current = lock(&self.inodes).get(ino).and_then(|n| n.meta.clone());
            if let Some(m) = current
                && m.fetched > f.0.fetched
                && let NodeKey::Service {
                    acct,
                    node: Svc::File(files, path),
                } = self.key_of(ino)?
            {
                let blob = Arc::new(self.node_file(acct, &files, &path, &m)?);
                *f = (m, blob);
            }
            f.1.clone()
        };
        self.cache
            .read(&blob, readahead, offset, size as u64)
            .await
            .map_err(error)
    }

    pub(super) fn service_link(&self, ino: u64) -> Result<Vec<u8>> {
        match self.key_of(ino)? {
            NodeKey::Service {
                acct,
                node: Svc::Output(job),
            } => self
                .output_target(acct, &job)
                .map(String::into_bytes)
                .ok_or(FsError::NotFound),
            _ => Err(FsError::Invalid),
        }
    }
}

/// The direct children of `dir` among `items` (names relative to the files root), by name.
/// A directory known only from deeper names is a child too.
fn children(items: &[FileItem], dir: &str) -> BTreeMap<String, FileProps> {
    let mut out: BTreeMap<String, FileProps> = BTreeMap::new();
    for item in items {
        let rel = match dir {
            "" => item.name.as_str(),
            d => match item.name.strip_prefix(d).and_then(|r| r.strip_prefix('/')) {
                Some(r) => r,
                None => continue,
            },
        };
        let (first, deeper) = match rel.split_once('/') {
            Some((first, _)) => (first, true),
            None => (rel, false),
        };
        if !valid_name(first) {
            if !first.is_empty() {
                tracing::warn!(name = %item.name, "a node file whose name cannot be a path is not shown");
            }
            continue;
        }
        let props = match deeper {
            true => FileProps {
                is_dir: true,
                size: 0,
                last_modified: item.props.last_modified,
                mode: None,
            },
            false => item.props.clone(),
        };
        match out.get_mut(first) {
            Some(known) if known.is_dir && props.is_dir => {
                known.last_modified = known.last_modified.max(props.last_modified);
            }
            Some(known) if known.is_dir => {}
            _ => {
                out.insert(first.to_string(), props);
            }
        }
    }
    out
}

/// Recursive List Files answers, for `--dir-timeout`: the one owner of that state. Listing
/// `wd/` brings everything under it, so `cp -r` or `find` of `wd/` lists its subdirectories
/// from that answer instead of asking again for each.
#[derive(Default)]
pub struct Subtrees {
    map: Mutex<HashMap<(usize, Files), Vec<Subtree>>>,
}

struct Subtree {
    dir: String,
    asked: Instant,
    items: Arc<Vec<FileItem>>,
}

impl Subtrees {
    /// The freshest answer for `dir` or a directory above it, asked for within `ttl`.
    fn covering(
        &self,
        acct: usize,
        files: &Files,
        dir: &str,
        ttl: Duration,
    ) -> Option<(Instant, Arc<Vec<FileItem>>)> {
        if dir.is_empty() {
            return None;
        }
        let map = lock(&self.map);
        let trees = map.get(&(acct, files.clone()))?;
        trees
            .iter()
            .filter(|t| t.asked.elapsed() < ttl)
            .filter(|t| dir == t.dir || dir.starts_with(&format!("{}/", t.dir)))
            .max_by_key(|t| t.asked)
            .map(|t| (t.asked, t.items.clone()))
    }

    /// Keeps the answer for `dir`, asked for at `asked`. Answers older than `ttl` go, and,
    /// past [`MAX_SUBTREE_ITEMS`] items in all, the oldest.
    fn put(
        &self,
        acct: usize,
        files: &Files,
        dir: &str,
        asked: Instant,
        items: Vec<FileItem>,
        ttl: Duration,
    ) {
        let mut map = lock(&self.map);
        map.retain(|_, trees| {
            trees.retain(|t| t.asked.elapsed() < ttl);
            !trees.is_empty()
        });
        let trees = map.entry((acct, files.clone())).or_default();
        trees.retain(|t| t.dir != dir);
        trees.push(Subtree {
            dir: dir.to_string(),
            asked,
            items: Arc::new(items),
        });
        loop {
            let total: usize = map.values().flatten().map(|t| t.items.len()).sum();
            let oldest = map
                .iter()
                .flat_map(|(k, trees)| {
                    trees
                        .iter()
                        .map(move |t| (t.asked, k.clone(), t.dir.clone()))
                })
                .min_by_key(|(asked, _, _)| *asked);
            match oldest {
                Some((_, key, dir)) if total > MAX_SUBTREE_ITEMS => {
                    if let Some(trees) = map.get_mut(&key) {
                        trees.retain(|t| t.dir != dir);
                    }
                    map.retain(|_, trees| !trees.is_empty());
                }
                _ => return,
            }
        }
    }
}

/// What a listing or lookup learnt of a node.
enum Known {
    Dir(Option<SystemTime>),
    /// A file, as a request sent at that instant said.
    File(FileProps, Instant),
    Nothing,
}

impl Known {
    /// A directory's time, where the service gave one (directories often come without).
    fn dir_at(t: SystemTime) -> Known {
        Known::Dir(Some(t).filter(|t| *t > SystemTime::UNIX_EPOCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_follow_the_tree() {
        let task = Svc::Task("j".into(), "t".into());
        assert_eq!(
            task.child("task.json", false),
            Some(Svc::TaskJson("j".into(), "t".into()))
        );
        let files = task.child("files", true).unwrap();
        assert_eq!(
            files,
            Svc::Dir(Files::Task("j".into(), "t".into()), String::new())
        );
        let wd = files.child("wd", true).unwrap();
        assert_eq!(
            wd.child("a b", false),
            Some(Svc::File(
                Files::Task("j".into(), "t".into()),
                "wd/a b".into()
            ))
        );
        assert_eq!(task.child("other", false), None);
        assert_eq!(
            Files::Node("p 1".into(), "n".into()).root(),
            "/pools/p%201/nodes/n/files"
        );
        assert!(valid_id("my-_EVEN_MORE_-terrific-job") && !valid_id("a.b") && !valid_id(""));
    }

    fn item(name: &str, is_dir: bool) -> FileItem {
        FileItem {
            name: name.into(),
            props: FileProps {
                is_dir,
                size: 1,
                last_modified: SystemTime::UNIX_EPOCH,
                mode: None,
            },
        }
    }

    #[test]
    fn a_recursive_answer_lists_every_directory_under_it() {
        let items = vec![
            item("wd", true),
            item("wd/a.txt", false),
            item("wd/out", true),
            item("wd/out/f.bin", false),
            item("wd/deep/er/x", false),
            item("wd2/other", false),
        ];
        let names = |dir: &str| children(&items, dir).into_keys().collect::<Vec<_>>();
        assert_eq!(names("wd"), ["a.txt", "deep", "out"]);
        assert!(
            children(&items, "wd")["deep"].is_dir,
            "known only from deeper names"
        );
        assert_eq!(names("wd/out"), ["f.bin"]);
        assert_eq!(names("wd/deep/er"), ["x"]);
        let files = Files::Task("j".into(), "t".into());
        let trees = Subtrees::default();
        let ttl = Duration::from_secs(5);
        trees.put(0, &files, "wd", Instant::now(), items.clone(), ttl);
        assert!(trees.covering(0, &files, "wd/out", ttl).is_some());
        assert!(trees.covering(0, &files, "wd", ttl).is_some());
        assert!(
            trees.covering(0, &files, "wd2", ttl).is_none(),
            "a sibling sharing the prefix"
        );
        assert!(
            trees.covering(1, &files, "wd", ttl).is_none(),
            "another account"
        );
        assert!(
            trees.covering(0, &files, "wd", Duration::ZERO).is_none(),
            "stale"
        );
    }

    #[test]
    fn the_answer_asked_last_wins_even_if_it_is_older_or_smaller() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let props = |size: u64, mtime: SystemTime| FileProps {
            is_dir: false,
            size,
            last_modified: mtime,
            mode: None,
        };
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        // A listing asked before a HEAD but answered after it does not undo the HEAD.
        let head = file_meta(&props(200, at(20)), t1);
        let late_listing = file_meta(&props(100, at(10)), t0);
        assert_eq!(learnt(Some(head.clone()), late_listing).size, 200);
        // A file replaced by an older, smaller one is shown as it is now.
        let replaced = file_meta(&props(50, at(5)), t1 + Duration::from_millis(10));
        let now = learnt(Some(head), replaced);
        assert_eq!((now.size, now.mtime), (50, at(5)));
    }

    #[test]
    fn documents_are_fresh_for_their_ttl_and_go_with_their_node() {
        let docs = Docs::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        docs.put(5, b"{}\n".to_vec(), t);
        let ttl = Duration::from_millis(50);
        assert_eq!(docs.fresh(5, ttl).map(|d| d.mtime), Some(t));
        std::thread::sleep(ttl);
        assert!(docs.fresh(5, ttl).is_none(), "stale after the TTL");
        assert_eq!(
            docs.get(5).map(|d| d.bytes.len()),
            Some(3),
            "but kept for attributes"
        );
        docs.forget(5);
        assert!(docs.get(5).is_none());
    }

    #[test]
    fn files_that_are_cleaned_up_are_gone_and_an_unreachable_node_is_down() {
        assert!(matches!(
            error(BlobError::Conflict("TaskFilesCleanedup".into())),
            FsError::NotFound
        ));
        assert!(matches!(
            error(BlobError::Conflict("TaskFilesUnavailable".into())),
            FsError::Unavailable(_)
        ));
        assert!(matches!(error(BlobError::NotFound), FsError::NotFound));
        let past_the_end = BlobError::Status {
            status: 416,
            code: "InvalidRange".into(),
        };
        assert!(
            matches!(error(past_the_end), FsError::Stale),
            "a file that shrank"
        );
    }
}
