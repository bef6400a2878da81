//! The files this mount has open for writing: the one owner of the drafts' open counts and of
//! the last-close protocol.
//!
//! Every handle opened on a draft is counted. `close` of a handle decrements the count under
//! the registry's lock; the handle that takes it to zero is the *last* and commits, after
//! which it calls [`Drafts::finish`]. An `open` that comes while that commit runs joins the
//! draft (it must see what is being committed, and its own commit goes on from there), and
//! `finish` then leaves the draft registered for the new handle. A draft is removed only when
//! its count is zero at `finish`, so it can neither leak (registered with no handle) nor be
//! dropped under a handle. A draft that is to be dropped rather than committed (unlinked, or
//! its last commit failed) is removed at once by the close that takes its count to zero: an
//! open that comes then starts from storage, never from data that is being thrown away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

struct Entry<D> {
    draft: Arc<D>,
    handles: usize,
    parent: u64,
    name: String,
    /// Unlinked while open: still usable through its handles, shown nowhere.
    unlinked: bool,
}

pub struct Drafts<D> {
    map: Mutex<HashMap<u64, Entry<D>>>,
}

impl<D> Default for Drafts<D> {
    fn default() -> Self {
        Drafts {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// What closing one handle means.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Other handles remain.
    NotLast,
    /// The last handle: commit (or drop, if unlinked), then call [`Drafts::finish`].
    /// `removed`: the draft is no longer registered (unlinked, or dropped on request).
    Last { unlinked: bool, removed: bool },
    /// The draft was not registered (a bug elsewhere, or already finished).
    Unknown,
}

impl<D> Drafts<D> {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Entry<D>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ino: u64) -> Option<Arc<D>> {
        self.map().get(&ino).map(|e| e.draft.clone())
    }

    pub fn contains(&self, ino: u64) -> bool {
        self.map().contains_key(&ino)
    }

    /// The draft of `ino`, counting one more handle on it.
    pub fn join(&self, ino: u64) -> Option<Arc<D>> {
        let mut map = self.map();
        let e = map.get_mut(&ino)?;
        e.handles += 1;
        Some(e.draft.clone())
    }

    /// Registers `draft` for `ino` with one handle, or joins the one another open registered
    /// first.
    pub fn register(&self, ino: u64, draft: D, parent: u64, name: String) -> Arc<D> {
        let mut map = self.map();
        if let Some(e) = map.get_mut(&ino) {
            e.handles += 1;
            return e.draft.clone();
        }
        let draft = Arc::new(draft);
        let entry = Entry {
            draft: draft.clone(),
            handles: 1,
            parent,
            name,
            unlinked: false,
        };
        map.insert(ino, entry);
        draft
    }

    /// One handle of `ino` closed. If it was the last and `drop` is set (or the draft was
    /// unlinked), the draft is unregistered now.
    pub fn close(&self, ino: u64, drop: bool) -> Closed {
        let mut map = self.map();
        let Some(e) = map.get_mut(&ino) else {
            return Closed::Unknown;
        };
        e.handles = e.handles.saturating_sub(1);
        if e.handles > 0 {
            return Closed::NotLast;
        }
        let unlinked = e.unlinked;
        let removed = unlinked || drop;
        if removed {
            map.remove(&ino);
        }
        Closed::Last { unlinked, removed }
    }

    /// Handles open on `ino`'s draft (0 while its last close commits, or if there is none).
    pub fn handles(&self, ino: u64) -> usize {
        self.map().get(&ino).map_or(0, |e| e.handles)
    }

    /// After the last close's commit: forgets the draft unless an open joined it meanwhile.
    /// True if it was forgotten.
    pub fn finish(&self, ino: u64, draft: &Arc<D>) -> bool {
        let mut map = self.map();
        let ours = map
            .get(&ino)
            .is_some_and(|e| e.handles == 0 && Arc::ptr_eq(&e.draft, draft));
        if ours {
            map.remove(&ino);
        }
        ours
    }

    pub fn mark_unlinked(&self, ino: u64) {
        if let Some(e) = self.map().get_mut(&ino) {
            e.unlinked = true;
        }
    }

    /// Whether `ino` is a file being written that is shown in its directory.
    pub fn shown(&self, ino: u64) -> bool {
        self.map().get(&ino).is_some_and(|e| !e.unlinked)
    }

    /// The drafts shown in directory `dir`: (inode, name).
    pub fn in_dir(&self, dir: u64) -> Vec<(u64, String)> {
        let map = self.map();
        let shown = map.iter().filter(|(_, e)| e.parent == dir && !e.unlinked);
        shown.map(|(i, e)| (*i, e.name.clone())).collect()
    }

    /// Inodes of every draft that is still shown.
    pub fn shown_inodes(&self) -> Vec<u64> {
        let map = self.map();
        map.iter()
            .filter(|(_, e)| !e.unlinked)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Every draft (to ask idle ones to send their blocks).
    pub fn all(&self) -> Vec<Arc<D>> {
        self.map().values().map(|e| e.draft.clone()).collect()
    }

    /// The draft of `ino` moved to `name` in `parent`.
    pub fn moved(&self, ino: u64, parent: u64, name: &str) {
        if let Some(e) = self.map().get_mut(&ino) {
            e.parent = parent;
            e.name = name.to_string();
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_during_the_last_close_keeps_the_draft_and_nothing_leaks() {
        let d: Drafts<&str> = Drafts::default();
        let draft = d.register(7, "v1", 1, "f".into());
        // The last handle closes and starts committing ...
        let last = Closed::Last {
            unlinked: false,
            removed: false,
        };
        assert_eq!(d.close(7, false), last);
        // ... while a new open joins.
        assert!(d.join(7).is_some());
        assert!(!d.finish(7, &draft), "the new handle keeps it");
        assert!(d.contains(7));
        // The new handle's close is the last one now, and the draft goes.
        assert_eq!(d.close(7, false), last);
        assert!(d.finish(7, &draft));
        assert!(d.is_empty());
        // A draft to be dropped goes at its last close: a later open cannot join it.
        d.register(8, "failed", 1, "g".into());
        let dropped = Closed::Last {
            unlinked: false,
            removed: true,
        };
        assert_eq!(d.close(8, true), dropped);
        assert!(d.join(8).is_none());
    }

    #[test]
    fn handles_are_counted_and_unlinked_drafts_are_hidden() {
        let d: Drafts<u8> = Drafts::default();
        let a = d.register(3, 1, 1, "x".into());
        let b = d.register(3, 2, 1, "x".into());
        assert!(Arc::ptr_eq(&a, &b), "a second open joins the first draft");
        assert_eq!(d.in_dir(1), vec![(3, "x".to_string())]);
        d.mark_unlinked(3);
        assert!(d.in_dir(1).is_empty());
        assert!(!d.shown(3));
        assert_eq!(d.close(3, false), Closed::NotLast);
        let gone = Closed::Last {
            unlinked: true,
            removed: true,
        };
        assert_eq!(d.close(3, false), gone);
        assert!(!d.finish(3, &a), "already unregistered");
        assert_eq!(d.close(3, false), Closed::Unknown);
    }
}
