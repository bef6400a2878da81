//! Inode numbers for the namespace.
//!
//! Every node is named by a [`NodeKey`] (what it is, not where the kernel found it); the table
//! hands out one stable inode number per key. The kind (file or directory) is part of the key:
//! if a blob `a` is deleted and a directory `a/` appears, the kernel gets a new inode rather
//! than one whose type changed under it. Numbers are never reused within a mount.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    /// The unlisted stats file at the root.
    Stats,
    Account(usize),
    AccountJson(usize),
    Keys(usize),
    /// `storage/` listing the containers of the account (no container pin).
    Containers(usize),
    /// A container (prefix empty) or a directory in one; `prefix` ends with `/` unless empty.
    Dir {
        acct: usize,
        container: String,
        prefix: String,
    },
    File {
        acct: usize,
        container: String,
        name: String,
    },
    /// A node of the Batch service's trees (`jobs/`, `pools/`).
    Service {
        acct: usize,
        node: super::service::Svc,
    },
}

impl NodeKey {
    fn same_container(&self, other: &NodeKey) -> bool {
        match (self, other) {
            (
                NodeKey::Dir {
                    acct: a,
                    container: c,
                    ..
                }
                | NodeKey::File {
                    acct: a,
                    container: c,
                    ..
                },
                NodeKey::Dir {
                    acct: b,
                    container: d,
                    ..
                }
                | NodeKey::File {
                    acct: b,
                    container: d,
                    ..
                },
            ) => a == b && c == d,
            _ => false,
        }
    }
}

/// What is known of a directory's times and mode: from its marker blob (or a container's
/// Last-Modified), or set through this mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirMeta {
    pub mtime: Option<SystemTime>,
    pub atime: Option<SystemTime>,
    pub mode: Option<u16>,
}

impl DirMeta {
    /// Takes what storage says now, except that times only move forward: a listing from
    /// storage does not undo a change of entries this mount made a moment ago.
    pub fn merge(&mut self, from_storage: &DirMeta) {
        self.mode = from_storage.mode.or(self.mode);
        self.mtime = self.mtime.max(from_storage.mtime);
        self.atime = self.atime.max(from_storage.atime);
    }
}

/// What the last answer from storage said about a file, and when.
#[derive(Debug, Clone)]
pub struct Meta {
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    /// Mode bits kept in metadata, if any.
    pub mode: Option<u16>,
    /// A symbolic link (metadata `is_symlink=true`).
    pub link: bool,
    pub fetched: Instant,
}

#[derive(Debug)]
pub struct Node {
    pub key: NodeKey,
    pub parent: u64,
    pub meta: Option<Meta>,
    /// A directory's times and mode, where known.
    pub dir: DirMeta,
    /// When a directory's marker blob was last looked for.
    pub marker_checked: Option<Instant>,
    /// The ETag the last `open` saw: the kernel may keep cached pages while it is unchanged.
    pub opened_etag: Option<String>,
    /// References the kernel holds (entries it was given, less those it forgot). A node at
    /// zero is dropped when the kernel forgets it, so a long walk does not grow the table.
    pub lookups: u64,
}

#[derive(Debug)]
pub struct Inodes {
    by_key: HashMap<NodeKey, u64>,
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_key: HashMap::new(),
            nodes: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.by_key.insert(NodeKey::Root, ROOT_INO);
        t.nodes.insert(
            ROOT_INO,
            Node {
                key: NodeKey::Root,
                parent: ROOT_INO,
                meta: None,
                dir: DirMeta::default(),
                marker_checked: None,
                opened_etag: None,
                lookups: 0,
            },
        );
        t
    }
}

impl Inodes {
    /// The inode for `key`, created under `parent` if new.
    pub fn ino(&mut self, key: NodeKey, parent: u64) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                key,
                parent,
                meta: None,
                dir: DirMeta::default(),
                marker_checked: None,
                opened_etag: None,
                lookups: 0,
            },
        );
        ino
    }

    /// Counts a reference the kernel is about to be given to `ino`. False if `ino` is gone
    /// (the kernel forgot it while an answer naming it was on its way).
    pub fn pin(&mut self, ino: u64) -> bool {
        match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.lookups += 1;
                true
            }
            None => false,
        }
    }

    /// The kernel dropped `n` references to `ino`; the node goes once none are left.
    /// Returns whether it went.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return false;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 || ino == ROOT_INO {
            return false;
        }
        if let Some(node) = self.nodes.remove(&ino)
            && self.by_key.get(&node.key) == Some(&ino)
        {
            self.by_key.remove(&node.key);
        }
        true
    }

    pub fn count(&self) -> usize {
        self.nodes.len()
    }

    /// The inode of `key`, if it has one.
    pub fn find(&self, key: &NodeKey) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// After a rename: the inode of `from` (and, for a directory, of everything under it)
    /// is now named `to`, under `parent`. An inode `to` had before is forgotten.
    pub fn rename(&mut self, from: &NodeKey, to: NodeKey, parent: u64) {
        let Some(ino) = self.by_key.remove(from) else {
            return;
        };
        if let Some(old) = self.by_key.insert(to.clone(), ino) {
            self.nodes.remove(&old);
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.key = to.clone();
            n.parent = parent;
        }
        let (NodeKey::Dir { prefix: old, .. }, NodeKey::Dir { prefix: new, .. }) = (from, &to)
        else {
            return;
        };
        let moved: Vec<(NodeKey, NodeKey)> = self
            .by_key
            .keys()
            .filter_map(|k| {
                let renamed = match k {
                    NodeKey::Dir {
                        acct,
                        container,
                        prefix,
                    } if k.same_container(from) && prefix.starts_with(old.as_str()) => {
                        NodeKey::Dir {
                            acct: *acct,
                            container: container.clone(),
                            prefix: format!("{new}{}", &prefix[old.len()..]),
                        }
                    }
                    NodeKey::File {
                        acct,
                        container,
                        name,
                    } if k.same_container(from) && name.starts_with(old.as_str()) => {
                        NodeKey::File {
                            acct: *acct,
                            container: container.clone(),
                            name: format!("{new}{}", &name[old.len()..]),
                        }
                    }
                    _ => return None,
                };
                Some((k.clone(), renamed))
            })
            .collect();
        for (k, renamed) in moved {
            if let Some(i) = self.by_key.remove(&k) {
                if let Some(n) = self.nodes.get_mut(&i) {
                    n.key = renamed.clone();
                }
                self.by_key.insert(renamed, i);
            }
        }
    }

    /// The name `key` no longer leads to its inode (unlinked); the inode itself stays.
    pub fn detach(&mut self, key: &NodeKey) {
        self.by_key.remove(key);
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_stable_numbers_and_kind_is_part_of_the_key() {
        let mut t = Inodes::default();
        let f = NodeKey::File {
            acct: 0,
            container: "c".into(),
            name: "a".into(),
        };
        let d = NodeKey::Dir {
            acct: 0,
            container: "c".into(),
            prefix: "a/".into(),
        };
        let fi = t.ino(f.clone(), ROOT_INO);
        assert_eq!(t.ino(f, ROOT_INO), fi);
        assert_ne!(t.ino(d, ROOT_INO), fi);
        assert_eq!(t.ino(NodeKey::Root, 5), ROOT_INO);
        assert_eq!(t.count(), 3);
    }

    #[test]
    fn forgotten_nodes_go_and_come_back_with_new_numbers() {
        let mut t = Inodes::default();
        let f = NodeKey::File {
            acct: 0,
            container: "c".into(),
            name: "a".into(),
        };
        let fi = t.ino(f.clone(), ROOT_INO);
        assert!(t.pin(fi) && t.pin(fi));
        assert!(!t.forget(fi, 1), "one reference left");
        assert!(t.forget(fi, 1));
        assert_eq!((t.find(&f), t.count()), (None, 1));
        assert!(!t.pin(fi));
        assert!(t.ino(f, ROOT_INO) > fi, "numbers are not reused");
        assert!(!t.forget(ROOT_INO, 5), "the root stays");
    }
}
