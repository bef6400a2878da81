//! `rename`: a file is a server-side copy then a delete; a directory, every blob under it.
//! Neither is atomic (SEMANTICS.md says what a failure leaves).

use std::sync::Arc;

use bytes::Bytes;

use super::*;

impl<S: BlobStore> Namespace<S> {
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<()> {
        self.check_writable()?;
        let (acct, container, prefix) = self.dir_target(parent)?;
        let (acct2, container2, prefix2) = self.dir_target(new_parent)?;
        if acct != acct2 || container != container2 {
            // mv copies and deletes by itself on EXDEV.
            return Err(FsError::CrossDevice);
        }
        check_name(new_name)?;
        let src = self.lookup(parent, name).await?;
        let dst = match self.lookup(new_parent, new_name).await {
            Ok(a) => Some(a),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if dst.is_some() && no_replace {
            return Err(FsError::Exists);
        }
        let store = self.store(acct)?;
        let (from, to) = (format!("{prefix}{name}"), format!("{prefix2}{new_name}"));
        match src.kind {
            // A link in storage is a blob like a file (the service trees' links cannot get
            // here: they are in no container).
            Kind::File | Kind::Symlink => {
                if dst.as_ref().is_some_and(|d| d.kind == Kind::Dir) {
                    return Err(FsError::IsDir);
                }
                let draft = self.draft_of(src.ino);
                if let Some(d) = &draft {
                    self.commit(src.ino, d).await?;
                }
                let props = store.head(&container, &from).await?;
                let cond = match no_replace {
                    true => blob::Condition::IfNoneMatchAny,
                    false => blob::Condition::None,
                };
                let etag = match store.copy(&container, &from, &props.etag, &to, cond).await {
                    Err(BlobError::Conflict(_)) if no_replace => return Err(FsError::Exists),
                    r => r?,
                };
                let gone = store
                    .delete(&container, &from, blob::Condition::IfMatch(props.etag))
                    .await;
                if let Err(e) = gone {
                    tracing::warn!(container, from, to, error = %e,
                        "renamed by copy, but the source could not be deleted");
                }
                let (old, new) = (
                    NodeKey::File {
                        acct,
                        container: container.clone(),
                        name: from,
                    },
                    NodeKey::File {
                        acct,
                        container: container.clone(),
                        name: to.clone(),
                    },
                );
                lock(&self.inodes).rename(&old, new, new_parent);
                self.patch(parent, name, None);
                self.emptied(parent);
                if let Ok(attr) = self.getattr(src.ino).await {
                    self.patch(new_parent, new_name, Some(attr));
                }
                if let Some(d) = draft {
                    d.retarget(to, etag).await;
                    self.drafts.moved(src.ino, new_parent, new_name);
                }
            }
            Kind::Dir => {
                let (from, to) = (format!("{from}/"), format!("{to}/"));
                if let Some(d) = &dst {
                    if d.kind != Kind::Dir {
                        return Err(FsError::NotDir);
                    }
                    let page = store
                        .list(&container, &to, Some("/"), None, Some(2))
                        .await?;
                    if holds_entries(&page, &to) {
                        return Err(FsError::NotEmpty);
                    }
                }
                if self.has_drafts_under(acct, &container, &from) {
                    return Err(FsError::Busy("a file in the directory is open for writing"));
                }
                self.rename_dir(&store, &container, &from, &to).await?;
                let (old, new) = (
                    NodeKey::Dir {
                        acct,
                        container: container.clone(),
                        prefix: from,
                    },
                    NodeKey::Dir {
                        acct,
                        container,
                        prefix: to,
                    },
                );
                lock(&self.inodes).rename(&old, new, new_parent);
                self.dirs.unphantom(parent, name);
                self.changed(src.ino);
                self.changed(parent);
                self.changed(new_parent);
                self.emptied(parent);
                self.touch_dir(parent);
                self.touch_dir(new_parent);
            }
        }
        Ok(())
    }

    /// Copies every blob under `from` to `to`, then deletes the originals. Not atomic: a
    /// failure while copying leaves the originals and some copies; nothing is deleted until
    /// every copy is made.
    async fn rename_dir(
        &self,
        store: &Arc<S>,
        container: &str,
        from: &str,
        to: &str,
    ) -> Result<()> {
        use futures::StreamExt;
        let all = blob::list_all(store.as_ref(), container, from, None).await?;
        if all.blobs.is_empty() {
            // An empty directory that lives only in this mount (emptied, without a marker):
            // the new name gets a marker, so it is not lost on the way.
            let md = [(meta::FOLDER.to_string(), "true".to_string())].into();
            let put = store.put(
                container,
                to,
                Bytes::new(),
                blob::Condition::IfNoneMatchAny,
                &md,
            );
            return match put.await {
                Ok(_) | Err(BlobError::Conflict(_) | BlobError::PreconditionFailed) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let jobs: Vec<_> = all
            .blobs
            .into_iter()
            .map(|b| {
                let dst = format!("{to}{}", &b.name[from.len()..]);
                (
                    store.clone(),
                    container.to_string(),
                    b.name,
                    b.props.etag,
                    dst,
                )
            })
            .collect();
        let copies: Vec<std::result::Result<String, BlobError>> =
            futures::stream::iter(jobs.clone())
                .map(|(store, c, name, etag, dst)| async move {
                    store
                        .copy(&c, &name, &etag, &dst, blob::Condition::None)
                        .await
                })
                .buffer_unordered(self.opts.max_requests)
                .collect()
                .await;
        for c in copies {
            c?;
        }
        let deletes: Vec<std::result::Result<(), BlobError>> = futures::stream::iter(jobs)
            .map(|(store, c, name, etag, _)| async move {
                ignore_missing(
                    store
                        .delete(&c, &name, blob::Condition::IfMatch(etag))
                        .await,
                )
            })
            .buffer_unordered(self.opts.max_requests)
            .collect()
            .await;
        for d in deletes {
            d?;
        }
        Ok(())
    }
}
