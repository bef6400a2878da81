//! A [`BlobStore`] around any other that fails, delays, stalls or cuts short chosen
//! operations by rule: per operation, on the n-th matching call, or with a probability drawn
//! from a seeded generator (so a failing case replays). Unit tests of the cache, the drafts
//! and the namespace run over it to see what callers get when storage misbehaves: throttling,
//! 500s, a reset mid-body, a stall past a deadline, an outage during a commit, and a commit
//! that reaches storage but whose reply is lost.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::{
    BlobError, BlobProps, BlobStore, Body, Condition, ContainerInfo, ListPage, SystemProps,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    ListContainers,
    List,
    Head,
    GetRange,
    /// A GET whose body is read piece by piece.
    OpenRange,
    Put,
    PutBlock,
    PutBlockList,
    GetBlockList,
    Copy,
    Delete,
    Snapshot,
    GetSnapshotRange,
    DeleteSnapshot,
    SetMetadata,
    SetProperties,
    SetTier,
    CreateContainer,
    DeleteContainer,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Fails with this error without reaching the store.
    Fail(BlobError),
    /// Reaches the store (the change is made), then the reply is lost: the caller gets this
    /// error, as a client whose connection was cut after sending.
    LoseReply(BlobError),
    /// Waits this long, then goes on (a stall, when longer than the caller's deadline).
    Delay(Duration),
    /// A ranged read that returns only the first half of what was asked (a reset mid-body).
    CutShort,
}

#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// The n-th matching call from when the rule was added (1-based).
    Nth(u64),
    /// Each matching call with this probability.
    Chance(f64),
}

#[derive(Debug, Clone)]
pub struct Rule {
    op: Option<Op>,
    when: When,
    fault: Fault,
    /// Fires at most this many times.
    limit: Option<u64>,
    seen: u64,
    fired: u64,
}

impl Rule {
    /// A rule for one operation.
    pub fn on(op: Op, fault: Fault) -> Rule {
        Rule {
            op: Some(op),
            when: When::Always,
            fault,
            limit: None,
            seen: 0,
            fired: 0,
        }
    }

    /// A rule for every operation.
    pub fn any(fault: Fault) -> Rule {
        Rule {
            op: None,
            ..Rule::on(Op::Head, fault)
        }
    }

    pub fn nth(mut self, n: u64) -> Rule {
        self.when = When::Nth(n);
        self
    }

    pub fn chance(mut self, p: f64) -> Rule {
        self.when = When::Chance(p);
        self
    }

    pub fn times(mut self, n: u64) -> Rule {
        self.limit = Some(n);
        self
    }
}

pub struct FaultyStore<S> {
    inner: Arc<S>,
    rules: Mutex<Vec<Rule>>,
    rng: Mutex<u64>,
    calls: Mutex<BTreeMap<Op, u64>>,
    /// Faults that fired.
    pub fired: AtomicU64,
}

/// 503 ServerBusy, as a throttled account answers.
pub fn busy() -> BlobError {
    BlobError::Status {
        status: 503,
        code: "ServerBusy".into(),
    }
}

/// What a client reports when storage does not answer.
pub fn unreachable() -> BlobError {
    BlobError::Transport("connection refused (injected)".into())
}

impl<S: BlobStore> FaultyStore<S> {
    pub fn new(inner: Arc<S>, seed: u64) -> Self {
        FaultyStore {
            inner,
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(seed | 1),
            calls: Mutex::new(BTreeMap::new()),
            fired: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    pub fn add(&self, rule: Rule) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rule);
    }

    /// Storage is healthy again.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Calls of `op` so far, faulty or not.
    pub fn calls(&self, op: Op) -> u64 {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.get(&op).copied().unwrap_or(0)
    }

    fn random(&self) -> f64 {
        // xorshift64*: plenty for spreading faults, and it replays from the seed.
        let mut x = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The faults that apply to this call of `op`, in the order the rules were added.
    fn faults(&self, op: Op) -> Vec<Fault> {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for r in rules.iter_mut() {
            if r.op.is_some_and(|o| o != op) || r.limit.is_some_and(|l| r.fired >= l) {
                continue;
            }
            r.seen += 1;
            let fire = match r.when {
                When::Always => true,
                When::Nth(n) => r.seen == n,
                When::Chance(p) => self.random() < p,
            };
            if fire {
                r.fired += 1;
                self.fired.fetch_add(1, Ordering::Relaxed);
                out.push(r.fault.clone());
            }
        }
        out
    }

    /// Runs `call` under the faults that apply to `op`.
    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        let faults = self.faults(op);
        let mut lose = None;
        for f in &faults {
            match f {
                Fault::Delay(d) => tokio::time::sleep(*d).await,
                Fault::Fail(e) => return Err(e.clone()),
                Fault::LoseReply(e) => lose = Some(e.clone()),
                Fault::CutShort => {}
            }
        }
        let r = call.await;
        match lose {
            Some(e) => Err(e),
            None => r,
        }
    }
}

impl<S: BlobStore> BlobStore for FaultyStore<S> {
    fn origin(&self) -> Option<String> {
        self.inner.origin()
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, BlobError> {
        self.run(Op::ListContainers, self.inner.list_containers())
            .await
    }

    async fn list(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<ListPage, BlobError> {
        let call = self
            .inner
            .list(container, prefix, delimiter, marker, max_results);
        self.run(Op::List, call).await
    }

    async fn head(&self, container: &str, blob: &str) -> Result<BlobProps, BlobError> {
        self.run(Op::Head, self.inner.head(container, blob)).await
    }

    async fn get_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Bytes, BlobError> {
        let faults = self.faults(Op::GetRange);
        let cut = faults.iter().any(|f| matches!(f, Fault::CutShort));
        for f in faults {
            match f {
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::Fail(e) | Fault::LoseReply(e) => return Err(e),
                Fault::CutShort => {}
            }
        }
        let data = self
            .inner
            .get_range(container, blob, offset, len, if_match)
            .await?;
        Ok(match cut {
            true => data.slice(..data.len() / 2),
            false => data,
        })
    }

    /// `CutShort` gives a body that breaks halfway.
    async fn open_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Body, BlobError> {
        let faults = self.faults(Op::OpenRange);
        let cut = faults.iter().any(|f| matches!(f, Fault::CutShort));
        for f in faults {
            match f {
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::Fail(e) | Fault::LoseReply(e) => return Err(e),
                Fault::CutShort => {}
            }
        }
        if !cut {
            return self
                .inner
                .open_range(container, blob, offset, len, if_match)
                .await;
        }
        let data = self
            .inner
            .get_range(container, blob, offset, len, if_match)
            .await?;
        Ok(Body::whole(data.slice(..data.len() / 2)))
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
        let call = self
            .inner
            .put_with(container, blob, data, cond, metadata, headers);
        self.run(Op::Put, call).await
    }

    async fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: Bytes,
    ) -> Result<(), BlobError> {
        let call = self.inner.put_block(container, blob, id, data);
        self.run(Op::PutBlock, call).await
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
        let call = self
            .inner
            .put_block_list_with(container, blob, ids, cond, metadata, headers);
        self.run(Op::PutBlockList, call).await
    }

    async fn get_block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<(String, Vec<(String, u64)>), BlobError> {
        let call = self.inner.get_block_list(container, blob);
        self.run(Op::GetBlockList, call).await
    }

    async fn copy(
        &self,
        container: &str,
        src: &str,
        src_etag: &str,
        dst: &str,
        dst_cond: Condition,
    ) -> Result<String, BlobError> {
        let call = self.inner.copy(container, src, src_etag, dst, dst_cond);
        self.run(Op::Copy, call).await
    }

    async fn delete(&self, container: &str, blob: &str, cond: Condition) -> Result<(), BlobError> {
        self.run(Op::Delete, self.inner.delete(container, blob, cond))
            .await
    }

    async fn snapshot(
        &self,
        container: &str,
        blob: &str,
        cond: Condition,
    ) -> Result<String, BlobError> {
        self.run(Op::Snapshot, self.inner.snapshot(container, blob, cond))
            .await
    }

    async fn get_snapshot_range(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, BlobError> {
        let call = self
            .inner
            .get_snapshot_range(container, blob, snapshot, offset, len);
        self.run(Op::GetSnapshotRange, call).await
    }

    async fn delete_snapshot(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
    ) -> Result<(), BlobError> {
        let call = self.inner.delete_snapshot(container, blob, snapshot);
        self.run(Op::DeleteSnapshot, call).await
    }

    async fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: &BTreeMap<String, String>,
        cond: Condition,
    ) -> Result<String, BlobError> {
        let call = self.inner.set_metadata(container, blob, metadata, cond);
        self.run(Op::SetMetadata, call).await
    }

    async fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        system: &SystemProps,
        cond: Condition,
    ) -> Result<String, BlobError> {
        let call = self
            .inner
            .set_content_headers(container, blob, system, cond);
        self.run(Op::SetProperties, call).await
    }

    async fn set_tier(&self, container: &str, blob: &str, tier: &str) -> Result<(), BlobError> {
        self.run(Op::SetTier, self.inner.set_tier(container, blob, tier))
            .await
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        self.run(Op::CreateContainer, self.inner.create_container(container))
            .await
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.run(Op::DeleteContainer, self.inner.delete_container(container))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::memory::MemoryStore;

    #[tokio::test]
    async fn rules_fire_by_op_by_count_and_by_chance_and_replay() {
        let store = FaultyStore::new(Arc::new(MemoryStore::new(10)), 7);
        store.create_container("c").await.unwrap();
        let md = BTreeMap::new();
        let put =
            |n: &'static str| store.put("c", n, Bytes::from_static(b"x"), Condition::None, &md);
        store.add(Rule::on(Op::Put, Fault::Fail(busy())).nth(2));
        assert!(put("a").await.is_ok());
        assert_eq!(put("b").await, Err(busy()));
        assert!(put("c").await.is_ok());
        store.clear();
        // A lost reply: the change is made, the caller is told otherwise.
        store.add(Rule::on(Op::Put, Fault::LoseReply(unreachable())).times(1));
        assert!(put("d").await.is_err());
        assert!(store.inner().head("c", "d").await.is_ok());
        store.clear();
        store.add(Rule::on(Op::GetRange, Fault::CutShort));
        let got = store.get_range("c", "a", 0, 1, None).await.unwrap();
        assert!(got.is_empty());
        store.clear();
        let draws = |seed| {
            let s = FaultyStore::new(Arc::new(MemoryStore::new(10)), seed);
            s.add(Rule::any(Fault::Fail(busy())).chance(0.5));
            (0..64)
                .map(|_| !s.faults(Op::Head).is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        let fired = draws(3).iter().filter(|f| **f).count();
        assert!((16..48).contains(&fired), "{fired} of 64");
    }
}
