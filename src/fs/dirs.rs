//! Directories in storage: `mkdir` (marker blobs), `rmdir` (markers, marker-less directories
//! that went with their last entry, containers), and a directory's mode and times, kept in its
//! marker's metadata.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;

use super::*;

impl<S: BlobStore> Namespace<S> {
    /// A directory's mode and times live in its marker blob's metadata; a directory without
    /// one (made by another tool) gets a marker. A container's root has no blob: its mode and
    /// times are kept by this mount only, until it forgets the directory.
    pub(super) async fn set_dir_attrs(
        &self,
        ino: u64,
        acct: usize,
        container: &str,
        prefix: &str,
        change: &SetAttr,
    ) -> Result<Attr> {
        let a = &change.attrs;
        if !prefix.is_empty() {
            self.change_marker(acct, container, prefix, |md| {
                if let Some(m) = a.mode {
                    meta::set_mode(md, m);
                }
                if let Some(t) = a.mtime {
                    meta::set_mtime(md, t);
                }
                if let Some(t) = a.atime {
                    meta::set_atime(md, t);
                }
                Ok(())
            })
            .await?;
        }
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            if let Some(m) = a.mode {
                n.dir.mode = Some(m & 0o7777);
            }
            if let Some(t) = a.mtime {
                n.dir.mtime = Some(meta::round_trip(t));
            }
            if let Some(t) = a.atime {
                n.dir.atime = Some(meta::round_trip(t));
            }
        }
        self.getattr(ino).await
    }

    /// The marker blob of directory `prefix` (ending in `/`), under either name other tools
    /// give it: `dir/` or `dir`.
    pub(super) async fn find_marker(
        &self,
        acct: usize,
        container: &str,
        prefix: &str,
    ) -> Result<Option<(String, BlobProps)>> {
        let store = self.store(acct)?;
        for name in [prefix, prefix.trim_end_matches('/')] {
            match store.head(container, name).await {
                Ok(p) if p.is_folder_marker() => return Ok(Some((name.to_string(), p))),
                Ok(_) | Err(BlobError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Changes the metadata of directory `prefix`'s marker, conditional on its ETag; a
    /// directory without one (made by another tool) gets a marker. Nothing is sent if
    /// `change` fails.
    pub(super) async fn change_marker(
        &self,
        acct: usize,
        container: &str,
        prefix: &str,
        change: impl Fn(&mut BTreeMap<String, String>) -> Result<()>,
    ) -> Result<()> {
        let store = self.store(acct)?;
        // A marker made or changed by someone else between the HEAD and the change: the
        // change is made again on theirs (at most three tries), never dropped.
        for _ in 0..3 {
            let found = self.find_marker(acct, container, prefix).await?;
            let mut md = match &found {
                Some((_, p)) => p.metadata.clone(),
                None => [(meta::FOLDER.to_string(), "true".into())].into(),
            };
            change(&mut md)?;
            let made = match found {
                Some((name, p)) => {
                    let cond = blob::Condition::IfMatch(p.etag);
                    store
                        .set_metadata(container, &name, &md, cond)
                        .await
                        .map(|_| ())
                }
                None => {
                    let cond = blob::Condition::IfNoneMatchAny;
                    let put = store.put(container, prefix, Bytes::new(), cond, &md);
                    put.await.map(|_| ())
                }
            };
            match made {
                Err(BlobError::Conflict(_) | BlobError::PreconditionFailed) => continue,
                r => return r.map_err(Into::into),
            }
        }
        Err(FsError::Stale)
    }

    pub async fn mkdir(&self, parent: u64, name: &str, mode: u16) -> Result<Attr> {
        self.check_writable()?;
        if let NodeKey::Containers(acct) = self.key_of(parent)? {
            if !valid_container(name) {
                return Err(FsError::Invalid);
            }
            match self.store(acct)?.create_container(name).await {
                Err(BlobError::Conflict(_)) => return Err(FsError::Exists),
                r => r?,
            }
            let key = NodeKey::Dir {
                acct,
                container: name.to_string(),
                prefix: String::new(),
            };
            let attr = self.node(key, parent, None);
            self.patch(parent, name, Some(attr.clone()));
            self.known_empty(attr.ino);
            return Ok(attr);
        }
        let (acct, container, prefix) = self.dir_target(parent)?;
        check_name(name)?;
        self.dirs.unphantom(parent, name);
        // A directory made by other tools has no marker: it exists all the same. (The kernel
        // looks the name up before it asks, so this is mostly answered from the listing.)
        match self.lookup_stored(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let marker = format!("{prefix}{name}/");
        let mode = mode & 0o7777;
        // Its time to the nanosecond, as this mount shows it from now on.
        let now = meta::round_trip(SystemTime::now());
        let metadata = [
            (meta::FOLDER.to_string(), "true".to_string()),
            (meta::MODE.to_string(), meta::format_mode(mode)),
            (meta::MTIME.to_string(), meta::format_time(now)),
        ]
        .into();
        let store = &self.store(acct)?;
        let put = store.put(
            &container,
            &marker,
            Bytes::new(),
            blob::Condition::IfNoneMatchAny,
            &metadata,
        );
        match put.await {
            Err(BlobError::Conflict(_) | BlobError::PreconditionFailed) => {
                return Err(FsError::Exists);
            }
            r => r?,
        };
        let key = NodeKey::Dir {
            acct,
            container,
            prefix: marker,
        };
        let kind = EntryKind::Dir(DirMeta {
            mtime: Some(now),
            atime: Some(now),
            mode: Some(mode),
        });
        let attr = self.node(key, parent, Some(&kind));
        self.patch(parent, name, Some(attr.clone()));
        self.known_empty(attr.ino);
        Ok(attr)
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.check_writable()?;
        check_name(name)?;
        if let NodeKey::Containers(acct) = self.key_of(parent)? {
            let store = &self.store(acct)?;
            let page = store.list(name, "", None, None, Some(1)).await?;
            if !page.blobs.is_empty() {
                return Err(FsError::NotEmpty);
            }
            store.delete_container(name).await?;
            self.patch(parent, name, None);
            return Ok(());
        }
        let (acct, container, prefix) = self.dir_target(parent)?;
        let dir = format!("{prefix}{name}/");
        let store = &self.store(acct)?;
        let legacy = format!("{prefix}{name}");
        let (page, head) = tokio::join!(
            store.list(&container, &dir, Some("/"), None, Some(2)),
            store.head(&container, &legacy)
        );
        let page = page?;
        let head = match head {
            Ok(p) => Some(p),
            Err(BlobError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        // A zero-length `dir/` is a marker; one that holds data is an entry (never deleted
        // as if it were a marker).
        let own_marker = page
            .blobs
            .iter()
            .any(|b| b.name == dir && b.props.size == 0);
        if holds_entries(&page, &dir) || self.has_drafts_under(acct, &container, &dir) {
            return Err(FsError::NotEmpty);
        }
        let legacy_marker = head.as_ref().filter(|p| p.is_folder_marker());
        if !own_marker && legacy_marker.is_none() {
            // A directory without a marker (written by another tool) ends with its last
            // entry: removing its entries removed it. If this mount knew it as a directory,
            // its rmdir (`rm -r` comes last to it) has nothing left to do, even where a blob
            // of the same name, hidden by the directory until now, shows again.
            let key = NodeKey::Dir {
                acct,
                container: container.clone(),
                prefix: dir,
            };
            let known = lock(&self.inodes).find(&key).is_some();
            if !known {
                return Err(match head {
                    Some(_) => FsError::NotDir,
                    None => FsError::NotFound,
                });
            }
            self.dirs.unphantom(parent, name);
            self.patch(parent, name, None);
            self.emptied(parent);
            return Ok(());
        }
        if own_marker {
            ignore_missing(store.delete(&container, &dir, blob::Condition::None).await)?;
        }
        if legacy_marker.is_some() {
            ignore_missing(
                store
                    .delete(&container, &legacy, blob::Condition::None)
                    .await,
            )?;
        }
        self.dirs.unphantom(parent, name);
        self.patch(parent, name, None);
        self.emptied(parent);
        Ok(())
    }

    /// An entry of directory `dir` was removed through this mount: if `dir` has no marker
    /// and that was its last entry, it lives on for this mount as an empty directory.
    pub(super) fn emptied(&self, dir: u64) {
        let t = lock(&self.inodes);
        let Some(n) = t.get(dir) else { return };
        let NodeKey::Dir { prefix, .. } = &n.key else {
            return;
        };
        let Some(name) = prefix.trim_end_matches('/').rsplit('/').next() else {
            return;
        };
        if !name.is_empty() {
            self.dirs.emptied(n.parent, name, dir);
        }
    }

    pub(super) fn has_drafts_under(&self, acct: usize, container: &str, dir: &str) -> bool {
        let drafts = self.drafts.shown_inodes();
        let t = lock(&self.inodes);
        drafts.iter().any(|ino| {
            matches!(t.get(*ino).map(|n| &n.key),
                Some(NodeKey::File { acct: a, container: c, name })
                    if *a == acct && c == container && name.starts_with(dir))
        })
    }
}
