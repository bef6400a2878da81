//! From a hierarchical List Blobs answer to directory entries.
//!
//! Blob names are not paths, so some cannot be shown: an empty segment (`a//b`), `.` or `..`,
//! a segment over 255 bytes. Those are skipped with a log line, never an error for the whole
//! listing. When a blob `x` and a prefix `x/` both exist, the directory wins and the blob is
//! not shown (mountpoint-s3 does the same): a directory's contents matter more than one blob,
//! and the blob stays reachable through any other tool. A zero-length blob with metadata
//! `hdi_isfolder=true` is a directory (the marker other Azure tools write for empty ones).

use super::inode::DirMeta;
use crate::blob::{BlobProps, ListPage, meta};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Times and mode come from the directory's marker blob, when it has one.
    Dir(DirMeta),
    File(BlobProps),
}

/// Whether one path segment taken from a blob name can be a file name.
pub fn valid_name(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && seg.len() <= MAX_NAME && !seg.contains('\0')
}

/// The longest file name, in bytes (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// A directory's times and mode from its marker blob.
pub fn dir_meta(marker: &BlobProps) -> DirMeta {
    DirMeta {
        mtime: Some(meta::mtime(marker)),
        atime: Some(meta::atime(marker)),
        mode: meta::mode(&marker.metadata),
    }
}

/// Entries of the directory `prefix` (empty or ending in `/`), sorted by name.
pub fn entries(prefix: &str, page: ListPage) -> BTreeMap<String, EntryKind> {
    let mut out = BTreeMap::new();
    for p in page.prefixes {
        let Some(rest) = p.strip_prefix(prefix) else {
            continue;
        };
        let seg = rest.strip_suffix('/').unwrap_or(rest);
        if valid_name(seg) {
            out.insert(seg.to_string(), EntryKind::Dir(DirMeta::default()));
        } else {
            tracing::info!(prefix = %p, "skipping a prefix that cannot be a directory name");
        }
    }
    for b in page.blobs {
        let Some(seg) = b.name.strip_prefix(prefix) else {
            continue;
        };
        if seg.is_empty() {
            // The directory's own marker blob (`dir/`).
            continue;
        }
        if !valid_name(seg) || seg.contains('/') {
            tracing::info!(blob = %b.name, "skipping a blob whose name cannot be a file name");
            continue;
        }
        let marker = b.props.is_folder_marker();
        match out.get_mut(seg) {
            Some(EntryKind::Dir(dir)) => {
                if marker {
                    *dir = dir_meta(&b.props);
                } else {
                    tracing::info!(blob = %b.name, "blob is hidden by a directory of the same name");
                }
            }
            _ if marker => {
                out.insert(seg.to_string(), EntryKind::Dir(dir_meta(&b.props)));
            }
            _ => {
                out.insert(seg.to_string(), EntryKind::File(b.props));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::blob::BlobItem;

    fn blob(name: &str, folder: bool) -> BlobItem {
        let mut metadata = BTreeMap::new();
        if folder {
            metadata.insert("hdi_isfolder".to_string(), "true".to_string());
        }
        BlobItem {
            name: name.into(),
            props: BlobProps {
                size: 1,
                etag: "e".into(),
                last_modified: SystemTime::UNIX_EPOCH,
                metadata,
                system: None,
            },
        }
    }

    #[test]
    fn odd_names_are_skipped_and_directories_shadow_blobs() {
        let page = ListPage {
            blobs: vec![
                blob("p/", false),
                blob("p/.", false),
                blob("p/a", false),
                blob("p/m", true),
                blob("p/x", false),
                blob(&format!("p/{}", "n".repeat(256)), false),
            ],
            prefixes: vec!["p//".into(), "p/../".into(), "p/x/".into()],
            next_marker: None,
        };
        let e = entries("p/", page);
        let names: Vec<_> = e.keys().cloned().collect();
        assert_eq!(names, vec!["a", "m", "x"]);
        assert!(matches!(e["a"], EntryKind::File(_)));
        assert!(matches!(e["m"], EntryKind::Dir(_)));
        assert!(matches!(e["x"], EntryKind::Dir(_)));
    }
}
