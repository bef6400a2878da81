//! Symbolic links in storage, kept the way blobfuse2 keeps them: a blob whose content is the
//! target and whose metadata has `is_symlink=true`. Links other tools wrote so read back, and
//! links made here read back through blobfuse2. A link is a blob like a file for everything
//! else (rename, unlink, times, attributes); hard links stay `EPERM`.

use std::time::SystemTime;

use bytes::Bytes;

use super::*;

/// The longest target (PATH_MAX, with its NUL): the kernel refuses longer ones first.
const MAX_TARGET: usize = 4096;

impl<S: BlobStore> Namespace<S> {
    /// `ln -s target name`: one Put Blob, refused if the name is taken.
    pub async fn symlink(&self, parent: u64, name: &str, target: &str) -> Result<Attr> {
        self.check_writable()?;
        let (acct, container, prefix) = self.dir_target(parent)?;
        check_name(name)?;
        if target.is_empty() || target.len() >= MAX_TARGET || target.contains('\0') {
            return Err(FsError::Invalid);
        }
        match self.lookup_stored(parent, name).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let full = format!("{prefix}{name}");
        let now = meta::round_trip(SystemTime::now());
        let metadata: std::collections::BTreeMap<String, String> = [
            (meta::SYMLINK.to_string(), "true".to_string()),
            (meta::MTIME.to_string(), meta::format_time(now)),
        ]
        .into();
        let data = Bytes::copy_from_slice(target.as_bytes());
        let cond = blob::Condition::IfNoneMatchAny;
        let store = self.store(acct)?;
        let etag = match store.put(&container, &full, data, cond, &metadata).await {
            Err(BlobError::Conflict(_) | BlobError::PreconditionFailed) => {
                return Err(FsError::Exists);
            }
            r => r?,
        };
        let props = BlobProps {
            size: target.len() as u64,
            etag,
            last_modified: now,
            metadata,
            system: None,
        };
        let key = NodeKey::File {
            acct,
            container,
            name: full,
        };
        let attr = self.node(key, parent, Some(&EntryKind::File(props)));
        self.patch(parent, name, Some(attr.clone()));
        Ok(attr)
    }

    /// The target of a link: a link in storage costs one GET of its blob (the kernel asks
    /// at each path walk through it; targets are short).
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let NodeKey::File {
            acct,
            container,
            name,
        } = self.key_of(ino)?
        else {
            return self.service_link(ino);
        };
        let attr = self.getattr(ino).await?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        // An empty blob has no range to ask for (storage refuses one).
        if attr.size == 0 {
            return Err(FsError::Invalid);
        }
        // The size shown may be a cached one, of a link since replaced by a longer target:
        // the GET asks for as much as any target can be, and its answer decides.
        let store = self.store(acct)?;
        let target = store
            .get_range(&container, &name, 0, MAX_TARGET as u64, None)
            .await?;
        // A link blob another tool left empty or huge is no link anyone can follow.
        if target.is_empty() || target.len() >= MAX_TARGET {
            return Err(FsError::Invalid);
        }
        Ok(target.to_vec())
    }
}
