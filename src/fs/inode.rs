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
}

/// What the last answer from storage said about a file, and when.
#[derive(Debug, Clone)]
pub struct Meta {
    pub size: u64,
    pub mtime: SystemTime,
    pub fetched: Instant,
}

#[derive(Debug)]
pub struct Node {
    pub key: NodeKey,
    pub parent: u64,
    pub meta: Option<Meta>,
    /// Last-Modified for directories that have one (containers, marker blobs).
    pub dir_mtime: Option<SystemTime>,
    /// The ETag the last `open` saw: the kernel may keep cached pages while it is unchanged.
    pub opened_etag: Option<String>,
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
                dir_mtime: None,
                opened_etag: None,
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
                dir_mtime: None,
                opened_etag: None,
            },
        );
        ino
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
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
        assert_eq!(t.len(), 3);
    }
}
