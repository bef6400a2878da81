//! The FUSE adapter: links fuser's callbacks to [`Namespace`] and maps errors to errno.
//!
//! Callbacks never block a fuser thread on storage: each one spawns a task on the tokio
//! runtime that answers the kernel when storage has. [`errno`] is the only place an error
//! becomes an errno.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::blob::{BlobError, BlobStore, deadline};
use crate::fs::{Attr, FsError, Kind, Namespace, SetAttr, xattr};
use crate::write::AttrChange;

/// Largest read and write the kernel is asked to send.
pub const MAX_IO: u32 = 1024 * 1024;

mod passthrough;

pub struct FuseFs<S> {
    ns: Arc<Namespace<S>>,
    rt: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
    /// Set once the kernel has agreed to passthrough.
    through: Option<Arc<passthrough::Passthrough>>,
}

impl<S: BlobStore> FuseFs<S> {
    /// Runs `work` on the runtime (a fuser thread never waits on storage) and hands `done`
    /// its result, or the errno of its failure, which is logged here.
    fn answer<T: Send + 'static>(
        &self,
        op: &'static str,
        ino: u64,
        work: impl std::future::Future<Output = Result<T, FsError>> + Send + 'static,
        done: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        let limit = self.ns.options().timeout;
        self.rt.spawn(async move {
            let result = deadline::within(limit, work).await;
            done(result.map_err(|e| {
                log_error(op, ino, &e);
                errno(&e)
            }))
        });
    }

    /// Answers an operation that makes the entry `name` in `parent` (`mkdir`, `mknod`,
    /// `symlink`): its attributes, under the inode the kernel will hold.
    fn answer_entry(
        &self,
        op: &'static str,
        parent: INodeNo,
        name: String,
        reply: ReplyEntry,
        make: impl std::future::Future<Output = Result<Attr, FsError>> + Send + 'static,
    ) {
        let (ns, ttl, uid, gid) = (self.ns.clone(), self.ttl(), self.uid, self.gid);
        let work = async move {
            let mut a = make.await?;
            a.ino = ns.pin(parent.0, &name, &a);
            Ok(a)
        };
        self.answer(op, parent.0, work, move |r| match r {
            Ok(a) => reply.entry(&ttl, &file_attr(&a, uid, gid), Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    pub fn new(ns: Arc<Namespace<S>>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        FuseFs {
            ns,
            rt,
            uid,
            gid,
            through: None,
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        file_attr(a, self.uid, self.gid)
    }

    fn ttl(&self) -> Duration {
        self.ns.options().attr_ttl
    }
}

pub fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    let kind = match a.kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink: a.nlink,
        uid,
        gid,
        rdev: 0,
        // cp, tar and friends size their buffers by st_blksize: invite large reads.
        blksize: MAX_IO,
        flags: 0,
    }
}

/// The one place an internal error becomes an errno.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::ReadOnly => Errno::EROFS,
        FsError::Stale => Errno::from_i32(libc::ESTALE),
        FsError::BadHandle => Errno::EBADF,
        FsError::Denied => Errno::EACCES,
        FsError::NotPermitted => Errno::EPERM,
        FsError::Exists => Errno::EEXIST,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::Invalid => Errno::EINVAL,
        FsError::NoAttr => Errno::from_i32(libc::ENODATA),
        FsError::NotSupported => Errno::from_i32(libc::ENOTSUP),
        FsError::NoSpace => Errno::from_i32(libc::ENOSPC),
        FsError::Archived => Errno::from_i32(libc::ENODATA),
        FsError::NotBlockBlob => Errno::EPERM,
        FsError::NameTooLong => Errno::ENAMETOOLONG,
        FsError::TooLarge => Errno::EFBIG,
        FsError::CrossDevice => Errno::EXDEV,
        FsError::Busy(_) => Errno::EBUSY,
        FsError::Write(_) => Errno::EIO,
        FsError::Storage(BlobError::Denied { .. }) => Errno::EACCES,
        FsError::Storage(_) => Errno::EIO,
        FsError::Unavailable(_) => Errno::from_i32(libc::EHOSTDOWN),
    }
}

/// An attribute name this mount may hold (`user.*`): the others are refused on the FUSE
/// thread, without a task, since the kernel asks for security.capability at every write and
/// `ls` for security.selinux on every entry.
fn served_name(name: &OsStr) -> Option<String> {
    name.to_str()
        .filter(|n| xattr::served(n))
        .map(str::to_owned)
}

/// Answers getxattr or listxattr: the size when asked for it (`size` 0), else the value if
/// it fits.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(value),
        _ => reply.error(Errno::from_i32(libc::ERANGE)),
    }
}

/// Answers an operation that returns nothing.
fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), Errno>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers an operation that returns attributes.
fn attr(
    reply: ReplyAttr,
    ttl: Duration,
    uid: u32,
    gid: u32,
) -> impl FnOnce(Result<Attr, Errno>) + Send + 'static {
    move |r| match r {
        Ok(a) => reply.attr(&ttl, &file_attr(&a, uid, gid)),
        Err(e) => reply.error(e),
    }
}

fn log_error(op: &str, ino: u64, e: &FsError) {
    match e {
        FsError::Storage(_) | FsError::Stale | FsError::Write(_) => {
            tracing::warn!(op, ino, error = %e, "failed")
        }
        _ => tracing::debug!(op, ino, error = %e, "failed"),
    }
}

impl<S: BlobStore> Filesystem for FuseFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // readdirplus: `ls -l` gets every entry's attributes from the listing itself.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::info!(?missing, "kernel lacks readdirplus");
        }
        // No atomic O_TRUNC: the kernel truncates with a separate setattr once the open has
        // passed its own checks. Truncating inside open would truncate (and commit at
        // release) a file whose open the kernel then refuses, e.g. ETXTBSY for a running
        // program. The truncation is committed at the next flush either way.
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        // Passthrough needs a disk tier to pass through to, and CAP_SYS_ADMIN for the
        // kernel's backing-file ioctl. A stack depth of 2 lets the tier sit on overlayfs.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let opts = self.ns.options();
        if opts.disk.is_some() && opts.passthrough && root {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    let _ = config.set_max_stack_depth(2);
                    self.through = Some(Arc::default());
                    self.ns.set_passthrough(true);
                }
                Err(_) => {
                    tracing::info!("the kernel offers no passthrough: reading through the daemon")
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // Blob names are UTF-8: a name that is not cannot exist.
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::ENOENT);
        };
        let (ns, ttl, uid, gid) = (self.ns.clone(), self.ttl(), self.uid, self.gid);
        let limit = ns.options().timeout;
        self.rt.spawn(async move {
            match deadline::within(limit, ns.lookup(parent.0, &name)).await {
                Ok(mut a) => {
                    a.ino = ns.pin(parent.0, &name, &a);
                    reply.entry(&ttl, &file_attr(&a, uid, gid), Generation(0))
                }
                Err(FsError::NotFound) => {
                    // A negative entry (inode 0): the kernel remembers the miss for the
                    // listing TTL instead of asking again for every `stat` of the name.
                    let mut none = file_attr(&Attr::missing(), uid, gid);
                    none.ino = INodeNo(0);
                    reply.entry(&ns.options().dir_ttl, &none, Generation(0))
                }
                Err(e) => {
                    log_error("lookup", parent.0, &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (ns, ttl, uid, gid) = (self.ns.clone(), self.ttl(), self.uid, self.gid);
        self.answer(
            "getattr",
            ino.0,
            async move { ns.getattr(ino.0).await },
            attr(reply, ttl, uid, gid),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ns = self.ns.clone();
        self.answer(
            "readlink",
            ino.0,
            async move { ns.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            },
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        // Blob names and contents here are UTF-8 text: blobfuse2 reads targets as such.
        let (Some(name), Some(target)) = (
            link_name.to_str().map(str::to_owned),
            target.to_str().map(str::to_owned),
        ) else {
            return reply.error(Errno::EINVAL);
        };
        let ns = self.ns.clone();
        let made = name.clone();
        self.answer_entry("symlink", parent, name, reply, async move {
            ns.symlink(parent.0, &made, &target).await
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let ns = self.ns.clone();
        let stats_ns = self.ns.clone();
        let through = self.through.clone();
        let work = async move { ns.open(ino.0, write).await };
        self.answer("open", ino.0, work, move |r| match r {
            Ok(o) => {
                let mut flags = FopenFlags::empty();
                if o.keep_cache {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                if o.direct_io {
                    flags |= FopenFlags::FOPEN_DIRECT_IO;
                }
                match through {
                    Some(t) => match t.open(reply, ino.0, o.fh, o.whole, flags) {
                        passthrough::Answered::Through => {
                            let stats = stats_ns.stats();
                            crate::stats::Stats::add(&stats.passthrough_opens, 1);
                        }
                        passthrough::Answered::Busy => {
                            tokio::spawn(async move { stats_ns.release(o.fh).await });
                        }
                        passthrough::Answered::Plain => {}
                    },
                    None => reply.opened(FileHandle(o.fh), flags),
                }
            }
            Err(e) => reply.error(e),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // A read that needs no fetch is answered on this thread: the hand-off to the runtime
        // and back cost a random reader more than the read itself.
        let ready = {
            let _rt = self.rt.enter();
            self.ns.read_ready(fh.0, offset, size)
        };
        match ready {
            Some(Ok(data)) => return reply.data(&data),
            Some(Err(e)) => {
                log_error("read", ino.0, &e);
                return reply.error(errno(&e));
            }
            None => {}
        }
        let ns = self.ns.clone();
        self.answer(
            "read",
            ino.0,
            async move { ns.read(fh.0, offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every close: what was written is committed before close returns, so close reports
        // a failed or refused commit.
        let ns = self.ns.clone();
        self.answer(
            "flush",
            ino.0,
            async move { ns.flush(fh.0).await },
            empty(reply),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let ns = self.ns.clone();
        self.answer(
            "fsync",
            ino.0,
            async move { ns.flush(fh.0).await },
            empty(reply),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ns = self.ns.clone();
        if let Some(t) = &self.through {
            t.release(fh.0);
        }
        self.rt.spawn(async move {
            ns.release(fh.0).await;
            reply.ok();
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::EINVAL);
        };
        let (ns, ttl, uid, gid) = (self.ns.clone(), self.ttl(), self.uid, self.gid);
        let mode = (mode & !umask & 0o7777) as u16;
        let work = async move {
            let (mut a, o) = ns.create(parent.0, &name, mode).await?;
            a.ino = ns.pin(parent.0, &name, &a);
            Ok((a, o))
        };
        let through = self.through.clone();
        let ns = self.ns.clone();
        self.answer("create", parent.0, work, move |r| match r {
            Ok((a, o)) => {
                if through.is_some_and(|t| !t.created(a.ino, o.fh)) {
                    reply.error(Errno::ETXTBSY);
                    tokio::spawn(async move { ns.release(o.fh).await });
                    return;
                }
                reply.created(
                    &ttl,
                    &file_attr(&a, uid, gid),
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // On the runtime like every other call: a writer that waits (for budget, or to read
        // back a block it patches) feels the backpressure in its own syscall, while the fuser
        // threads go on serving `ls` and reads of cached files. The kernel sends at most one
        // write per writing thread at a time, so the copies in flight are few.
        let (ns, data) = (self.ns.clone(), data.to_vec());
        let len = data.len() as u32;
        self.answer(
            "write",
            ino.0,
            async move { ns.write(fh.0, offset, &data).await },
            move |r| match r {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Owners are the mount's: changing them is refused, "changing" them to what they
        // are is not (cp -p and tar as root do that).
        if uid.is_some_and(|u| u != self.uid) || gid.is_some_and(|g| g != self.gid) {
            return reply.error(Errno::EPERM);
        }
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => std::time::SystemTime::now(),
        };
        let change = SetAttr {
            size,
            attrs: AttrChange {
                mtime: mtime.map(time),
                atime: atime.map(time),
                mode: mode.map(|m| (m & 0o7777) as u16),
            },
        };
        let (ns, ttl, uid, gid) = (self.ns.clone(), self.ttl(), self.uid, self.gid);
        self.answer(
            "setattr",
            ino.0,
            async move { ns.setattr(ino.0, change).await },
            attr(reply, ttl, uid, gid),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = (mode & !umask & 0o7777) as u16;
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::EINVAL);
        };
        let ns = self.ns.clone();
        let made = name.clone();
        self.answer_entry("mkdir", parent, name, reply, async move {
            ns.mkdir(parent.0, &made, mode).await
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::ENOENT);
        };
        let ns = self.ns.clone();
        self.answer(
            "rmdir",
            parent.0,
            async move { ns.rmdir(parent.0, &name).await },
            empty(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::ENOENT);
        };
        let ns = self.ns.clone();
        self.answer(
            "unlink",
            parent.0,
            async move { ns.unlink(parent.0, &name).await },
            empty(reply),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (
            name.to_str().map(str::to_owned),
            newname.to_str().map(str::to_owned),
        ) else {
            return reply.error(Errno::EINVAL);
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let ns = self.ns.clone();
        self.answer(
            "rename",
            parent.0,
            async move {
                ns.rename(parent.0, &name, newparent.0, &newname, no_replace)
                    .await
            },
            empty(reply),
        );
    }

    // fuser's default batch_forget calls this for each inode of a batch.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ns.forget(ino.0, nlookup);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ns = self.ns.clone();
        self.answer(
            "opendir",
            ino.0,
            async move { ns.opendir(ino.0).await },
            move |r| match r {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.ns.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let parent = self.ns.parent_of(ino.0);
        let dots = [(ino.0, "."), (parent, "..")];
        let all = dots
            .iter()
            .map(|&(i, n)| (i, FileType::Directory, n))
            .chain(entries.entries().map(|e| {
                let kind = self.attr(&e.attr).kind;
                (e.attr.ino, kind, e.name.as_str())
            }));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.ns.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let ttl = self.ttl();
        // `.` and `..` are not looked up by the kernel from readdirplus; any directory
        // attributes will do for them.
        let self_attr = Attr {
            ino: ino.0,
            kind: Kind::Dir,
            size: 0,
            mtime: std::time::UNIX_EPOCH,
            atime: std::time::UNIX_EPOCH,
            perm: 0o755,
            nlink: 1,
        };
        let parent = Attr {
            ino: self.ns.parent_of(ino.0),
            ..self_attr.clone()
        };
        let dots = [(".", &self_attr), ("..", &parent)];
        let all = dots
            .into_iter()
            .chain(entries.entries().map(|e| (e.name.as_str(), &e.attr)));
        for (i, (name, attr)) in all.enumerate().skip(offset as usize) {
            // The kernel takes a reference to every entry but the dots; the count goes up
            // first so a forget racing this answer cannot drop the node under it.
            let mut attr = attr.clone();
            if i >= 2 {
                attr.ino = self.ns.pin(ino.0, name, &attr);
            }
            let full = reply.add(
                INodeNo(attr.ino),
                i as u64 + 1,
                name,
                &ttl,
                &self.attr(&attr),
                Generation(0),
            );
            if full {
                if i >= 2 {
                    self.ns.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.ns.releasedir(fh.0);
        reply.ok();
    }

    /// Regular files only: storage has no devices, FIFOs or sockets.
    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::ENOSYS);
        }
        let Some(name) = name.to_str().map(str::to_owned) else {
            return reply.error(Errno::EINVAL);
        };
        let ns = self.ns.clone();
        let mode = (mode & !umask & 0o7777) as u16;
        let made = name.clone();
        self.answer_entry("mknod", parent, name, reply, async move {
            ns.mknod_file(parent.0, &made, mode).await
        });
    }

    /// Storage has no hard links: a second name would be a second copy.
    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = served_name(name) else {
            return reply.error(Errno::from_i32(libc::ENOTSUP));
        };
        let ns = self.ns.clone();
        self.answer(
            "getxattr",
            ino.0,
            async move { ns.getxattr(ino.0, &name).await },
            move |r| match r {
                Ok(value) => xattr_reply(reply, size, &value),
                Err(e) => reply.error(e),
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ns = self.ns.clone();
        self.answer(
            "listxattr",
            ino.0,
            async move { ns.listxattr(ino.0).await },
            move |r| match r {
                Ok(names) => {
                    let mut list = Vec::new();
                    for n in names {
                        list.extend_from_slice(n.as_bytes());
                        list.push(0);
                    }
                    xattr_reply(reply, size, &list)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = served_name(name) else {
            return reply.error(Errno::from_i32(libc::ENOTSUP));
        };
        let (ns, value) = (self.ns.clone(), value.to_vec());
        self.answer(
            "setxattr",
            ino.0,
            async move { ns.setxattr(ino.0, &name, Some(&value), flags).await },
            empty(reply),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = served_name(name) else {
            return reply.error(Errno::from_i32(libc::ENOTSUP));
        };
        let ns = self.ns.clone();
        self.answer(
            "removexattr",
            ino.0,
            async move { ns.setxattr(ino.0, &name, None, 0).await },
            empty(reply),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Blob storage has no fixed capacity; report a large, stable size so tools that
        // check free space before writing (cp, rsync, installers) go ahead.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel has already checked the mode bits.
        reply.ok();
    }
}
