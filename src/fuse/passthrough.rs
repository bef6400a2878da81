//! Kernel passthrough (Linux 6.9+): an open of a blob the disk tier holds whole is answered
//! with the tier's file, and the kernel reads it (and maps it) without asking the daemon.
//!
//! The kernel puts two rules on it, which this module keeps per inode: all passthrough opens
//! of an inode share one backing file (one `BackingId`, closed when the last of them is
//! released), and while an inode has passthrough opens, every open of it must be one too
//! (the kernel fails any other with EINVAL). So a passthrough open is offered only when the
//! inode has no other open, a later read-only open of the same version shares the backing
//! file, and an open that cannot (for writing, of a newer version, with the tier off) is
//! refused with ETXTBSY, as Linux refuses writes to a running program, until the
//! passthrough opens close.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use fuser::{BackingId, Errno, FopenFlags, ReplyOpen};

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

/// How an open was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Through,
    Plain,
    /// Refused with ETXTBSY: the caller gives the handle back.
    Busy,
}

/// The opens of every inode, while the kernel allows passthrough.
#[derive(Default)]
pub struct Passthrough {
    inner: Mutex<Opens>,
}

impl Passthrough {
    /// Registers open `fh` of `ino` and answers it: by passthrough from `whole` (the tier's
    /// file of the version this open sees) where the kernel's rules allow, otherwise with
    /// `flags`, or with ETXTBSY when the inode's passthrough opens forbid any other.
    pub fn open(
        &self,
        reply: ReplyOpen,
        ino: u64,
        fh: u64,
        whole: Option<Arc<File>>,
        flags: FopenFlags,
    ) -> Answered {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Opens { inodes, handles } = &mut *guard;
        let node = inodes.entry(ino).or_default();
        if let Some((f, id)) = &node.backing {
            if whole.as_ref().is_some_and(|w| Arc::ptr_eq(f, w)) {
                node.through += 1;
                handles.insert(fh, (ino, Kind::Through));
                reply.opened_passthrough(fuser::FileHandle(fh), FopenFlags::empty(), id);
                return Answered::Through;
            }
            tracing::info!(
                ino,
                "open refused (ETXTBSY): the file is open by passthrough; opens for writing, \
                 or of a newer version, wait until those close"
            );
            reply.error(Errno::ETXTBSY);
            return Answered::Busy;
        }
        if let Some(file) = whole
            && node.cached == 0
        {
            match reply.open_backing(&*file) {
                Ok(id) => {
                    node.through += 1;
                    handles.insert(fh, (ino, Kind::Through));
                    reply.opened_passthrough(fuser::FileHandle(fh), FopenFlags::empty(), &id);
                    node.backing = Some((file, id));
                    return Answered::Through;
                }
                Err(e) => {
                    tracing::info!(ino, error = %e, "passthrough refused; reading through the daemon")
                }
            }
        }
        // Direct-I/O opens take no part in the kernel's per-inode I/O mode.
        let kind = match flags.contains(FopenFlags::FOPEN_DIRECT_IO) {
            true => Kind::Direct,
            false => {
                node.cached += 1;
                Kind::Cached
            }
        };
        handles.insert(fh, (ino, kind));
        reply.opened(fuser::FileHandle(fh), flags);
        Answered::Plain
    }

    /// Registers an open made by `create`; false if the inode's passthrough opens forbid
    /// it (the caller answers ETXTBSY and gives the handle back).
    pub fn created(&self, ino: u64, fh: u64) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Opens { inodes, handles } = &mut *guard;
        let node = inodes.entry(ino).or_default();
        if node.through > 0 {
            return false;
        }
        node.cached += 1;
        handles.insert(fh, (ino, Kind::Cached));
        true
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
