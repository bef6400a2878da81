//! The storage boundary: what the filesystem needs from a blob service.
//!
//! [`BlobStore`] is the one trait in the project. The real implementation is [`HttpBlobStore`]
//! (Azure Blob REST over reqwest); tests swap in [`memory::MemoryStore`] and, later, fault-
//! injecting and throughput-modelled stores. Everything above this module speaks in blob names
//! (not URLs) and in [`BlobError`]s (not HTTP statuses).

pub mod auth;
pub mod body;
pub mod client;
pub mod deadline;
#[cfg(test)]
pub mod faulty;
#[cfg(test)]
pub mod memory;
pub mod meta;
pub mod retry;
mod xml;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use body::Body;
pub use client::{HttpBlobStore, RetryPolicy};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProps {
    pub size: u64,
    /// Always unquoted: HEAD returns `"0x8D..."`, listings return `0x8D...`.
    pub etag: String,
    pub last_modified: SystemTime,
    pub metadata: BTreeMap<String, String>,
    /// From a HEAD only: a listing leaves them out (`None`), since nothing reads them there
    /// and a directory of a million blobs would hold them all while it is listed.
    pub system: Option<Box<SystemProps>>,
}

/// The blob's system properties that a file system has no place for, shown as extended
/// attributes (`user.azure.*`). `None` where storage did not say. The content headers are
/// also what Set Blob Properties must send back unchanged: it clears any it is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemProps {
    pub content_type: Option<String>,
    /// Base64, as storage returns it.
    pub content_md5: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub content_disposition: Option<String>,
    pub cache_control: Option<String>,
    /// `Hot`, `Cool`, `Cold`, `Archive` (`None` where the account has no tiers).
    pub access_tier: Option<String>,
    /// `BlockBlob`, `AppendBlob` or `PageBlob`.
    pub blob_type: Option<String>,
    /// `available`, `leased`, `expired`, `breaking` or `broken`.
    pub lease_state: Option<String>,
}

/// No property known; as content headers, the defaults (`application/octet-stream`).
static DEFAULT_HEADERS: SystemProps = SystemProps {
    content_type: None,
    content_md5: None,
    content_encoding: None,
    content_language: None,
    content_disposition: None,
    cache_control: None,
    access_tier: None,
    blob_type: None,
    lease_state: None,
};

impl SystemProps {
    /// The content headers a rewrite keeps (type, encoding, language, disposition, cache
    /// control): the tier, type and lease are not the writer's to send, and the MD5 of the
    /// old content would be wrong for the new.
    pub fn kept_by_rewrite(&self) -> SystemProps {
        SystemProps {
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            content_language: self.content_language.clone(),
            content_disposition: self.content_disposition.clone(),
            cache_control: self.cache_control.clone(),
            ..Default::default()
        }
    }
}

impl BlobProps {
    /// The system properties, or none known where the props came from a listing.
    pub fn system(&self) -> &SystemProps {
        self.system.as_deref().unwrap_or(&DEFAULT_HEADERS)
    }

    /// The directory-marker convention of blobfuse, Storage Explorer and ADLS: a zero-length
    /// blob with metadata `hdi_isfolder=true`.
    pub fn is_folder_marker(&self) -> bool {
        meta::is_folder(&self.metadata)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    pub name: String,
    pub props: BlobProps,
}

/// One page of a List Blobs answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub blobs: Vec<BlobItem>,
    /// Full prefixes ending in the delimiter, e.g. `job-1/task1/`.
    pub prefixes: Vec<String>,
    pub next_marker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub last_modified: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    None,
    /// The blob must still have this ETag.
    IfMatch(String),
    /// The blob must not exist.
    IfNoneMatchAny,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("not found")]
    NotFound,
    #[error("the blob was changed by someone else (ETag no longer matches)")]
    PreconditionFailed,
    #[error("conflict ({0})")]
    Conflict(String),
    #[error("access denied: HTTP {status} {code}")]
    Denied { status: u16, code: String },
    #[error("HTTP {status} {code}")]
    Status { status: u16, code: String },
    #[error("unreachable: {0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected response: {0}")]
    BadResponse(String),
    #[error("no Entra ID token: {0}")]
    Token(String),
}

/// What the filesystem needs from one storage account.
///
/// Methods return `impl Future + Send` so the filesystem can run them on any runtime thread.
pub trait BlobStore: Send + Sync + 'static {
    /// The account's endpoint, a name that stays the same across mounts: the disk tier keys
    /// blobs on it. `None` keeps this store's blobs out of the disk tier.
    fn origin(&self) -> Option<String> {
        None
    }

    fn list_containers(&self)
    -> impl Future<Output = Result<Vec<ContainerInfo>, BlobError>> + Send;

    /// One page of List Blobs, with metadata, under `prefix`; `delimiter` makes it hierarchical.
    fn list(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> impl Future<Output = Result<ListPage, BlobError>> + Send;

    fn head(
        &self,
        container: &str,
        blob: &str,
    ) -> impl Future<Output = Result<BlobProps, BlobError>> + Send;

    /// `len` bytes from `offset`; `if_match` pins the ETag (a changed blob gives
    /// [`BlobError::PreconditionFailed`], never bytes of another version).
    fn get_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<Bytes, BlobError>> + Send;

    /// A GET of `len` bytes from `offset` whose body is read piece by piece as the caller
    /// wants it ([`Body::next`]): one request for a long sequential read, held back by TCP
    /// when the reader is slower than the link. Stores that cannot stream fetch the range
    /// whole.
    fn open_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<Body, BlobError>> + Send {
        async move {
            let data = self
                .get_range(container, blob, offset, len, if_match)
                .await?;
            Ok(Body::whole(data))
        }
    }

    /// Put Blob (one request) with the default content headers; returns the new ETag.
    fn put(
        &self,
        container: &str,
        blob: &str,
        data: Bytes,
        cond: Condition,
        metadata: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, BlobError>> + Send {
        self.put_with(container, blob, data, cond, metadata, &DEFAULT_HEADERS)
    }

    /// Put Blob whose content headers are those of `headers` (a content type of `None` is
    /// `application/octet-stream`; tier, type and lease are ignored); returns the new ETag.
    fn put_with(
        &self,
        container: &str,
        blob: &str,
        data: Bytes,
        cond: Condition,
        metadata: &BTreeMap<String, String>,
        headers: &SystemProps,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    /// Put Block: stages `data` under `id` (base64, the same length for every block of a
    /// blob). Staged blocks are invisible until a block list that names them is committed.
    fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: Bytes,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;

    /// Put Block of `parts` one after the other, as one block: a writer's buffers go up as
    /// one larger block without being joined first where the store can send them so.
    fn put_block_parts(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        parts: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), BlobError>> + Send {
        async move {
            let data = match &parts[..] {
                [one] => one.clone(),
                _ => Bytes::from(parts.concat()),
            };
            self.put_block(container, blob, id, data).await
        }
    }

    /// Put Block List with the default content headers: the blob becomes exactly these
    /// blocks, in order; returns the new ETag.
    fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        ids: &[String],
        cond: Condition,
        metadata: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, BlobError>> + Send {
        self.put_block_list_with(container, blob, ids, cond, metadata, &DEFAULT_HEADERS)
    }

    /// Put Block List whose content headers are those of `headers`, as for [`Self::put_with`].
    fn put_block_list_with(
        &self,
        container: &str,
        blob: &str,
        ids: &[String],
        cond: Condition,
        metadata: &BTreeMap<String, String>,
        headers: &SystemProps,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    /// The committed blocks (id, size) of the blob and its ETag. A blob written in one Put
    /// Blob has none.
    fn get_block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> impl Future<Output = Result<(String, Vec<(String, u64)>), BlobError>> + Send;

    /// Server-side copy of `src` (only if it still has ETag `src_etag`) to `dst` under
    /// `dst_cond`, waiting until the copy is complete; returns the new blob's ETag.
    fn copy(
        &self,
        container: &str,
        src: &str,
        src_etag: &str,
        dst: &str,
        dst_cond: Condition,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    /// Deletes the blob and any snapshots of it.
    fn delete(
        &self,
        container: &str,
        blob: &str,
        cond: Condition,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;

    /// Snapshot Blob: a read-only copy of the current version (under `cond`) that stays
    /// readable however the blob changes; returns the snapshot's id.
    fn snapshot(
        &self,
        container: &str,
        blob: &str,
        cond: Condition,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    /// `len` bytes from `offset` of snapshot `snapshot` of the blob.
    fn get_snapshot_range(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, BlobError>> + Send;

    fn delete_snapshot(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;

    /// Set Blob Properties: the content headers become exactly those of `system` (storage
    /// clears any not sent); returns the new ETag.
    fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        system: &SystemProps,
        cond: Condition,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    /// Set Blob Tier (`Hot`, `Cool`, `Cold`, `Archive`). The ETag does not change.
    fn set_tier(
        &self,
        container: &str,
        blob: &str,
        tier: &str,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;

    /// Replaces the blob's metadata; returns the new ETag.
    fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: &BTreeMap<String, String>,
        cond: Condition,
    ) -> impl Future<Output = Result<String, BlobError>> + Send;

    fn create_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;

    fn delete_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<(), BlobError>> + Send;
}

/// Lists every page of `prefix` (following `NextMarker`).
pub async fn list_all<S: BlobStore>(
    store: &S,
    container: &str,
    prefix: &str,
    delimiter: Option<&str>,
) -> Result<ListPage, BlobError> {
    let mut all = ListPage::default();
    let mut marker: Option<String> = None;
    loop {
        let page = store
            .list(container, prefix, delimiter, marker.as_deref(), None)
            .await?;
        all.blobs.extend(page.blobs);
        all.prefixes.extend(page.prefixes);
        match page.next_marker {
            Some(m) if !m.is_empty() => marker = Some(m),
            _ => return Ok(all),
        }
    }
}

/// Creates `container` unless it exists already.
pub async fn ensure_container<S: BlobStore>(store: &S, container: &str) -> Result<(), BlobError> {
    match store.create_container(container).await {
        Ok(()) | Err(BlobError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
