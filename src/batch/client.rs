//! The Batch data-plane HTTP client: a thin layer over reqwest, like the blob client.
//!
//! Every request is signed (Shared Key with the Batch account key, an Entra ID token for the
//! Batch resource, or a task's job-scoped token), bounded per attempt by a timeout that grows
//! with the bytes it fetches, and retried when worth it (408, 429, 5xx, connection errors)
//! with backoff, jitter and `Retry-After`, within `--timeout` and the deadline of the FUSE
//! operation it serves. 404, 409 and 412 are answers, never retried. A refusal gets one log
//! line with the service's error code and request id; secrets never reach a log.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;

use super::auth::{SignInput, authorization};
use super::{API_VERSION, BlobError, FileProps, parse_mode};
use crate::accounts::identity::TokenSource;
use crate::blob::RetryPolicy;
use crate::blob::client::{bearer_of, classify, http_client, insert_headers, sensitive, transport};
use crate::blob::retry::{self, Step};
use crate::secret::Secret;
use crate::stats::Stats;

/// A transfer's own allowance on top of the attempt timeout, at this floor rate.
const FLOOR_RATE: f64 = 512.0 * 1024.0;
/// Items per List request: the most the service gives.
pub const MAX_RESULTS: &str = "1000";

/// How requests prove who sends them.
pub enum Auth {
    /// The Batch account's key.
    SharedKey(Secret),
    /// Entra ID tokens for the Batch resource.
    Bearer(Arc<TokenSource>),
    /// A fixed token: the task's `AZ_BATCH_AUTHENTICATION_TOKEN` (job-scoped).
    Token(Secret),
}

pub struct ServiceClient {
    http: reqwest::Client,
    account: String,
    base: Url,
    base_path: String,
    auth: RwLock<Auth>,
    policy: RetryPolicy,
    stats: Arc<Stats>,
    /// Told when the service refuses the key: it may have been regenerated (rotation).
    on_denied: Option<Arc<tokio::sync::Notify>>,
}

struct Request<'a> {
    name: &'static str,
    method: Method,
    /// Below the service's base URL, percent-encoded.
    path: &'a str,
    query: Vec<(String, String)>,
    ocp_headers: Vec<(String, String)>,
    fetch: u64,
    /// Refusals are not worth a log line, unless they say a node is gone or unreachable.
    quiet: bool,
    /// No retry.
    once: bool,
}

type Failure = Step<BlobError>;

impl ServiceClient {
    pub fn new(
        account: &str,
        url: &str,
        auth: Auth,
        policy: RetryPolicy,
        stats: Arc<Stats>,
    ) -> Result<Self, BlobError> {
        let base = Url::parse(url)
            .map_err(|e| BlobError::BadResponse(format!("Batch endpoint {url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(BlobError::BadResponse(format!(
                "Batch endpoint {url}: not an http(s) URL"
            )));
        }
        let base_path = base.path().trim_end_matches('/').to_string();
        Ok(ServiceClient {
            http: http_client(&policy)?,
            account: account.to_string(),
            base,
            base_path,
            auth: RwLock::new(auth),
            policy,
            stats,
            on_denied: None,
        })
    }

    /// Signals `notify` whenever the service refuses the key, so the accounts are read again.
    pub fn notify_denied(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.on_denied = Some(notify);
        self
    }

    /// From now on, sign with `auth` (a rotated key).
    pub fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
    }

    /// Whether requests carry tokens of `identity` now.
    pub fn serves(&self, identity: &crate::accounts::identity::Identity) -> bool {
        match &*self.auth.read().unwrap_or_else(|p| p.into_inner()) {
            Auth::Bearer(t) => t.serves(identity),
            _ => false,
        }
    }

    /// The endpoint, for telling one client from another.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// GET of one resource (`/jobs/{id}`...) as JSON.
    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, BlobError> {
        let body = self.execute(self.request("get", path, query)).await?.1;
        serde_json::from_slice(&body)
            .map_err(|e| BlobError::BadResponse(format!("{path}: not JSON: {e}")))
    }

    /// Every item of a List request, following `odata.nextLink` from page to page.
    pub async fn list(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>, BlobError> {
        let mut items = Vec::new();
        let mut req = self.request("list", path, query);
        req.query.push(("maxresults".into(), MAX_RESULTS.into()));
        let mut next_path;
        loop {
            let body = self.execute(req).await?.1;
            let mut page: Value = serde_json::from_slice(&body)
                .map_err(|e| BlobError::BadResponse(format!("{path}: not JSON: {e}")))?;
            if let Some(Value::Array(v)) = page.get_mut("value").map(Value::take) {
                items.extend(v);
            }
            let Some(next) = page["odata.nextLink"].as_str().filter(|s| !s.is_empty()) else {
                return Ok(items);
            };
            let (p, q) = self.next_link(next)?;
            next_path = p;
            req = Request {
                query: q,
                ..self.request("list", &next_path, &[])
            };
        }
    }

    /// Get File Properties (HEAD) of a task's or node's file; `path` ends in `/files/...`.
    /// A refusal has no error code (a HEAD answer has no body): see [`Self::explain`].
    pub async fn file_props(&self, path: &str) -> Result<FileProps, BlobError> {
        let headers = self.execute(self.request("head", path, &[])).await?.0;
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let size = match get("ocp-batch-file-isdirectory") {
            Some(d) if d.eq_ignore_ascii_case("true") => None,
            _ => Some(
                get("content-length")
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| BlobError::BadResponse("HEAD without Content-Length".into()))?,
            ),
        };
        let last_modified = get("last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(FileProps {
            is_dir: size.is_none(),
            size: size.unwrap_or(0),
            last_modified,
            mode: get("ocp-batch-file-mode").and_then(parse_mode),
        })
    }

    /// What a refused HEAD of `path` meant: a one-byte GET says which 409 it was (files
    /// cleaned up, or a node that cannot be reached) and whether a 404 was the node's, and its
    /// refusal gets the log line. Other errors, and a GET that succeeds, keep `e`.
    pub async fn explain(&self, path: &str, e: BlobError) -> BlobError {
        match e {
            BlobError::NotFound | BlobError::Conflict(_) => match self.file_range(path, 0, 1).await
            {
                Err(why @ (BlobError::NotFound | BlobError::Conflict(_))) => why,
                _ => e,
            },
            e => e,
        }
    }

    /// The first `len` bytes of a file, and the time it was last modified, asked for on the
    /// side of a lookup: a refusal is not logged (the lookup's own request says what failed).
    pub async fn file_start(&self, path: &str, len: u64) -> Result<(SystemTime, Bytes), BlobError> {
        let mut req = self.request("get_range", path, &[]);
        req.ocp_headers
            .push(("ocp-range".into(), format!("bytes=0-{}", len.max(1) - 1)));
        req.fetch = len;
        req.quiet = true;
        // One try: a lookup does not wait on it beyond its own answer.
        req.once = true;
        let (headers, body) = self.execute(req).await?;
        Stats::add(&self.stats.service_bytes, body.len() as u64);
        let modified = headers
            .get("last-modified")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .ok_or_else(|| BlobError::BadResponse("Get File without Last-Modified".into()))?;
        Ok((modified, body))
    }

    /// `len` bytes of a file from `offset` (fewer where the file ends sooner).
    pub async fn file_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BlobError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut req = self.request("get_range", path, &[]);
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        req.ocp_headers.push(("ocp-range".into(), range));
        req.fetch = len;
        let body = self.execute(req).await?.1;
        Stats::add(&self.stats.service_bytes, body.len() as u64);
        if body.len() as u64 > len {
            return Err(BlobError::BadResponse(format!(
                "asked for {len} bytes, got {}",
                body.len()
            )));
        }
        Ok(body)
    }

    fn request<'a>(
        &self,
        name: &'static str,
        path: &'a str,
        query: &[(&str, &str)],
    ) -> Request<'a> {
        let mut q: Vec<(String, String)> = vec![("api-version".into(), API_VERSION.into())];
        q.extend(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Request {
            name,
            method: if name == "head" {
                Method::HEAD
            } else {
                Method::GET
            },
            path,
            query: q,
            ocp_headers: Vec::new(),
            fetch: 0,
            quiet: false,
            once: false,
        }
    }

    /// The path and query of a next link. Only those are used: the request goes to this
    /// client's endpoint whatever host the link names (behind a proxy, the service names
    /// itself), so a token or signature is never sent anywhere else.
    fn next_link(&self, link: &str) -> Result<(String, Vec<(String, String)>), BlobError> {
        // Absolute as the service writes it; a relative one is taken against the endpoint.
        let url = Url::parse(link)
            .or_else(|_| self.base.join(link))
            .map_err(|e| BlobError::BadResponse(format!("odata.nextLink: {e}")))?;
        let path = url
            .path()
            .strip_prefix(self.base_path.as_str())
            .unwrap_or(url.path())
            .to_string();
        let query = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok((path, query))
    }

    async fn execute(&self, req: Request<'_>) -> Result<(HeaderMap, Bytes), BlobError> {
        let left = crate::blob::deadline::remaining().unwrap_or(Duration::MAX);
        if left.is_zero() {
            return Err(BlobError::Timeout(Duration::ZERO));
        }
        let allowance = Duration::from_secs_f64(req.fetch as f64 / FLOOR_RATE);
        let policy = retry::Policy {
            max_attempts: if req.once { 1 } else { u32::MAX },
            deadline: (self.policy.deadline + allowance).min(left),
            base_backoff: self.policy.base_backoff,
            max_backoff: self.policy.max_backoff,
        };
        let start = Instant::now();
        let attempt = |_| {
            let req = &req;
            async move {
                let per_try = (self.policy.attempt_timeout + allowance)
                    .min(policy.deadline.saturating_sub(start.elapsed()));
                let sent = Instant::now();
                let r = tokio::time::timeout(per_try, self.attempt(req)).await;
                Stats::add(
                    &self.stats.request_micros,
                    sent.elapsed().as_micros() as u64,
                );
                match r {
                    Ok(r) => r,
                    Err(_) => Err(Step::retry(BlobError::Timeout(start.elapsed()), None)),
                }
            }
        };
        let report = |e: &BlobError, n: u32, again: bool| {
            if again {
                Stats::add(&self.stats.retries, 1);
            }
            if matches!(e, BlobError::Transport(_) | BlobError::Timeout(_)) {
                tracing::warn!(op = req.name, account = %self.account, path = req.path,
                    attempt = n, will_retry = again, error = %e, "Batch service request failed");
            }
        };
        let result = retry::run(&policy, attempt, report).await;
        if result.is_ok() {
            crate::blob::deadline::progress();
        }
        result
    }

    async fn attempt(&self, req: &Request<'_>) -> Result<(HeaderMap, Bytes), Failure> {
        Stats::add(&self.stats.service_requests, 1);
        let path = format!("{}{}", self.base_path, req.path);
        let mut ocp = req.ocp_headers.clone();
        ocp.push((
            "ocp-date".into(),
            httpdate::fmt_http_date(SystemTime::now()),
        ));
        let mut headers = HeaderMap::new();
        let bearer = match &*self.auth.read().unwrap_or_else(|p| p.into_inner()) {
            Auth::SharedKey(key) => {
                let input = SignInput {
                    method: req.method.as_str(),
                    if_unmodified_since: "",
                    ocp_headers: &ocp,
                    path: &path,
                    query: &req.query,
                };
                let auth = authorization(&self.account, key, &input)
                    .map_err(|e| Step::Final(BlobError::BadResponse(e)))?;
                headers.insert(reqwest::header::AUTHORIZATION, sensitive(&auth)?);
                None
            }
            Auth::Bearer(source) => Some(source.clone()),
            Auth::Token(t) => {
                let value = sensitive(&format!("Bearer {}", t.expose()))?;
                headers.insert(reqwest::header::AUTHORIZATION, value);
                None
            }
        };
        if let Some(source) = bearer {
            headers.insert(reqwest::header::AUTHORIZATION, bearer_of(&source).await?);
        }
        insert_headers(&mut headers, &ocp)?;
        let query: Vec<String> = req
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect();
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(Some(&query.join("&")));
        let resp = self
            .http
            .request(req.method.clone(), url)
            .headers(headers)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok((headers, body));
        }
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let failure = classify(status, code.clone(), retry::retry_after(&headers));
        // Only a refused signature says the key may have changed: a job-scoped token refused
        // outside its job, or a network rule, says nothing about it.
        if let (Step::Final(BlobError::Denied { .. }), Some(n)) = (&failure, &self.on_denied)
            && code == "AuthenticationFailed"
            && matches!(
                &*self.auth.read().unwrap_or_else(|p| p.into_inner()),
                Auth::SharedKey(_)
            )
        {
            n.notify_one();
        }
        let retried = matches!(failure, Step::Retry { .. });
        let told = !code.is_empty() || req.method != Method::HEAD;
        let telling = status.as_u16() == 409 || code == "NodeNotFound";
        match status.as_u16() {
            _ if req.quiet && !telling => {}
            // The GET that follows a HEAD refused without a code says which.
            409 if !told => {}
            // A name that is not there is a normal answer to a lookup; a node that is gone
            // is worth a line.
            404 | 412 if code != "NodeNotFound" => tracing::debug!(
                op = req.name,
                path = req.path,
                code,
                request_id,
                "Batch service answered"
            ),
            s => tracing::warn!(op = req.name, account = %self.account, path = req.path,
                status = s, code, request_id, will_retry = retried, "Batch service refused a request"),
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_followed_on_our_own_endpoint() {
        let c = ServiceClient::new(
            "acct",
            "http://127.0.0.1:8443/proxy",
            Auth::Token(Secret::new("t")),
            RetryPolicy::default(),
            Arc::default(),
        )
        .unwrap();
        let (path, query) = c
            .next_link("https://acct.westeurope.batch.azure.com/proxy/jobs/j/tasks?api-version=2025-06-01&$skiptoken=a%2Fb")
            .unwrap();
        assert_eq!(path, "/jobs/j/tasks");
        assert!(query.contains(&("$skiptoken".to_string(), "a/b".to_string())));
        let (path, _) = c.next_link("/proxy/pools?$skiptoken=x").unwrap();
        assert_eq!(path, "/pools");
        assert!(
            ServiceClient::new(
                "a",
                "ftp://x",
                Auth::Token(Secret::new("t")),
                RetryPolicy::default(),
                Arc::default()
            )
            .is_err()
        );
    }
}
