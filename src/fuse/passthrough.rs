//! Kernel passthrough (Linux 6.9+): an open of a blob the disk tier holds whole is answered
//! with the tier's file, and the kernel reads it (and maps it) without asking the daemon.
//!
//! The kernel puts two rules on it, which this module keeps per inode: all passthrough opens
//! of an inode share one backing file (one `BackingId`, closed when the last of them is
//! released), and an inode cannot have passthrough opens and page-cached opens at once. So a
//! passthrough open is offered only when the inode has no cached open, and an open that
//! comes while passthrough opens exist bypasses the page cache (`FOPEN_DIRECT_IO`, which the
//! kernel lets coexist with them) instead of being refused.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FopenFlags, ReplyOpen};

#[derive(Default)]
struct Inode {
    /// Opens that use the kernel's page cache.
    cached: u32,
    /// Passthrough opens, and the backing file they share.
    through: u32,
    backing: Option<(Arc<File>, BackingId)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Cached,
    Through,
    Direct,
}

#[derive(Default)]
struct Opens {
    inodes: HashMap<u64, Inode>,
    /// Each open handle: its inode and how it was answered.
    handles: HashMap<u64, (u64, Kind)>,
}

/// The opens of every inode, while the kernel allows passthrough.
#[derive(Default)]
pub struct Passthrough {
    inner: Mutex<Opens>,
}

impl Passthrough {
    /// Registers open `fh` of `ino` and answers it: by passthrough from `whole` where the
    /// kernel's rules allow, otherwise with `flags` (plus direct I/O where needed).
    pub fn open(
        &self,
        reply: ReplyOpen,
        ino: u64,
        fh: u64,
        whole: Option<Arc<File>>,
        mut flags: FopenFlags,
    ) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Opens { inodes, handles } = &mut *guard;
        let node = inodes.entry(ino).or_default();
        if let Some(file) = whole
            && node.cached == 0
        {
            if node.backing.is_none() {
                match reply.open_backing(&*file) {
                    Ok(id) => node.backing = Some((file.clone(), id)),
                    Err(e) => {
                        tracing::info!(ino, error = %e, "passthrough refused; reading through the daemon")
                    }
                }
            }
            if let Some((f, id)) = &node.backing
                && Arc::ptr_eq(f, &file)
            {
                node.through += 1;
                handles.insert(fh, (ino, Kind::Through));
                reply.opened_passthrough(fuser::FileHandle(fh), FopenFlags::empty(), id);
                return true;
            }
        }
        let kind = if node.through > 0 || flags.contains(FopenFlags::FOPEN_DIRECT_IO) {
            flags.remove(FopenFlags::FOPEN_KEEP_CACHE);
            flags |= FopenFlags::FOPEN_DIRECT_IO;
            Kind::Direct
        } else {
            node.cached += 1;
            Kind::Cached
        };
        handles.insert(fh, (ino, kind));
        reply.opened(fuser::FileHandle(fh), flags);
        false
    }

    /// Registers an open made by `create`; returns the flags to answer it with.
    pub fn created(&self, ino: u64, fh: u64) -> FopenFlags {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Opens { inodes, handles } = &mut *guard;
        let node = inodes.entry(ino).or_default();
        if node.through > 0 {
            handles.insert(fh, (ino, Kind::Direct));
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        node.cached += 1;
        handles.insert(fh, (ino, Kind::Cached));
        FopenFlags::empty()
    }

    pub fn release(&self, fh: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Opens { inodes, handles } = &mut *guard;
        let Some((ino, kind)) = handles.remove(&fh) else {
            return;
        };
        let Some(node) = inodes.get_mut(&ino) else {
            return;
        };
        match kind {
            Kind::Cached => node.cached = node.cached.saturating_sub(1),
            Kind::Through => {
                node.through = node.through.saturating_sub(1);
                if node.through == 0 {
                    // Closes the backing id with the kernel.
                    node.backing = None;
                }
            }
            Kind::Direct => {}
        }
        if node.cached == 0 && node.through == 0 {
            inodes.remove(&ino);
        }
    }
}
