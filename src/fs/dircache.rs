//! Directory listings this mount keeps, and their freshness: the one owner of that state.
//!
//! A listing from storage is trusted for `dir_ttl`. Changes this mount makes are patched into
//! a cached listing at once (so `tar x`, `cp -r` and `rm -r` do not list again after each
//! file). A listing fetched from storage while such a change was made may predate it: each
//! directory has a generation that every local change bumps, and a listing whose fetch began
//! under an older generation is handed to the caller that asked but never cached, so it cannot
//! undo the change for later callers (a renamed file showing under its old name).
//!
//! A directory without a marker exists in storage only while it holds something. One that this
//! mount emptied is kept for [`PHANTOM_TTL`] as an empty directory of this mount only (a
//! *phantom*), so that the `rmdir` that `rm -r` sends last, and the lookups before it, find it.
//!
//! Removing an entry leaves a tombstone rather than shifting the entries after it, so `rm -r`
//! of a large directory costs O(1) per file, and offsets of open directory handles stay valid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Attr;

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub attr: Attr,
}

/// A directory's entries in order, with an index by name.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    slots: Vec<Option<Entry>>,
    index: HashMap<String, usize>,
}

impl Listing {
    pub fn new(entries: Vec<Entry>) -> Self {
        let mut l = Listing::default();
        for e in entries {
            l.upsert(&e.name, e.attr);
        }
        l
    }

    /// The live entries, in order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn find(&self, name: &str) -> Option<&Attr> {
        let i = *self.index.get(name)?;
        self.slots[i].as_ref().map(|e| &e.attr)
    }

    pub fn upsert(&mut self, name: &str, attr: Attr) {
        match self.index.get(name).and_then(|&i| self.slots[i].as_mut()) {
            Some(e) => e.attr = attr,
            None => {
                self.index.insert(name.to_string(), self.slots.len());
                self.slots.push(Some(Entry {
                    name: name.to_string(),
                    attr,
                }));
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            self.slots[i] = None;
        }
        // Mostly tombstones (a directory emptied by `rm -r`): compact, which costs what the
        // removals saved, once.
        if self.slots.len() > 64 && self.index.len() < self.slots.len() / 4 {
            *self = Listing::new(self.slots.drain(..).flatten().collect());
        }
    }
}

struct Cached {
    at: Instant,
    listing: Arc<Listing>,
}

#[derive(Default)]
struct State {
    cached: HashMap<u64, Cached>,
    /// Directories this mount emptied: parent → name → (inode, when).
    phantoms: HashMap<u64, HashMap<String, (u64, Instant)>>,
    /// Bumped by every local change in the directory.
    generation: HashMap<u64, u64>,
    gates: HashMap<u64, Arc<tokio::sync::Mutex<()>>>,
}

/// A listing this recent (or ten listing TTLs, if longer) is refreshed on a lookup miss ...
const RELIST_WINDOW: Duration = Duration::from_secs(10);
/// ... if it held at most this many entries (four list pages).
const RELIST_MAX_ENTRIES: usize = 20_000;
/// How long a directory this mount emptied stays, if nobody removes it.
pub const PHANTOM_TTL: Duration = Duration::from_secs(60);

pub struct DirCache {
    ttl: Duration,
    state: Mutex<State>,
}

/// Proof of when a fetch began, for [`DirCache::store`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64, Option<Instant>);

impl Ticket {
    /// For a listing derived from an answer fetched at `at`: it ages from then, not from
    /// when it is stored.
    pub fn as_of(self, at: Instant) -> Ticket {
        Ticket(self.0, Some(at))
    }
}

impl DirCache {
    pub fn new(ttl: Duration) -> Self {
        DirCache {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take every directory down with a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listing of `ino` if it is fresh.
    pub fn fresh(&self, ino: u64) -> Option<Arc<Listing>> {
        let st = self.state();
        let c = st.cached.get(&ino)?;
        (c.at.elapsed() < self.ttl).then(|| c.listing.clone())
    }

    /// The listing of `ino` if it is younger than `age`, fresh or not.
    pub fn within(&self, ino: u64, age: Duration) -> Option<Arc<Listing>> {
        let st = self.state();
        let c = st.cached.get(&ino)?;
        (c.at.elapsed() < age).then(|| c.listing.clone())
    }

    /// Whether a lookup miss in `ino` should list it again rather than probe one name: it
    /// was listed moments ago (someone is walking it) and is small enough to list cheaply.
    pub fn worth_relisting(&self, ino: u64) -> bool {
        let window = (self.ttl * 10).max(RELIST_WINDOW);
        let st = self.state();
        st.cached
            .get(&ino)
            .is_some_and(|c| c.at.elapsed() < window && c.listing.len() <= RELIST_MAX_ENTRIES)
    }

    /// One listing at a time per directory: concurrent lookups and `ls` share it.
    pub fn gate(&self, ino: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.state().gates.entry(ino).or_default().clone()
    }

    /// Call before fetching a listing of `ino` from storage.
    pub fn ticket(&self, ino: u64) -> Ticket {
        Ticket(
            self.state().generation.get(&ino).copied().unwrap_or(0),
            None,
        )
    }

    /// Caches a listing fetched under `ticket`, unless a local change came since; returns it.
    pub fn store(&self, ino: u64, ticket: Ticket, listing: Listing) -> Arc<Listing> {
        let listing = Arc::new(listing);
        let mut st = self.state();
        if st.generation.get(&ino).copied().unwrap_or(0) != ticket.0 {
            return listing;
        }
        st.cached.insert(
            ino,
            Cached {
                at: ticket.1.unwrap_or_else(Instant::now),
                listing: listing.clone(),
            },
        );
        // A walk over a large tree must not keep every listing it saw: each time the map
        // grows past another 256 directories, drop the listings too old to be used again.
        if st.cached.len().is_multiple_of(256) {
            let keep = (self.ttl * 10).max(RELIST_WINDOW);
            st.cached.retain(|_, c| c.at.elapsed() < keep);
        }
        listing
    }

    fn bump(st: &mut State, ino: u64) {
        *st.generation.entry(ino).or_default() += 1;
    }

    /// This mount changed `name` in `dir` (`None`: removed it). A cached listing is patched and
    /// keeps its age: changes made elsewhere show when it expires, as before.
    pub fn patch(&self, dir: u64, name: &str, attr: Option<Attr>) {
        let mut st = self.state();
        Self::bump(&mut st, dir);
        if let Some(c) = st.cached.get_mut(&dir) {
            let listing = Arc::make_mut(&mut c.listing);
            match attr {
                Some(a) => listing.upsert(name, a),
                None => listing.remove(name),
            }
        }
    }

    /// Something changed in `dir` whose outcome is unknown: list it again next time.
    pub fn invalidate(&self, dir: u64) {
        let mut st = self.state();
        Self::bump(&mut st, dir);
        st.cached.remove(&dir);
    }

    /// A directory this mount just made is empty: its listing is known without asking.
    pub fn known_empty(&self, dir: u64) {
        let mut st = self.state();
        Self::bump(&mut st, dir);
        let c = Cached {
            at: Instant::now(),
            listing: Arc::new(Listing::default()),
        };
        st.cached.insert(dir, c);
    }

    /// Whether a listing fetched under `ticket` is still current (no local change since).
    pub fn is_current(&self, ino: u64, ticket: Ticket) -> bool {
        self.state().generation.get(&ino).copied().unwrap_or(0) == ticket.0
    }

    /// This mount removed an entry of directory `ino`, `name` in `parent`: if its listing, as
    /// this mount patched it, is now empty, it stays for a while as a phantom (if it has a
    /// marker, storage shows it anyway).
    pub fn emptied(&self, parent: u64, name: &str, ino: u64) {
        let mut st = self.state();
        if !st.cached.get(&ino).is_some_and(|c| c.listing.is_empty()) {
            return;
        }
        let now = Instant::now();
        let dir = st.phantoms.entry(parent).or_default();
        dir.retain(|_, (_, at)| at.elapsed() < PHANTOM_TTL);
        dir.insert(name.to_string(), (ino, now));
    }

    /// The phantom `name` in `parent`, if there is one.
    pub fn phantom(&self, parent: u64, name: &str) -> Option<u64> {
        let st = self.state();
        let (ino, at) = st.phantoms.get(&parent)?.get(name)?;
        (at.elapsed() < PHANTOM_TTL).then_some(*ino)
    }

    /// Every phantom in `parent`: (name, inode).
    pub fn phantoms_in(&self, parent: u64) -> Vec<(String, u64)> {
        let st = self.state();
        let Some(dir) = st.phantoms.get(&parent) else {
            return Vec::new();
        };
        let live = dir.iter().filter(|(_, (_, at))| at.elapsed() < PHANTOM_TTL);
        live.map(|(n, (i, _))| (n.clone(), *i)).collect()
    }

    /// `name` in `parent` was removed (or made real): no phantom of it is left.
    pub fn unphantom(&self, parent: u64, name: &str) {
        let mut st = self.state();
        if let Some(dir) = st.phantoms.get_mut(&parent) {
            dir.remove(name);
            if dir.is_empty() {
                st.phantoms.remove(&parent);
            }
        }
    }

    /// The kernel forgot `dir`: nothing of it is kept.
    pub fn forget(&self, dir: u64) {
        let mut st = self.state();
        st.cached.remove(&dir);
        st.gates.remove(&dir);
        st.generation.remove(&dir);
        st.phantoms.remove(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Kind;

    fn attr(ino: u64) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size: ino,
            mtime: std::time::SystemTime::UNIX_EPOCH,
            atime: std::time::SystemTime::UNIX_EPOCH,
            perm: 0o644,
            nlink: 1,
        }
    }

    fn listing(n: u64) -> Listing {
        let e = (0..n).map(|i| Entry {
            name: format!("f{i}"),
            attr: attr(i),
        });
        Listing::new(e.collect())
    }

    #[test]
    fn a_listing_fetched_before_a_local_change_is_not_cached() {
        let c = DirCache::new(Duration::from_secs(60));
        let before = c.ticket(1);
        // While the fetch is out, this mount renames f0 away.
        c.patch(1, "f0", None);
        let stale = c.store(1, before, listing(2));
        assert!(
            stale.find("f0").is_some(),
            "the caller gets what it fetched"
        );
        assert!(c.fresh(1).is_none(), "but it is not kept");
        let t = c.ticket(1);
        c.store(1, t, listing(2));
        c.patch(1, "f0", None);
        let fresh = c.fresh(1).unwrap();
        assert!(fresh.find("f0").is_none());
        assert!(fresh.find("f1").is_some());
    }

    #[test]
    fn removals_keep_order_and_compact() {
        let mut l = listing(1000);
        for i in (0..1000).step_by(2) {
            l.remove(&format!("f{i}"));
        }
        assert_eq!(l.len(), 500);
        let names: Vec<_> = l.entries().take(3).map(|e| e.name.clone()).collect();
        assert_eq!(names, ["f1", "f3", "f5"]);
        for i in (1..1000).step_by(2) {
            l.remove(&format!("f{i}"));
        }
        assert!(l.is_empty());
        assert!(l.slots.len() <= 64, "compacted: {}", l.slots.len());
        l.upsert("new", attr(7));
        assert_eq!(l.find("new").map(|a| a.size), Some(7));
    }

    #[test]
    fn a_snapshot_handed_out_does_not_change() {
        let c = DirCache::new(Duration::from_secs(60));
        let t = c.ticket(1);
        let snap = c.store(1, t, listing(3));
        c.patch(1, "f1", None);
        assert_eq!(snap.len(), 3);
        assert_eq!(c.fresh(1).unwrap().len(), 2);
    }
}
