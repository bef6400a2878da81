//! An in-memory [`BlobStore`] for unit tests of the namespace. It follows the service's
//! listing rules (lexicographic order, delimiter roll-up into prefixes, markers) with a small,
//! settable page size so pagination is exercised on small data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

use super::{BlobError, BlobItem, BlobProps, BlobStore, Condition, ContainerInfo, ListPage};

/// Container name → blob name → (content, properties).
type Containers = BTreeMap<String, BTreeMap<String, (Bytes, BlobProps)>>;

#[derive(Default)]
pub struct MemoryStore {
    containers: Mutex<Containers>,
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
}

impl BlobStore for MemoryStore {
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
                    props: props.clone(),
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
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len) as usize).min(data.len());
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        Ok(data.slice(start..end))
    }

    async fn put(
        &self,
        container: &str,
        blob: &str,
        data: Bytes,
        cond: Condition,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, BlobError> {
        self.count();
        let mut all = self.lock();
        let c = all.get_mut(container).ok_or(BlobError::NotFound)?;
        match (&cond, c.get(blob)) {
            (Condition::IfMatch(e), Some((_, p))) if *e != p.etag => {
                return Err(BlobError::PreconditionFailed);
            }
            (Condition::IfMatch(_), None) => return Err(BlobError::PreconditionFailed),
            (Condition::IfNoneMatchAny, Some(_)) => {
                return Err(BlobError::Conflict("BlobAlreadyExists".into()));
            }
            _ => {}
        }
        let etag = format!(
            "0x{:X}",
            self.etag_counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        let props = BlobProps {
            size: data.len() as u64,
            etag: etag.clone(),
            last_modified: SystemTime::now(),
            metadata: metadata.clone(),
        };
        c.insert(blob.to_string(), (data, props));
        Ok(etag)
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
