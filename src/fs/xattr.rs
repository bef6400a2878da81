//! Extended attributes of files and directories in storage.
//!
//! - `user.<key>` is the blob's metadata `<key>` (a directory's: its marker blob's). A change
//!   is one Set Blob Metadata, conditional on the ETag like a commit; a file open for writing
//!   keeps it for its commit at close. batchfs's own keys ([`OWN`]) are neither shown nor
//!   settable through here.
//! - `user.azure.<property>` ([`Prop`]) is one of the blob's system properties: read by
//!   name, never listed (so `cp --preserve=xattr`, `rsync -X` and `tar --xattrs` carry the
//!   metadata only). `content_type` and `access_tier` can be set.
//! - Every other namespace (`security.`, `system.`, `trusted.`) is ENOTSUP at once, without a
//!   request, so that `ls` and `cp` stop asking.
//!
//! Metadata names must be C# identifiers and values printable ASCII (what an HTTP header
//! carries unchanged); anything else is EINVAL before any request, never a half-made change.

use std::collections::BTreeMap;

use super::*;
use crate::blob::SystemProps;

/// Metadata keys batchfs and the conventions it follows keep for themselves.
const OWN: [&str; 9] = [
    meta::MTIME,
    meta::ATIME,
    meta::MODE,
    meta::FOLDER,
    meta::COMMIT,
    meta::SYMLINK,
    meta::AZCOPY_MTIME,
    meta::AZCOPY_ATIME,
    meta::AZCOPY_MODE,
];

/// Azure's limit on the metadata of one blob, names and values together.
const METADATA_LIMIT: usize = 8 * 1024;

/// `setxattr` flags.
const CREATE: i32 = libc::XATTR_CREATE;
const REPLACE: i32 = libc::XATTR_REPLACE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prop {
    ContentType,
    Etag,
    ContentMd5,
    AccessTier,
    BlobType,
    LastModified,
    LeaseState,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// A metadata key.
    Meta(&'a str),
    Prop(Prop),
    /// `user.azure.` and a name that is no property.
    NoProp,
    /// Not in `user.`.
    Other,
}

pub fn parse(name: &str) -> Name<'_> {
    if let Some(p) = name.strip_prefix("user.azure.") {
        return match p {
            "content_type" => Name::Prop(Prop::ContentType),
            "etag" => Name::Prop(Prop::Etag),
            "content_md5" => Name::Prop(Prop::ContentMd5),
            "access_tier" => Name::Prop(Prop::AccessTier),
            "blob_type" => Name::Prop(Prop::BlobType),
            "last_modified" => Name::Prop(Prop::LastModified),
            "lease_state" => Name::Prop(Prop::LeaseState),
            _ => Name::NoProp,
        };
    }
    match name.strip_prefix("user.") {
        Some(key) => Name::Meta(key),
        None => Name::Other,
    }
}

/// Whether an attribute of this name could exist: the FUSE edge answers the others at once.
pub fn served(name: &str) -> bool {
    name.starts_with("user.")
}

fn is_own(key: &str) -> bool {
    OWN.iter().any(|o| o.eq_ignore_ascii_case(key))
}

/// The metadata keys shown as `user.<key>`.
pub fn listed(metadata: &BTreeMap<String, String>) -> Vec<String> {
    metadata
        .keys()
        .filter(|k| !is_own(k))
        .map(|k| format!("user.{k}"))
        .collect()
}

/// The value of `user.<key>`.
pub fn get(metadata: &BTreeMap<String, String>, key: &str) -> Result<Vec<u8>> {
    if is_own(key) {
        return Err(FsError::NoAttr);
    }
    meta::get(metadata, key)
        .map(|v| v.as_bytes().to_vec())
        .ok_or(FsError::NoAttr)
}

/// A C# identifier in ASCII: what Azure takes as a metadata name.
fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Printable ASCII without space at either end: an HTTP header carries it unchanged.
fn valid_value(value: &[u8]) -> Option<&str> {
    let ok = value.iter().all(|&b| (0x20..0x7f).contains(&b))
        && value.first().is_none_or(|&b| b != b' ')
        && value.last().is_none_or(|&b| b != b' ');
    match ok {
        true => std::str::from_utf8(value).ok(),
        false => None,
    }
}

/// One `setxattr` (`value` set) or `removexattr` of `user.<key>`, kept as data so that it
/// can be applied again to a newer version of the blob.
#[derive(Debug, Clone, Copy)]
pub struct SetXattr<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    pub flags: i32,
}

impl SetXattr<'_> {
    pub fn apply(&self, metadata: &mut BTreeMap<String, String>) -> Result<()> {
        apply(metadata, self.key, self.value, self.flags)
    }
}

/// Sets (`Some`) or removes (`None`) `user.<key>` in `metadata`, as `setxattr` flags say.
/// Nothing changes unless all of it is allowed.
pub fn apply(
    metadata: &mut BTreeMap<String, String>,
    key: &str,
    value: Option<&[u8]>,
    flags: i32,
) -> Result<()> {
    if is_own(key) {
        return Err(FsError::NotPermitted);
    }
    if !valid_key(key) {
        return Err(FsError::Invalid);
    }
    let exists = meta::get(metadata, key).is_some();
    let Some(value) = value else {
        return match exists {
            true => {
                meta::remove(metadata, key);
                Ok(())
            }
            false => Err(FsError::NoAttr),
        };
    };
    if flags & CREATE != 0 && exists {
        return Err(FsError::Exists);
    }
    if flags & REPLACE != 0 && !exists {
        return Err(FsError::NoAttr);
    }
    let value = valid_value(value).ok_or(FsError::Invalid)?;
    let mut next = metadata.clone();
    meta::set(&mut next, key, value.to_string());
    // Room is kept for what every commit writes beside: `mtime` (RFC 3339, at most 30
    // bytes) and `batchfscommit` (16 hex digits), so a blob near the limit gets ENOSPC here
    // rather than a commit Azure refuses.
    let own = [(meta::MTIME, 30), (meta::COMMIT, 16)];
    let size: usize = next
        .iter()
        .filter(|(k, _)| !own.iter().any(|(o, _)| k.eq_ignore_ascii_case(o)))
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + own.iter().map(|(k, v)| k.len() + v).sum::<usize>();
    if size > METADATA_LIMIT {
        return Err(FsError::NoSpace);
    }
    *metadata = next;
    Ok(())
}

/// The value of a property, as `user.azure.<prop>` shows it.
pub fn prop(p: &BlobProps, which: Prop) -> Result<Vec<u8>> {
    let s = p.system();
    let v = match which {
        Prop::Etag => Some(p.etag.clone()),
        Prop::LastModified => Some(meta::format_time(p.last_modified)),
        Prop::ContentType => s.content_type.clone(),
        Prop::ContentMd5 => s.content_md5.clone(),
        Prop::AccessTier => s.access_tier.clone(),
        Prop::BlobType => s.blob_type.clone(),
        Prop::LeaseState => s.lease_state.clone(),
    };
    v.map(String::into_bytes).ok_or(FsError::NoAttr)
}

/// The tier names Set Blob Tier takes, whatever case they were given in.
fn tier(value: &[u8]) -> Option<&'static str> {
    let v = std::str::from_utf8(value).ok()?;
    ["Hot", "Cool", "Cold", "Archive"]
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(v.trim()))
}

/// Where the attributes of a node live.
enum Holder {
    File {
        acct: usize,
        container: String,
        name: String,
    },
    /// A directory in a container: its marker blob, if it has one.
    Dir {
        acct: usize,
        container: String,
        prefix: String,
    },
    /// Anything else (accounts, a container's root, the Batch service): no attributes.
    None,
}

impl<S: BlobStore> Namespace<S> {
    fn holder(&self, ino: u64) -> Result<Holder> {
        Ok(match self.key_of(ino)? {
            NodeKey::File {
                acct,
                container,
                name,
            } => Holder::File {
                acct,
                container,
                name,
            },
            NodeKey::Dir {
                acct,
                container,
                prefix,
            } if !prefix.is_empty() => Holder::Dir {
                acct,
                container,
                prefix,
            },
            _ => Holder::None,
        })
    }

    /// What storage holds now for the node's attributes: the blob, or the directory's marker.
    async fn attr_blob(&self, holder: &Holder) -> Result<Option<BlobProps>> {
        match holder {
            Holder::File {
                acct,
                container,
                name,
            } => Ok(Some(self.store(*acct)?.head(container, name).await?)),
            Holder::Dir {
                acct,
                container,
                prefix,
            } => Ok(self
                .find_marker(*acct, container, prefix)
                .await?
                .map(|m| m.1)),
            Holder::None => Ok(None),
        }
    }

    /// The metadata `user.*` shows: a file open for writing shows what its commit will keep.
    async fn user_metadata(&self, ino: u64, holder: &Holder) -> Result<BTreeMap<String, String>> {
        if let (Holder::File { .. }, Some(d)) = (holder, self.draft_of(ino)) {
            return Ok(d.metadata().await);
        }
        Ok(self
            .attr_blob(holder)
            .await?
            .map(|p| p.metadata)
            .unwrap_or_default())
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>> {
        let holder = self.holder(ino)?;
        match parse(name) {
            Name::Other => Err(FsError::NotSupported),
            Name::NoProp => Err(FsError::NoAttr),
            Name::Meta(key) => get(&self.user_metadata(ino, &holder).await?, key),
            // A file not committed yet has no properties.
            Name::Prop(which) => match self.attr_blob(&holder).await {
                Ok(Some(p)) => prop(&p, which),
                Ok(None) | Err(FsError::NotFound) if self.draft_of(ino).is_some() => {
                    Err(FsError::NoAttr)
                }
                Ok(None) => Err(FsError::NoAttr),
                Err(e) => Err(e),
            },
        }
    }

    pub async fn listxattr(&self, ino: u64) -> Result<Vec<String>> {
        let holder = self.holder(ino)?;
        Ok(listed(&self.user_metadata(ino, &holder).await?))
    }

    /// Sets (`Some`) or removes (`None`) an attribute.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &str,
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<()> {
        let holder = self.holder(ino)?;
        let key = match parse(name) {
            Name::Other => return Err(FsError::NotSupported),
            Name::NoProp => return Err(FsError::Invalid),
            Name::Prop(which) => return self.set_prop(ino, &holder, which, value).await,
            Name::Meta(key) => key,
        };
        self.check_writable()?;
        // Checked before anything is asked of storage.
        apply(
            &mut BTreeMap::new(),
            key,
            Some(value.unwrap_or_default()),
            0,
        )?;
        match holder {
            Holder::File {
                acct,
                container,
                name,
            } => {
                let target = (acct, container.as_str(), name.as_str());
                let set = SetXattr { key, value, flags };
                (self.change_file(ino, target, FileChange::Xattr(set))).await
            }
            Holder::Dir {
                acct,
                container,
                prefix,
            } => {
                self.change_marker(acct, &container, &prefix, |md| apply(md, key, value, flags))
                    .await
            }
            Holder::None => Err(FsError::NotSupported),
        }
    }

    /// Sets a property of a file's blob: the content type (Set Blob Properties, sending the
    /// other content headers back as they are) or the access tier (Set Blob Tier).
    async fn set_prop(
        &self,
        ino: u64,
        holder: &Holder,
        which: Prop,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let Holder::File {
            acct,
            container,
            name,
        } = holder
        else {
            return Err(FsError::NotPermitted);
        };
        let Some(value) = value else {
            return Err(FsError::NotPermitted); // properties are never absent
        };
        self.check_writable()?;
        let store = self.store(*acct)?;
        match which {
            Prop::AccessTier => {
                let tier = tier(value).ok_or(FsError::Invalid)?;
                Ok(store.set_tier(container, name, tier).await?)
            }
            Prop::ContentType => {
                let value = valid_value(value).ok_or(FsError::Invalid)?;
                // A writer open on this file edits the same data: the change goes through
                // it, so that its commit carries the new type over the new ETag.
                if let Some(d) = self.draft_of(ino) {
                    return Ok(d.set_content_type(value).await?);
                }
                // Conditional on the version read, so that the other headers sent back are
                // that version's; a blob changed meanwhile is read again.
                for _ in 0..3 {
                    let p = store.head(container, name).await?;
                    let system = SystemProps {
                        content_type: Some(value.to_string()),
                        ..p.system().clone()
                    };
                    let cond = blob::Condition::IfMatch(p.etag);
                    match store
                        .set_content_headers(container, name, &system, cond)
                        .await
                    {
                        Err(BlobError::PreconditionFailed) => continue,
                        r => return r.map(|_| ()).map_err(Into::into),
                    }
                }
                Err(FsError::Stale)
            }
            _ => Err(FsError::NotPermitted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_split_into_metadata_properties_and_the_rest() {
        assert_eq!(parse("user.owner"), Name::Meta("owner"));
        assert_eq!(parse("user.azure.etag"), Name::Prop(Prop::Etag));
        assert_eq!(parse("user.azure.nope"), Name::NoProp);
        assert_eq!(parse("security.selinux"), Name::Other);
        assert_eq!(parse("system.posix_acl_access"), Name::Other);
        assert!(served("user.x") && !served("trusted.x"));
    }

    #[test]
    fn own_keys_are_neither_listed_nor_read_nor_set_in_any_case() {
        let mut m = md(&[("Mtime", "x"), ("hdi_isfolder", "true"), ("owner", "a")]);
        assert_eq!(listed(&m), vec!["user.owner"]);
        assert!(matches!(get(&m, "mtime"), Err(FsError::NoAttr)));
        assert!(matches!(
            apply(&mut m, "MODE", Some(b"777"), 0),
            Err(FsError::NotPermitted)
        ));
        assert_eq!(get(&m, "owner").unwrap(), b"a");
    }

    #[test]
    fn names_and_values_azure_refuses_change_nothing() {
        let mut m = md(&[("a", "1")]);
        for key in ["1x", "a-b", "a.b", "", "é"] {
            assert!(
                matches!(apply(&mut m, key, Some(b"v"), 0), Err(FsError::Invalid)),
                "{key}"
            );
        }
        for v in [&b"caf\xc3\xa9"[..], b"a\nb", b" lead", b"trail ", b"\x00"] {
            assert!(matches!(
                apply(&mut m, "k", Some(v), 0),
                Err(FsError::Invalid)
            ));
        }
        let big = vec![b'x'; METADATA_LIMIT];
        assert!(matches!(
            apply(&mut m, "k", Some(&big), 0),
            Err(FsError::NoSpace)
        ));
        assert_eq!(m, md(&[("a", "1")]));
        // What fits with the commit's own keys beside it is taken; one byte more is not.
        let room = METADATA_LIMIT - ("a1".len() + "mtime".len() + 30 + "batchfscommit".len() + 16);
        let fits = vec![b'x'; room - 1];
        apply(&mut m, "k", Some(&fits), 0).unwrap();
        let over = vec![b'x'; room];
        assert!(matches!(
            apply(&mut m, "k", Some(&over), 0),
            Err(FsError::NoSpace)
        ));
    }

    #[test]
    fn create_replace_and_remove_follow_setxattr() {
        let mut m = md(&[("Owner", "a")]);
        assert!(matches!(
            apply(&mut m, "owner", Some(b"b"), CREATE),
            Err(FsError::Exists)
        ));
        assert!(matches!(
            apply(&mut m, "new", Some(b"b"), REPLACE),
            Err(FsError::NoAttr)
        ));
        apply(&mut m, "owner", Some(b"b"), REPLACE).unwrap();
        // Another tool's spelling of the key is replaced, not doubled.
        assert_eq!(m, md(&[("owner", "b")]));
        apply(&mut m, "owner", None, 0).unwrap();
        assert!(matches!(
            apply(&mut m, "owner", None, 0),
            Err(FsError::NoAttr)
        ));
        apply(&mut m, "empty", Some(b""), 0).unwrap();
        assert_eq!(get(&m, "empty").unwrap(), b"");
    }

    #[test]
    fn tiers_are_named_as_azure_names_them() {
        assert_eq!(tier(b"cool"), Some("Cool"));
        assert_eq!(tier(b"ARCHIVE\n"), Some("Archive"));
        assert_eq!(tier(b"premium"), None);
    }
}
