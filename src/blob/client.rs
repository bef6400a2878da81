//! The Azure Blob REST client: a thin layer over reqwest.
//!
//! Every request goes through [`HttpBlobStore::execute`], which signs it (Shared Key) or appends
//! the SAS token, bounds the operation by a deadline, and retries what is worth retrying (408,
//! 429, 5xx, connection errors, timeouts) with exponential backoff, jitter and `Retry-After`.
//! 409 and 412 are answers, not failures, and are never retried. The deadline is what turns a
//! dead backend into a prompt EIO instead of a hung `ls`.
//!
//! An attempt is bounded by *progress*, not by a fixed time whatever its size: it is cut when
//! nothing came back for `attempt_timeout` plus the time its bytes take at [`FLOOR_RATE`]
//! (response headers or body received), and at the operation's deadline unless its bytes are
//! moving. A 4 MiB Put Block on a slow link
//! that keeps sending is not an outage; a server that stops answering is, within the deadline.
//! A refused connection (nothing listens) is retried only briefly, then reported as such.
//!
//! When an operation gives up because storage did not answer at all (connection errors,
//! timeouts), the store is marked down and a background probe (an unauthenticated GET of the
//! endpoint, bounded by [`PROBE_TIMEOUT`]) starts. While it is down every request fails at
//! once: the kernel often repeats a failed lookup within one system call, and a shell walking
//! a tree would otherwise pay the full deadline per file. A request that comes when no probe is
//! out and none went in the last [`PROBE_EVERY`] starts one and waits up to a second for it;
//! any HTTP answer marks storage up again, so recovery needs no remount.
//!
//! Secrets never reach an error or a log line: errors carry statuses and error codes, and
//! reqwest errors are stripped of their URL (which may hold a SAS token) before formatting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::auth::{SignInput, authorization};
use super::retry::{self, Step};
use super::xml::{
    block_list_body, normalize_etag, parse_blob_list, parse_block_list, parse_container_list,
    parse_time,
};
use super::{
    BlobError, BlobProps, BlobStore, Body, Condition, ContainerInfo, ListPage, SystemProps,
};
use crate::accounts::config::{Credential, StorageConfig};
use crate::accounts::identity::{STORAGE_SCOPE, TokenSource};
use crate::stats::Stats;

const API_VERSION: &str = "2023-11-03";

/// How long a server-side copy may stay pending before the rename that waits for it fails.
const COPY_WAIT: Duration = Duration::from_secs(300);

/// Bound on the background request that checks whether storage that stopped answering is back.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a store that is down is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long the request that starts a probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// An attempt still moving bytes at the deadline may finish if it moved some this recently.
const MOVING: Duration = Duration::from_secs(2);

/// The slowest transfer rate that is still progress, not an outage: a request that carries
/// or fetches N bytes gets N at this rate on top of its deadline and idle bound. (Once a
/// request body is in the socket's buffers, its progress cannot be seen from here.)
const FLOOR_RATE: f64 = 512.0 * 1024.0;

/// Refused connections are retried this long (an endpoint restarting), then reported.
const REFUSED_WINDOW: Duration = Duration::from_secs(2);

/// When the bytes of one attempt last moved (or when it began).
struct Activity {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: 0.into(),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        let ms = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.start + Duration::from_millis(ms)
    }

    fn moved(&self) -> bool {
        self.last_ms.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// How long to keep trying. The defaults keep any single filesystem operation under 30 s.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up (and report the last error) once this much time has passed.
    pub deadline: Duration,
    /// An attempt during which no byte moved for this long is cut.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
        }
    }
}

pub struct HttpBlobStore {
    http: reqwest::Client,
    account: String,
    base: Url,
    /// Path part of the endpoint without trailing slash: `/devstoreaccount1` on Azurite, `` on Azure.
    base_path: String,
    /// Replaced in place when discovery sees rotated keys, so open files keep working.
    auth: std::sync::RwLock<Auth>,
    policy: RetryPolicy,
    health: Arc<std::sync::Mutex<Health>>,
    /// Told when storage refuses the credential, so that keys rotated in Azure are fetched
    /// now rather than at the next scheduled refresh.
    on_denied: Option<Arc<tokio::sync::Notify>>,
    stats: Arc<Stats>,
}

struct Op<'a> {
    name: &'static str,
    method: Method,
    container: Option<&'a str>,
    blob: Option<&'a str>,
    query: Vec<(String, String)>,
    ms_headers: Vec<(String, String)>,
    if_match: String,
    if_none_match: String,
    content_type: &'static str,
    /// The request body, in parts sent one after the other (a Put Block of several of a
    /// writer's buffers is sent without joining them first).
    body: Vec<Bytes>,
    /// Bytes a ranged read asks for.
    fetch: u64,
    /// The body is handed back unread, to be read as it is wanted ([`Body`]).
    stream: bool,
}

impl<'a> Op<'a> {
    /// Extra time a transfer of this size is allowed: see [`FLOOR_RATE`].
    fn allowance(&self) -> Duration {
        let bytes = self.body_len() + self.fetch;
        Duration::from_secs_f64(bytes as f64 / FLOOR_RATE)
    }

    fn body_len(&self) -> u64 {
        self.body.iter().map(|b| b.len() as u64).sum()
    }

    fn new(
        name: &'static str,
        method: Method,
        container: Option<&'a str>,
        blob: Option<&'a str>,
    ) -> Self {
        Op {
            name,
            method,
            container,
            blob,
            query: Vec::new(),
            ms_headers: Vec::new(),
            if_match: String::new(),
            if_none_match: String::new(),
            content_type: "",
            body: Vec::new(),
            fetch: 0,
            stream: false,
        }
    }

    fn query(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_string(), v.into()));
        self
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.ms_headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }

    fn condition(mut self, cond: &Condition) -> Self {
        match cond {
            Condition::None => {}
            Condition::IfMatch(etag) => self.if_match = format!("\"{etag}\""),
            Condition::IfNoneMatchAny => self.if_none_match = "*".into(),
        }
        self
    }
}

/// How each request is authorized.
enum Auth {
    SharedKey(crate::secret::Secret),
    Sas(crate::secret::Secret),
    Bearer(Arc<TokenSource>),
}

impl Auth {
    fn from(cred: &Credential, current: Option<&Auth>) -> Result<Auth, BlobError> {
        Ok(match cred {
            Credential::SharedKey(k) => Auth::SharedKey(k.clone()),
            Credential::Sas(s) => Auth::Sas(s.clone()),
            Credential::Identity(id) => match current {
                // The same identity keeps its cached token.
                Some(Auth::Bearer(t)) if t.serves(id) => Auth::Bearer(t.clone()),
                _ => Auth::Bearer(Arc::new(
                    TokenSource::new(id, STORAGE_SCOPE).map_err(BlobError::Token)?,
                )),
            },
        })
    }
}

/// Whether storage answers, as far as the last operations could tell.
#[derive(Default)]
struct Health {
    down: bool,
    /// Start of the last probe while down.
    probe: Option<Instant>,
    probing: bool,
}

struct Answer {
    headers: HeaderMap,
    body: Bytes,
    /// The response itself, its body unread, for an [`Op::stream`].
    unread: Option<reqwest::Response>,
}

/// What one failed attempt means for the next.
pub(crate) type Failure = Step<BlobError>;

impl HttpBlobStore {
    pub fn new(
        cfg: &StorageConfig,
        policy: RetryPolicy,
        stats: Arc<Stats>,
    ) -> Result<Self, BlobError> {
        let base = Url::parse(&cfg.endpoint)
            .map_err(|e| BlobError::BadResponse(format!("endpoint {}: {e}", cfg.endpoint)))?;
        let base_path = base.path().trim_end_matches('/').to_string();
        Ok(HttpBlobStore {
            http: http_client(&policy)?,
            account: cfg.account.clone(),
            base,
            base_path,
            auth: std::sync::RwLock::new(Auth::from(&cfg.credential, None)?),
            policy,
            health: Arc::default(),
            on_denied: None,
            stats,
        })
    }

    /// Signals `notify` whenever storage refuses this client's credential.
    pub fn notify_denied(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_denied = Some(notify);
        self
    }

    /// Uses `cred` from the next request on (e.g. a rotated key).
    pub fn set_credential(&self, cred: &Credential) -> Result<(), BlobError> {
        let mut auth = self.auth.write().unwrap_or_else(|p| p.into_inner());
        *auth = Auth::from(cred, Some(&auth))?;
        Ok(())
    }

    fn auth(&self) -> std::sync::RwLockReadGuard<'_, Auth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, op: &Op<'_>) -> String {
        let mut path = self.base_path.clone();
        path.push('/');
        if let Some(c) = op.container {
            path.push_str(c);
            if let Some(b) = op.blob {
                path.push('/');
                path.push_str(&encode_blob_name(b));
            }
        }
        path
    }

    /// Sends a Get Blob `op` for `len` (> 0) bytes from `offset`.
    async fn ranged(&self, op: Op<'_>, offset: u64, len: u64) -> Result<Bytes, BlobError> {
        let mut op = op.header(
            "x-ms-range",
            format!("bytes={}-{}", offset, offset + len - 1),
        );
        op.fetch = len;
        let answer = self.execute(op).await?;
        Stats::add(&self.stats.bytes_fetched, answer.body.len() as u64);
        if answer.body.len() as u64 > len {
            return Err(BlobError::BadResponse(format!(
                "asked for {len} bytes, got {}",
                answer.body.len()
            )));
        }
        Ok(answer.body)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn execute(&self, op: Op<'_>) -> Result<Answer, BlobError> {
        // Within what is left of the filesystem operation this request serves.
        let left = super::deadline::remaining().unwrap_or(Duration::MAX);
        if left.is_zero() {
            return Err(BlobError::Timeout(Duration::ZERO));
        }
        if self.health().down && !self.probed_up(left).await {
            return Err(BlobError::Transport(
                "storage is not answering (failing fast)".into(),
            ));
        }
        let deadline = self.policy.deadline.min(left);
        let (result, moved) = self.execute_with_retries(&op, deadline, left).await;
        if moved && result.is_ok() {
            super::deadline::progress();
        }
        let failed = matches!(result, Err(BlobError::Transport(_) | BlobError::Timeout(_)));
        match failed {
            // No answer within a whole deadline of its own: storage is down. A request cut
            // short by its operation's deadline (time spent waiting for a permit or for
            // budget) says nothing about storage, nor does a slow transfer that moved bytes.
            true if !moved && deadline >= self.policy.deadline.mul_f64(0.9) => {
                let mut h = self.health();
                h.down = true;
                // Look for it at once, so that the next requests (the kernel often repeats a
                // failed lookup) fail fast rather than probe themselves.
                self.start_probe(&mut h);
            }
            true => {}
            false => self.health().down = false,
        }
        result
    }

    /// While storage is down: true if it answers again. Probes at most every [`PROBE_EVERY`]:
    /// the request that starts a probe waits briefly for it (so the first call after storage
    /// comes back succeeds); every other fails at once.
    async fn probed_up(&self, left: Duration) -> bool {
        {
            let mut h = self.health();
            if !h.down {
                return true;
            }
            if h.probing || h.probe.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return false;
            }
            self.start_probe(&mut h);
        }
        let until = Instant::now() + PROBE_WAIT.min(left);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let h = self.health();
            if !h.down || !h.probing {
                return !h.down;
            }
        }
        false
    }

    fn start_probe(&self, h: &mut Health) {
        if !h.probing {
            h.probing = true;
            h.probe = Some(Instant::now());
            self.probe();
        }
    }

    /// Asks in the background whether storage answers again; any HTTP answer will do.
    fn probe(&self) {
        let (http, url, health) = (self.http.clone(), self.base.clone(), self.health.clone());
        tokio::spawn(async move {
            let sent = tokio::time::timeout(PROBE_TIMEOUT, http.get(url).send()).await;
            let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
            h.probing = false;
            if matches!(sent, Ok(Ok(_))) {
                h.down = false;
            }
        });
    }

    /// Runs one attempt, cut once no byte moved for `attempt_timeout`, or at `deadline`
    /// unless its bytes are still moving. `None` if it was cut.
    async fn bounded<T>(
        &self,
        attempt: impl std::future::Future<Output = T>,
        activity: &Activity,
        deadline: Instant,
        allowance: Duration,
    ) -> Option<T> {
        tokio::pin!(attempt);
        loop {
            let last = activity.last();
            let idle_cut = last + self.policy.attempt_timeout + allowance;
            let cut = idle_cut.min(deadline.max(last + MOVING));
            tokio::select! {
                r = &mut attempt => return Some(r),
                _ = tokio::time::sleep_until(cut.into()) => {
                    if activity.last() == last {
                        return None;
                    }
                }
            }
        }
    }

    /// The outcome, and whether any attempt moved bytes.
    async fn execute_with_retries(
        &self,
        op: &Op<'_>,
        deadline: Duration,
        op_left: Duration,
    ) -> (Result<Answer, BlobError>, bool) {
        let start = Instant::now();
        let allowance = op.allowance();
        // The size allowance never reaches past the operation's own deadline.
        let end = start + (deadline + allowance).min(op_left);
        let moved = std::sync::atomic::AtomicBool::new(false);
        let policy = retry::Policy {
            max_attempts: u32::MAX,
            deadline: deadline + allowance,
            base_backoff: self.policy.base_backoff,
            max_backoff: self.policy.max_backoff,
        };
        let attempt = |_| {
            let moved = &moved;
            async move {
                let activity = Activity::new();
                let sent = Instant::now();
                let outcome = self
                    .bounded(self.attempt(op, &activity), &activity, end, allowance)
                    .await;
                if activity.moved() {
                    moved.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let micros = sent.elapsed().as_micros() as u64;
                Stats::add(&self.stats.request_micros, micros);
                match outcome {
                    Some(r) => r,
                    None => Err(Step::retry(BlobError::Timeout(start.elapsed()), None)),
                }
            }
        };
        let report = |e: &BlobError, n: u32, again: bool| {
            self.log_failure(op, e, n, again);
            let answered = matches!(
                e,
                BlobError::NotFound | BlobError::PreconditionFailed | BlobError::Conflict(_)
            );
            match again {
                true => Stats::add(&self.stats.retries, 1),
                false if !answered => Stats::add(&self.stats.errors, 1),
                false => {}
            }
        };
        let result = retry::run(&policy, attempt, report)
            .await
            .map_err(|e| match e {
                BlobError::Timeout(_) => BlobError::Timeout(start.elapsed()),
                e => e,
            });
        (result, moved.into_inner())
    }

    /// Failures without an HTTP answer (those with one were logged as they came).
    fn log_failure(&self, op: &Op<'_>, err: &BlobError, attempt: u32, will_retry: bool) {
        let container = op.container.unwrap_or("");
        let blob = op.blob.unwrap_or("");
        match err {
            BlobError::NotFound
            | BlobError::PreconditionFailed
            | BlobError::Conflict(_)
            | BlobError::Denied { .. }
            | BlobError::Status { .. } => {}
            _ => tracing::warn!(
                op = op.name,
                account = %self.account,
                container,
                blob,
                attempt,
                will_retry,
                error = %err,
                "storage request failed"
            ),
        }
    }

    async fn attempt(&self, op: &Op<'_>, activity: &Arc<Activity>) -> Result<Answer, Failure> {
        let counter = match op.name {
            "list" | "list_containers" => &self.stats.list_requests,
            "head" => &self.stats.head_requests,
            "get_range" => &self.stats.get_requests,
            "put" | "put_block" | "put_block_list" => &self.stats.put_requests,
            _ => &self.stats.other_requests,
        };
        Stats::add(counter, 1);
        let path = self.path_of(op);
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut ms_headers = op.ms_headers.clone();
        ms_headers.push(("x-ms-date".into(), date));
        ms_headers.push(("x-ms-version".into(), API_VERSION.into()));

        let mut query: Vec<String> = op
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
            .collect();
        let mut headers = HeaderMap::new();
        // Signed under the read lock; only a token source is taken out, to await its token.
        let bearer = match &*self.auth() {
            Auth::SharedKey(key) => {
                let auth = authorization(
                    &self.account,
                    key,
                    &SignInput {
                        method: op.method.as_str(),
                        content_length: op.body_len(),
                        content_type: op.content_type,
                        if_match: &op.if_match,
                        if_none_match: &op.if_none_match,
                        ms_headers: &ms_headers,
                        path: &path,
                        query: &op.query,
                    },
                )
                .map_err(|e| Step::Final(BlobError::BadResponse(e)))?;
                headers.insert(reqwest::header::AUTHORIZATION, sensitive(&auth)?);
                None
            }
            Auth::Sas(sas) => {
                query.push(sas.expose().to_string());
                None
            }
            Auth::Bearer(source) => Some(source.clone()),
        };
        if let Some(source) = bearer {
            headers.insert(reqwest::header::AUTHORIZATION, bearer_of(&source).await?);
        }
        insert_headers(&mut headers, &ms_headers)?;
        if !op.if_match.is_empty() {
            headers.insert(reqwest::header::IF_MATCH, header_value(&op.if_match)?);
        }
        if !op.if_none_match.is_empty() {
            headers.insert(
                reqwest::header::IF_NONE_MATCH,
                header_value(&op.if_none_match)?,
            );
        }
        if !op.content_type.is_empty() {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                header_value(op.content_type)?,
            );
        }
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());

        let mut req = self.http.request(op.method.clone(), url).headers(headers);
        if op.method == Method::PUT {
            // Explicit, because an empty body would otherwise go without Content-Length,
            // which the service requires on every PUT.
            req = req.header(reqwest::header::CONTENT_LENGTH, op.body_len());
            req = match &op.body[..] {
                [] => req.body(Bytes::new()),
                [one] => req.body(one.clone()),
                parts => {
                    let parts: Vec<Result<Bytes, std::io::Error>> =
                        parts.iter().cloned().map(Ok).collect();
                    req.body(reqwest::Body::wrap_stream(futures::stream::iter(parts)))
                }
            };
        }
        let resp = req.send().await.map_err(transport)?;
        // Only what storage sends back counts as progress: a request body can sit in socket
        // buffers (or a stalled proxy) without storage ever seeing it.
        activity.touch();
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_success() && op.stream {
            return Ok(Answer {
                headers,
                body: Bytes::new(),
                unread: Some(resp),
            });
        }
        if status.is_success() {
            // Into one buffer of the announced size: collecting the chunks and then joining
            // them would hold every large GET twice for a moment.
            let mut resp = resp;
            let announced = match op.method {
                Method::HEAD => 0, // Content-Length is the blob's size; there is no body.
                _ => resp.content_length().unwrap_or(0).min(64 << 20),
            };
            let mut body = huge_buffer(announced as usize);
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                activity.touch();
                body.extend_from_slice(&chunk);
            }
            return Ok(Answer {
                headers,
                body: body.freeze(),
                unread: None,
            });
        }
        let code = headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // Drain the body so the connection can be reused; its content is not needed.
        let _ = resp.bytes().await;
        let failure = classify(status, code, retry::retry_after(&headers));
        if let (Step::Final(BlobError::Denied { .. }), Some(n)) = (&failure, &self.on_denied) {
            n.notify_one();
        }
        self.log_status(op, &failure, header_str(&headers, "x-ms-request-id"));
        Err(failure)
    }

    /// One line per request storage refused, with what support needs to trace it.
    fn log_status(&self, op: &Op<'_>, failure: &Failure, request_id: &str) {
        let (err, will_retry) = match failure {
            Step::Retry { error, .. } => (error, true),
            Step::Final(e) => (e, false),
        };
        let (container, blob) = (op.container.unwrap_or(""), op.blob.unwrap_or(""));
        let (status, code) = match err {
            BlobError::NotFound | BlobError::PreconditionFailed | BlobError::Conflict(_) => {
                // Expected answers (a lookup of a new name, a lost race): not failures.
                tracing::debug!(op = op.name, container, blob, request_id, error = %err, "storage answered");
                return;
            }
            BlobError::Denied { status, code } | BlobError::Status { status, code } => {
                (*status, code.as_str())
            }
            _ => (0, ""),
        };
        tracing::warn!(
            op = op.name,
            account = %self.account,
            container,
            blob,
            status,
            code,
            request_id,
            will_retry,
            "storage request failed"
        );
    }
}

pub(crate) fn classify(status: StatusCode, code: String, retry_after: Option<Duration>) -> Failure {
    let s = status.as_u16();
    match s {
        404 => Step::Final(BlobError::NotFound),
        412 => Step::Final(BlobError::PreconditionFailed),
        409 => Step::Final(BlobError::Conflict(code)),
        401 | 403 => Step::Final(BlobError::Denied { status: s, code }),
        s if retry::retryable(s) => Step::retry(BlobError::Status { status: s, code }, retry_after),
        _ => Step::Final(BlobError::Status { status: s, code }),
    }
}

pub(crate) fn transport(e: reqwest::Error) -> Failure {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut refused = false;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        refused |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        source = s.source();
    }
    match refused {
        // Nothing listens there: worth a retry or two (a restart), not a whole deadline.
        true => Step::Retry {
            error: BlobError::Transport(format!("connection refused ({msg})")),
            after: None,
            window: Some(REFUSED_WINDOW),
        },
        false => Step::retry(BlobError::Transport(msg), None),
    }
}

/// The HTTP client of a service: connections kept for reuse, no Nagle delay.
pub(crate) fn http_client(policy: &RetryPolicy) -> Result<reqwest::Client, BlobError> {
    reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(concat!("batchfs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BlobError::Transport(e.without_url().to_string()))
}

/// `Authorization: Bearer` with a token from `source`, valid for a few more minutes.
pub(crate) async fn bearer_of(source: &TokenSource) -> Result<HeaderValue, Failure> {
    let token = source
        .token()
        .await
        .map_err(|e| Step::Final(BlobError::Token(e)))?;
    sensitive(&format!("Bearer {}", token.expose()))
}

/// Adds the service's own headers (`x-ms-*`, `ocp-*`), names lowercase.
pub(crate) fn insert_headers(
    headers: &mut HeaderMap,
    pairs: &[(String, String)],
) -> Result<(), Failure> {
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| Step::Final(BlobError::BadResponse(e.to_string())))?;
        headers.insert(name, header_value(v)?);
    }
    Ok(())
}

/// An empty buffer of `cap` bytes for a large body, backed by transparent huge pages where
/// the kernel allows them on request: a 32 MiB GET otherwise costs 8,192 page faults, each
/// zeroing 4 KiB, which was a fifth of the daemon's CPU in a cold sequential read. The
/// buffer starts on a huge page boundary, so that all of it, not only the huge pages that
/// happen to fit inside, is covered (the padding before it is never touched).
pub(crate) fn huge_buffer(cap: usize) -> bytes::BytesMut {
    const HUGE: usize = 2 << 20;
    if cap < HUGE {
        return bytes::BytesMut::with_capacity(cap);
    }
    let mut buf = bytes::BytesMut::with_capacity(cap + HUGE);
    let pad = buf.as_ptr().align_offset(HUGE);
    let len = cap.next_multiple_of(HUGE).min(buf.capacity() - pad);
    // SAFETY: the range lies inside the buffer's own allocation, which nothing has touched
    // yet; MADV_HUGEPAGE only changes how its pages are backed, never their content.
    unsafe {
        libc::madvise(buf.as_mut_ptr().add(pad).cast(), len, libc::MADV_HUGEPAGE);
    }
    // The padding is dropped without being written (writing it would fault its pages in);
    // what is returned owns the allocation alone once `buf` goes.
    buf.split_off(pad)
}

fn header_value(v: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(v).map_err(|_| Step::Final(BlobError::BadResponse("header value".into())))
}

/// A header value HTTP libraries will not print in their debug output.
pub(crate) fn sensitive(v: &str) -> Result<HeaderValue, Failure> {
    let mut value = header_value(v)?;
    value.set_sensitive(true);
    Ok(value)
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Percent-encodes a blob name for the URL path, keeping `/` as the separator.
pub fn encode_blob_name(name: &str) -> String {
    name.split('/')
        .map(|seg| urlencoding::encode(seg).into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn props_from_headers(h: &HeaderMap) -> Result<BlobProps, BlobError> {
    let size = header_str(h, "content-length")
        .parse::<u64>()
        .map_err(|_| BlobError::BadResponse("HEAD without Content-Length".into()))?;
    let mut metadata = BTreeMap::new();
    for (k, v) in h {
        if let Some(name) = k.as_str().strip_prefix("x-ms-meta-") {
            metadata.insert(name.to_string(), v.to_str().unwrap_or("").to_string());
        }
    }
    let some = |name: &str| Some(header_str(h, name).to_string()).filter(|v| !v.is_empty());
    Ok(BlobProps {
        size,
        etag: normalize_etag(header_str(h, "etag")),
        last_modified: parse_time(header_str(h, "last-modified")),
        metadata,
        system: Some(Box::new(SystemProps {
            content_type: some("content-type"),
            content_md5: some("content-md5"),
            content_encoding: some("content-encoding"),
            content_language: some("content-language"),
            content_disposition: some("content-disposition"),
            cache_control: some("cache-control"),
            access_tier: some("x-ms-access-tier"),
            blob_type: some("x-ms-blob-type"),
            lease_state: some("x-ms-lease-state"),
        })),
    })
}

fn utf8(body: &Bytes) -> Result<&str, BlobError> {
    std::str::from_utf8(body).map_err(|_| BlobError::BadResponse("listing is not UTF-8".into()))
}

/// Sets the blob's content headers from `system` (the content type defaulting to
/// `application/octet-stream`). Every request that writes a version sends them all: storage
/// clears any it is not given.
fn with_content_headers<'a>(mut op: Op<'a>, system: &SystemProps) -> Op<'a> {
    let content_type =
        (system.content_type.clone()).unwrap_or_else(|| "application/octet-stream".to_string());
    op = op.header("x-ms-blob-content-type", content_type);
    let headers = [
        ("x-ms-blob-content-md5", &system.content_md5),
        ("x-ms-blob-content-encoding", &system.content_encoding),
        ("x-ms-blob-content-language", &system.content_language),
        ("x-ms-blob-content-disposition", &system.content_disposition),
        ("x-ms-blob-cache-control", &system.cache_control),
    ];
    for (name, value) in headers {
        if let Some(v) = value {
            op = op.header(name, v.clone());
        }
    }
    op
}

impl BlobStore for HttpBlobStore {
    fn origin(&self) -> Option<String> {
        // Written into the disk tier's index headers: never a query (a SAS pasted into an
        // endpoint) nor user info.
        let mut u = self.base.clone();
        u.set_query(None);
        u.set_fragment(None);
        let _ = u.set_username("");
        let _ = u.set_password(None);
        Some(u.as_str().trim_end_matches('/').to_string())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>, BlobError> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut op = Op::new("list_containers", Method::GET, None, None).query("comp", "list");
            if let Some(m) = &marker {
                op = op.query("marker", m.clone());
            }
            let answer = self.execute(op).await?;
            let (items, next) = parse_container_list(utf8(&answer.body)?)?;
            all.extend(items);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(all),
            }
        }
    }

    async fn list(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<ListPage, BlobError> {
        let mut op = Op::new("list", Method::GET, Some(container), None)
            .query("restype", "container")
            .query("comp", "list")
            .query("include", "metadata");
        if !prefix.is_empty() {
            op = op.query("prefix", prefix);
        }
        if let Some(d) = delimiter {
            op = op.query("delimiter", d);
        }
        if let Some(m) = marker {
            op = op.query("marker", m);
        }
        if let Some(n) = max_results {
            op = op.query("maxresults", n.to_string());
        }
        let answer = self.execute(op).await?;
        parse_blob_list(utf8(&answer.body)?)
    }

    async fn head(&self, container: &str, blob: &str) -> Result<BlobProps, BlobError> {
        let answer = self
            .execute(Op::new("head", Method::HEAD, Some(container), Some(blob)))
            .await?;
        props_from_headers(&answer.headers)
    }

    async fn get_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Bytes, BlobError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let cond = match if_match {
            Some(e) => Condition::IfMatch(e.to_string()),
            None => Condition::None,
        };
        let op = Op::new("get_range", Method::GET, Some(container), Some(blob)).condition(&cond);
        self.ranged(op, offset, len).await
    }

    async fn open_range(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<Body, BlobError> {
        if len == 0 {
            return Ok(Body::whole(Bytes::new()));
        }
        let cond = match if_match {
            Some(e) => Condition::IfMatch(e.to_string()),
            None => Condition::None,
        };
        let mut op = Op::new("get_range", Method::GET, Some(container), Some(blob))
            .condition(&cond)
            .header(
                "x-ms-range",
                format!("bytes={}-{}", offset, offset + len - 1),
            );
        op.stream = true;
        let answer = self.execute(op).await?;
        let resp = answer
            .unread
            .ok_or_else(|| BlobError::BadResponse("a streamed GET without its body".into()))?;
        if resp.content_length().is_some_and(|n| n > len) {
            return Err(BlobError::BadResponse(format!(
                "asked for {len} bytes, got {}",
                resp.content_length().unwrap_or(0)
            )));
        }
        let stats = self.stats.clone();
        let counted = move |n| Stats::add(&stats.bytes_fetched, n);
        Ok(Body::http(
            resp,
            self.policy.attempt_timeout,
            Box::new(counted),
        ))
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
        let op = Op::new("put", Method::PUT, Some(container), Some(blob))
            .header("x-ms-blob-type", "BlockBlob")
            .condition(&cond);
        let mut op = with_content_headers(op, headers);
        for (k, v) in metadata {
            op = op.header(&format!("x-ms-meta-{k}"), v.clone());
        }
        op.content_type = "application/octet-stream";
        let len = data.len() as u64;
        op.body = vec![data];
        let answer = self.execute(op).await?;
        Stats::add(&self.stats.bytes_uploaded, len);
        Ok(normalize_etag(header_str(&answer.headers, "etag")))
    }

    async fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: Bytes,
    ) -> Result<(), BlobError> {
        self.put_block_parts(container, blob, id, vec![data]).await
    }

    async fn put_block_parts(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        parts: Vec<Bytes>,
    ) -> Result<(), BlobError> {
        let mut op = Op::new("put_block", Method::PUT, Some(container), Some(blob))
            .query("comp", "block")
            .query("blockid", id);
        op.content_type = "application/octet-stream";
        op.body = parts;
        let len = op.body_len();
        self.execute(op).await?;
        Stats::add(&self.stats.bytes_uploaded, len);
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
        let op = Op::new("put_block_list", Method::PUT, Some(container), Some(blob))
            .query("comp", "blocklist")
            .condition(&cond);
        let mut op = with_content_headers(op, headers);
        for (k, v) in metadata {
            op = op.header(&format!("x-ms-meta-{k}"), v.clone());
        }
        op.content_type = "application/xml";
        op.body = vec![Bytes::from(block_list_body(ids))];
        let answer = self.execute(op).await?;
        Ok(normalize_etag(header_str(&answer.headers, "etag")))
    }

    async fn get_block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<(String, Vec<(String, u64)>), BlobError> {
        let op = Op::new("get_block_list", Method::GET, Some(container), Some(blob))
            .query("comp", "blocklist")
            .query("blocklisttype", "committed");
        let answer = self.execute(op).await?;
        let etag = normalize_etag(header_str(&answer.headers, "etag"));
        Ok((etag, parse_block_list(utf8(&answer.body)?)?))
    }

    async fn copy(
        &self,
        container: &str,
        src: &str,
        src_etag: &str,
        dst: &str,
        dst_cond: Condition,
    ) -> Result<String, BlobError> {
        let mut source = self.base.clone();
        source.set_path(&format!(
            "{}/{container}/{}",
            self.base_path,
            encode_blob_name(src)
        ));
        if let Auth::Sas(sas) = &*self.auth() {
            source.set_query(Some(sas.expose()));
        }
        let op = Op::new("copy", Method::PUT, Some(container), Some(dst))
            .header("x-ms-copy-source", source.as_str())
            .header("x-ms-source-if-match", format!("\"{src_etag}\""))
            .condition(&dst_cond);
        let answer = self.execute(op).await?;
        let mut status = header_str(&answer.headers, "x-ms-copy-status").to_string();
        let mut etag = normalize_etag(header_str(&answer.headers, "etag"));
        // Within one account a copy is usually done when the call returns; a large one may
        // still be pending, so poll until the service says how it ended.
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        while status == "pending" {
            if started.elapsed() > COPY_WAIT {
                return Err(BlobError::Timeout(started.elapsed()));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            let answer = self
                .execute(Op::new("head", Method::HEAD, Some(container), Some(dst)))
                .await?;
            status = header_str(&answer.headers, "x-ms-copy-status").to_string();
            etag = normalize_etag(header_str(&answer.headers, "etag"));
        }
        match status.as_str() {
            "success" | "" => Ok(etag),
            other => Err(BlobError::BadResponse(format!("copy ended as {other}"))),
        }
    }

    async fn delete(&self, container: &str, blob: &str, cond: Condition) -> Result<(), BlobError> {
        // A blob with snapshots (an edit in progress elsewhere) cannot be deleted without them.
        let op = Op::new("delete", Method::DELETE, Some(container), Some(blob))
            .header("x-ms-delete-snapshots", "include")
            .condition(&cond);
        self.execute(op).await.map(|_| ())
    }

    async fn snapshot(
        &self,
        container: &str,
        blob: &str,
        cond: Condition,
    ) -> Result<String, BlobError> {
        let op = Op::new("snapshot", Method::PUT, Some(container), Some(blob))
            .query("comp", "snapshot")
            .condition(&cond);
        let answer = self.execute(op).await?;
        match header_str(&answer.headers, "x-ms-snapshot") {
            "" => Err(BlobError::BadResponse(
                "snapshot without x-ms-snapshot".into(),
            )),
            id => Ok(id.to_string()),
        }
    }

    async fn get_snapshot_range(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, BlobError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let op = Op::new("get_range", Method::GET, Some(container), Some(blob))
            .query("snapshot", snapshot);
        self.ranged(op, offset, len).await
    }

    async fn delete_snapshot(
        &self,
        container: &str,
        blob: &str,
        snapshot: &str,
    ) -> Result<(), BlobError> {
        let op = Op::new("delete", Method::DELETE, Some(container), Some(blob))
            .query("snapshot", snapshot);
        self.execute(op).await.map(|_| ())
    }

    async fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: &BTreeMap<String, String>,
        cond: Condition,
    ) -> Result<String, BlobError> {
        let mut op = Op::new("set_metadata", Method::PUT, Some(container), Some(blob))
            .query("comp", "metadata")
            .condition(&cond);
        for (k, v) in metadata {
            op = op.header(&format!("x-ms-meta-{k}"), v.clone());
        }
        let answer = self.execute(op).await?;
        Ok(normalize_etag(header_str(&answer.headers, "etag")))
    }

    async fn set_content_headers(
        &self,
        container: &str,
        blob: &str,
        system: &SystemProps,
        cond: Condition,
    ) -> Result<String, BlobError> {
        let op = Op::new("set_properties", Method::PUT, Some(container), Some(blob))
            .query("comp", "properties")
            .condition(&cond);
        let op = with_content_headers(op, system);
        let answer = self.execute(op).await?;
        Ok(normalize_etag(header_str(&answer.headers, "etag")))
    }

    async fn set_tier(&self, container: &str, blob: &str, tier: &str) -> Result<(), BlobError> {
        let op = Op::new("set_tier", Method::PUT, Some(container), Some(blob))
            .query("comp", "tier")
            .header("x-ms-access-tier", tier.to_string());
        self.execute(op).await.map(|_| ())
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        let op = Op::new("create_container", Method::PUT, Some(container), None)
            .query("restype", "container");
        self.execute(op).await.map(|_| ())
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let op = Op::new("delete_container", Method::DELETE, Some(container), None)
            .query("restype", "container");
        self.execute(op).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_blob_name("a b/c#d%e+f$g"), "a%20b/c%23d%25e%2Bf%24g");
        assert_eq!(encode_blob_name("ünï/x"), "%C3%BCn%C3%AF/x");
    }

    #[test]
    fn never_retries_conflicts_or_preconditions() {
        for s in [409u16, 412, 404, 403] {
            let f = classify(StatusCode::from_u16(s).unwrap(), String::new(), None);
            assert!(matches!(f, Step::Final(_)), "{s}");
        }
        for s in [408u16, 429, 500, 503] {
            let f = classify(StatusCode::from_u16(s).unwrap(), String::new(), None);
            assert!(matches!(f, Step::Retry { .. }), "{s}");
        }
    }
}
