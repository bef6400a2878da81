//! An in-memory [`BlobStore`] for unit tests of the namespace. It follows the service's
//! listing rules (lexicographic order, delimiter roll-up into prefixes, markers) with a small,
//! settable page size so pagination is exercised on small data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

use super::{
    BlobError, BlobItem, BlobProps, BlobStore, Condition, ContainerInfo, ListPage, SystemProps,
};

/// Container name → blob name → (content, properties).
type Containers = BTreeMap<String, BTreeMap<String, (Bytes, BlobProps)>>;

/// Blocks by (container, blob): the committed list (id, bytes) and the staged ones.
#[derive(Default)]
struct Blocks {
    committed: Vec<(String, Bytes)>,
    staged: std::collections::HashMap<String, Bytes>,
}

#[derive(Default)]
pub struct MemoryStore {
    containers: Mutex<Containers>,
    blocks: Mutex<BTreeMap<(String, String), Blocks>>,
    /// (container, blob, snapshot id) → content.
    snapshots: Mutex<BTreeMap<(String, String, String), Bytes>>,
    page_size: usize,
    etag_counter: AtomicU64,
    /// Number of requests served, by anyone: lets tests assert what an operation cost.
    pub requests: AtomicU64,
    /// Get Blob requests and the bytes they returned.
    pub gets: AtomicU64,
    pub bytes: AtomicU64,
}

impl MemoryStore {
    pub fn new(page_size: usize) -> Self {
        MemoryStore {
            page_size,
            ..Default::default()
        }
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Containers> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocks(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Blocks>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new version of `blob` under `cond`, as the service would; returns its ETag.
    fn commit(
        &self,
        container: &str,
        blob: &str,
        data: Bytes,
        cond: &Condition,
        metadata: &BTreeMap<String, String>,
        headers: &SystemProps,
    ) -> Result<String, BlobError> {
        let mut all = self.lock();
        let c = all.get_mut(container).ok_or(BlobError::NotFound)?;
        check(cond, c.get(blob).map(|(_, p)| p))?;
        let etag = format!(
            "0x{:X}",
            self.etag_counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        let props = BlobProps {
            size: data.len() as u64,
            etag: etag.clone(),
            last_modified: SystemTime::now(),
            metadata: metadata.clone(),
            // A new version's content headers are the request's, the type defaulted.
            system: Some(Box::new(SystemProps {
                content_type: (headers.content_type.clone())
                    .or_else(|| Some("application/octet-stream".into())),
                access_tier: Some("Hot".into()),
                blob_type: Some("BlockBlob".into()),
                lease_state: Some("available".into()),
                ..headers.clone()
            })),
        };
        c.insert(blob.to_string(), (data, props));
        Ok(etag)
    }

    /// Changes the properties of a blob in place under `cond`; returns its new ETag.
    fn update(
        &self,
        container: &str,
        blob: &str,
        cond: &Condition,
        change: impl FnOnce(&mut BlobProps),
    ) -> Result<String, BlobError> {
        let mut all = self.lock();
        let c = all.get_mut(container).ok_or(BlobError::NotFound)?;
        let (_, props) = c.get_mut(blob).ok_or(BlobError::NotFound)?;
        check(cond, Some(&*props))?;
        change(props);
        props.etag = format!(
            "0x{:X}",
            self.etag_counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        props.last_modified = SystemTime::now();
        Ok(props.etag.clone())
    }

    /// The content of a blob, if it exists (for assertions in tests).
    pub fn content(&self, container: &str, blob: &str) -> Option<Bytes> {
        self.lock()
            .get(container)
            .and_then(|c| c.get(blob))
            .map(|(d, _)| d.clone())
    }

    /// `len` bytes of `data` from `offset`, counted as one Get Blob.
    fn serve(&self, data: &Bytes, offset: u64, len: u64) -> Bytes {
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len) as usize).min(data.len());
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        data.slice(start..end)
    }

    /// Snapshots held (for assertions in tests).
    pub fn snapshot_count(&self) -> usize {
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Names of the blobs in `container` (for assertions in tests).
    pub fn names(&self, container: &str) -> Vec<String> {
        self.lock()
            .get(container)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn check(cond: &Condition, current: Option<&BlobProps>) -> Result<(), BlobError> {
    match (cond, current) {
        (Condition::IfMatch(e), Some(p)) if *e != p.etag => Err(BlobError::PreconditionFailed),
        (Condition::IfMatch(_), None) => Err(BlobError::PreconditionFailed),
        (Condition::IfNoneMatchAny, Some(_)) => {
            Err(BlobError::Conflict("BlobAlreadyExists".into()))
        }
        _ => Ok(()),
    }
}

impl BlobStore for MemoryStore {
    fn origin(&self) -> Option<String> {
        Some("memory".into())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, BlobError> {
        self.count();
        Ok(self
            .lock()
            .keys()
            .map(|name| ContainerInfo {
                name: name.clone(),
                last_modified: SystemTime::UNIX_EPOCH,
            })
            .collect())
    }

    async fn list(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<ListPage, BlobError> {
        self.count();
        let all = self.lock();
        let blobs = all.get(container).ok_or(BlobError::NotFound)?;
        let limit = max_results
            .map(|m| m as usize)
            .unwrap_or(self.page_size)
            .min(self.page_size);
        let mut page = ListPage::default();
        let mut seen_prefixes = BTreeSet::new();
        let mut n = 0;
        for (name, (_, props)) in blobs.range(marker.unwrap_or("").to_string()..) {
            if !name.starts_with(prefix) {
                continue;
            }
            let rest = &name[prefix.len()..];
            let item_key = match delimiter.and_then(|d| rest.find(d).map(|i| (d, i))) {
                Some((d, i)) => {
                    let p = format!("{prefix}{}{d}", &rest[..i]);
                    if seen_prefixes.contains(&p) || marker.is_some_and(|m| p.as_str() < m) {
                        continue;
                    }
                    Some(p)
                }
                None => None,
            };
            if n == limit {
                page.next_marker = Some(item_key.unwrap_or_else(|| name.clone()));
                break;
            }
            n += 1;
            match item_key {
                Some(p) => {
                    seen_prefixes.insert(p.clone());
                    page.prefixes.push(p);
                }
                None => page.blobs.push(BlobItem {
                    name: name.clone(),
                    // As the real client gives them: a listing carries no system properties.
                    props: BlobProps {
                        system: None,
                        ..props.clone()
                    },
                }),
            }
        }
        Ok(page)
    }

    async fn head(&self, container: &str, blob: &str) -> Result<BlobProps, BlobError> {
        self.count();
        let all = self.lock();
        let (_, p) = all
            .get(container)
            .and_then(|c| c.get(blob))
            .ok_or(BlobError::NotFound)?;
        Ok(p.clone())
    }

    async fn get_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Bytes, BlobError> {
        self.count();
        let all = self.lock();
        let (data, p) = all
            .get(container)
            .and_then(|c| c.get(blob))
            .ok_or(BlobError::NotFound)?;
        if if_match.is_some_and(|e| e != p.etag) {
            return Err(BlobError::PreconditionFailed);
        }
        Ok(self.serve(data, offset, len))
    }

    async fn put_with(
        &self,
        container: &str,
        blob: &str,
        data: Bytes,
        cond: Condition,
        metadata: &BTreeMap<String, String>,
        headers: &SystemProps,
    ) -> Result<String, BlobError> {
        self.count();
        // As Azurite does: a name that holds only uncommitted blocks exists for Put Blob's
        // `If-None-Match: *` (Put Block List looks at the committed blob only).
        let key = (container.to_string(), blob.to_string());
        let staged = self
            .blocks()
            .get(&key)
            .is_some_and(|b| !b.staged.is_empty());
        if cond == Condition::IfNoneMatchAny && staged {
            return Err(BlobError::Conflict("BlobAlreadyExists".into()));
        }
        let etag = self.commit(container, blob, data, &cond, metadata, headers)?;
        // A blob written in one Put Blob has no committed blocks.
        self.blocks()
            .insert((container.into(), blob.into()), Blocks::default());
        Ok(etag)
    }

    async fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: Bytes,
    ) -> Result<(), BlobError> {
        self.count();
        if !self.lock().contains_key(container) {
            return Err(BlobError::NotFound);
        }
        self.blocks()
            .entry((container.into(), blob.into()))
            .or_default()
            .staged
            .insert(id.to_string(), data);
        Ok(())
    }

    async fn put_block_list_with(
        &self,
        container: &str,
        blob: &str,
        ids: &[String],
        cond: Condition,
        metadata: &BTreeMap<String, String>,
        headers: &SystemProps,
    ) -> Result<String, BlobError> {
        self.count();
        let mut blocks = self.blocks();
        let b = blocks.entry((container.into(), blob.into())).or_default();
        let mut list = Vec::with_capacity(ids.len());
        for id in ids {
            let data = match b.staged.get(id) {
                Some(d) => d.clone(),
                None => match b.committed.iter().find(|(c, _)| c == id) {
                    Some((_, d)) => d.clone(),
                    None => {
                        return Err(BlobError::Status {
                            status: 400,
                            code: "InvalidBlockList".into(),
                        });
                    }
                },
            };
            list.push((id.clone(), data));
        }
        let mut whole = bytes::BytesMut::new();
        for (_, d) in &list {
            whole.extend_from_slice(d);
        }
        let etag = self.commit(container, blob, whole.freeze(), &cond, metadata, headers)?;
        b.committed = list;
        b.staged.clear();
        Ok(etag)
    }

    async fn get_block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<(String, Vec<(String, u64)>), BlobError> {
        let props = self.head(container, blob).await?;
        let blocks = self.blocks();
        let list = blocks
            .get(&(container.to_string(), blob.to_string()))
            .map(|b| {
                b.committed
                    .iter()
                    .map(|(id, d)| (id.clone(), d.len() as u64))
                    .collect()
            })
            .unwrap_or_default();
        Ok((props.etag, list))
    }

    async fn copy(
        &self,
        container: &str,
        src: &str,
        src_etag: &str,
        dst: &str,
        dst_cond: Condition,
    ) -> Result<String, BlobError> {
        self.count();
        let (data, props) = self
            .lock()
            .get(container)
            .and_then(|c| c.get(src))
            .cloned()
            .ok_or(BlobError::NotFound)?;
        if props.etag != src_etag {
            return Err(BlobError::PreconditionFailed);
        }
        // A copy keeps the source's content headers, as Copy Blob does.
        let etag = self.commit(
            container,
            dst,
            data,
            &dst_cond,
            &props.metadata,
            props.system(),
        )?;
        self.blocks()
            .insert((container.into(), dst.into()), Blocks::default());
        Ok(etag)
    }

    async fn delete(&self, container: &str, blob: &str, cond: Condition) -> Result<(), BlobError> {
        self.count();
        let mut all = self.lock();
        let c = all.get_mut(container).ok_or(BlobError::NotFound)?;
        let current = c.get(blob).ok_or(BlobError::NotFound)?;
        check(&cond, Some(&current.1))?;
        c.remove(blob);
        self.blocks()
            .remove(&(container.to_string(), blob.to_string()));
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, b, _), _| !(c == container && b == blob));
        Ok(())
    }

    async fn snapshot(
        &self,
        container: &str,
        blob: &str,
        cond: Condition,
    ) -> Result<String, BlobError> {
        self.count();
        let props = self.head(container, blob).await?;
        check(&cond, Some(&props))?;
        let data = self.content(container, blob).ok_or(BlobError::NotFound)?;
        let id = format!("snap-{}", self.etag_counter.fetch_add(1, Ordering::Relaxed));
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((container.into(), blob.into(), id.clone()), data);
        Ok(id)
    }

    async fn get_snapshot_range(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, BlobError> {
        self.count();
        let snaps = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let data = snaps
            .get(&(container.into(), blob.into(), snapshot.into()))
            .ok_or(BlobError::NotFound)?;
        Ok(self.serve(data, offset, len))
    }

    async fn delete_snapshot(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
    ) -> Result<(), BlobError> {
        self.count();
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(container.into(), blob.into(), snapshot.into()))
            .map(|_| ())
            .ok_or(BlobError::NotFound)
    }

    async fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: &BTreeMap<String, String>,
        cond: Condition,
    ) -> Result<String, BlobError> {
        self.count();
        self.update(container, blob, &cond, |p| p.metadata = metadata.clone())
    }

    async fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        system: &SystemProps,
        cond: Condition,
    ) -> Result<String, BlobError> {
        self.count();
        self.update(container, blob, &cond, |p| {
            // Only the content headers change: tier, type and lease are not among them.
            let old = p.system.take().unwrap_or_default();
            p.system = Some(Box::new(SystemProps {
                access_tier: old.access_tier,
                blob_type: old.blob_type,
                lease_state: old.lease_state,
                ..system.clone()
            }));
        })
    }

    async fn set_tier(&self, container: &str, blob: &str, tier: &str) -> Result<(), BlobError> {
        self.count();
        let mut all = self.lock();
        let c = all.get_mut(container).ok_or(BlobError::NotFound)?;
        let (_, props) = c.get_mut(blob).ok_or(BlobError::NotFound)?;
        let system = props.system.get_or_insert_with(Box::default);
        system.access_tier = Some(tier.to_string());
        Ok(())
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.count();
        self.lock()
            .remove(container)
            .map(|_| ())
            .ok_or(BlobError::NotFound)
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        self.count();
        let mut all = self.lock();
        if all.contains_key(container) {
            return Err(BlobError::Conflict("ContainerAlreadyExists".into()));
        }
        all.insert(container.to_string(), BTreeMap::new());
        Ok(())
    }
}
