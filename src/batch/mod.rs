//! The Batch service client: jobs, tasks, pools, nodes and the files on nodes, read through
//! the Batch data-plane REST API (there is no official Rust Batch SDK).
//!
//! Only what the read-only `jobs/` and `pools/` trees need: Get and List of jobs, tasks, pools
//! and compute nodes (JSON, paged by `odata.nextLink`), List Files, Get File Properties (HEAD)
//! and ranged Get File (`ocp-range`). Errors are [`BlobError`]s, the project's error type for
//! a remote service: 404 is `NotFound`, 409 (`TaskFilesUnavailable`, `NodeBeingRebooted`...)
//! is `Conflict` with the service's code, so the filesystem maps each to one errno.

pub mod auth;
pub mod client;
pub mod conventions;

use std::time::SystemTime;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::blob::BlobError;
pub use client::{Auth, ServiceClient};

/// The data-plane API version every request names (the first without a `.NN.0` suffix).
pub const API_VERSION: &str = "2025-06-01";

/// A file or directory on a node, as List Files or Get File Properties describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProps {
    pub is_dir: bool,
    pub size: u64,
    pub last_modified: SystemTime,
    /// Unix mode bits (Linux nodes), e.g. `0o100644`.
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileItem {
    /// Relative to the task's (or node's) root, `/`-separated.
    pub name: String,
    pub props: FileProps,
}

/// An ISO 8601 time as the service writes it (`2026-12-02T10:00:00.1234567Z`).
pub fn parse_time(v: &Value) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(v.as_str()?, &Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    let d = std::time::Duration::from_nanos(u64::try_from(nanos).ok()?);
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// `0o100644`, `100644` or `0100644` → the permission bits.
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8).ok()
}

/// One item of a List Files answer; `None` for an item without a usable name.
pub fn file_item(v: &Value) -> Option<FileItem> {
    // Windows nodes separate with `\`: shown, and asked for again, with `/`.
    let name = v["name"].as_str()?.replace('\\', "/");
    let name = name.trim_matches('/').to_string();
    let p = &v["properties"];
    let size = match &p["contentLength"] {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => 0,
    };
    // Whole seconds, as Get File Properties gives them, so a file's time (and the version it
    // is cached under) does not change between a listing and a HEAD.
    let last_modified = parse_time(&p["lastModified"])
        .or_else(|| parse_time(&p["creationTime"]))
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(SystemTime::UNIX_EPOCH, |d| {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs())
        });
    Some(FileItem {
        name,
        props: FileProps {
            is_dir: v["isDirectory"].as_bool().unwrap_or(false),
            size,
            last_modified,
            mode: p["fileMode"].as_str().and_then(parse_mode),
        },
    })
}

/// Percent-encodes each segment of a path, keeping `/`.
pub fn encode_path(path: &str) -> String {
    crate::blob::client::encode_blob_name(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_items_take_sizes_as_strings_and_modes_in_octal() {
        let v = json!({"name": "wd/out.txt", "isDirectory": false, "url": "x",
            "properties": {"contentLength": "1234", "lastModified": "2026-12-02T10:00:00.5Z",
                           "creationTime": "2026-12-02T09:00:00Z", "fileMode": "0o100644"}});
        let f = file_item(&v).unwrap();
        assert_eq!(f.name, "wd/out.txt");
        assert_eq!(f.props.size, 1234);
        assert_eq!(f.props.mode, Some(0o100644));
        let secs = f
            .props
            .last_modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(secs.as_millis(), 1_796_205_600_000);
        let w = file_item(&json!({"name": "startup\\ProcessEnv.cmd", "properties": {}})).unwrap();
        assert_eq!(w.name, "startup/ProcessEnv.cmd");
        let d = file_item(&json!({"name": "wd", "isDirectory": true, "properties": {}})).unwrap();
        assert!(d.props.is_dir && d.props.size == 0);
        assert!(
            file_item(&json!({"name": "x", "properties": {"contentLength": "lots"}})).is_none()
        );
    }
}
