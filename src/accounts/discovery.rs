//! Batch accounts as Azure Resource Manager lists them.
//!
//! For each `Microsoft.Batch/batchAccounts` resource in scope: its keys (`listKeys`, unless
//! the account allows no SharedKey authentication), and the storage account its
//! `autoStorage.storageAccountId` names, with that account's blob endpoint and a key with
//! full permissions (or, for `BatchAccountManagedIdentity`, an Entra ID token instead).
//! One account that cannot be read completely is shown with what could be read, and logged;
//! the listing itself failing is an error, so a refresh keeps the accounts it had.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::accounts::config::{
    AccountConfig, Credential, DiscoveryConfig, ServiceConfig, StorageConfig, Unread,
};
use crate::accounts::identity::TokenSource;
use crate::blob::retry::{self, Step};
use crate::secret::Secret;

pub const BATCH_API: &str = "2024-07-01";
pub const STORAGE_API: &str = "2023-05-01";
pub const SUBSCRIPTIONS_API: &str = "2022-12-01";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A `nextLink` chain longer than this is a server bug, not a subscription.
const MAX_PAGES: usize = 1000;

const MAX_ATTEMPTS: u32 = 4;
/// Less than the 120 s `batchfs mount` waits for its daemon to be ready.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(90);

/// How one call failed: worth another attempt (after the delay ARM asked for, if it did), or
/// not.
type Failed = Step<String>;

/// ARM's guidance: retry throttling and brief unavailability, waiting what it says.
const RETRIES: retry::Policy = retry::Policy {
    max_attempts: MAX_ATTEMPTS,
    deadline: DISCOVERY_DEADLINE,
    base_backoff: Duration::from_millis(500),
    max_backoff: Duration::from_secs(10),
};

/// A client for Azure Resource Manager with the discovery identity's tokens.
pub struct Arm {
    http: reqwest::Client,
    base: String,
    token: TokenSource,
    scope: DiscoveryConfig,
}

impl Arm {
    pub fn new(scope: &DiscoveryConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("batchfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.without_url().to_string())?;
        let base = scope.resource_manager.trim_end_matches('/').to_string();
        let token = TokenSource::new(&scope.identity, &format!("{base}/.default"))?;
        Ok(Arm {
            http,
            base,
            token,
            scope: scope.clone(),
        })
    }

    /// One call, retried while ARM throttles (429) or is briefly unavailable (5xx), as
    /// its guidance asks: after `Retry-After` when given, with backoff otherwise.
    /// `target` is an ARM path (`/subscriptions/...`) or a `nextLink` URL.
    async fn call(&self, method: Method, target: &str, api: &str) -> Result<Value, String> {
        let attempt = |_| self.call_once(method.clone(), target, api);
        let report = |e: &String, n: u32, again: bool| {
            if again {
                tracing::debug!(attempt = n, "{e}; retrying");
            }
        };
        retry::run(&RETRIES, attempt, report).await
    }

    async fn call_once(&self, method: Method, target: &str, api: &str) -> Result<Value, Failed> {
        let mut url = if target.starts_with("http") {
            reqwest::Url::parse(target).map_err(|e| Step::Final(format!("bad nextLink: {e}")))?
        } else {
            reqwest::Url::parse(&format!("{}{target}", self.base))
                .map_err(|e| Step::Final(format!("{target}: {e}")))?
        };
        if !url.query_pairs().any(|(k, _)| k == "api-version") {
            url.query_pairs_mut().append_pair("api-version", api);
        }
        let what = format!("{method} {}", url.path());
        let token = self.token.token().await.map_err(Failed::Final)?;
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| Step::Final("the token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(reqwest::header::AUTHORIZATION, auth);
        if method == Method::POST {
            req = req.header(reqwest::header::CONTENT_LENGTH, 0);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Step::retry(format!("{what}: {}", e.without_url()), None))?;
        let status = resp.status();
        let retry_after = retry::retry_after(resp.headers());
        let request_id = resp
            .headers()
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Step::retry(format!("{what}: {}", e.without_url()), None))?;
        if !status.is_success() {
            let code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_default();
            tracing::warn!(
                op = %what,
                status = status.as_u16(),
                code,
                request_id,
                "resource manager request failed"
            );
            let e = format!("{what}: HTTP {} {code}", status.as_u16());
            return Err(match status.as_u16() {
                s if retry::retryable(s) => Step::retry(e, retry_after),
                _ => Step::Final(e),
            });
        }
        serde_json::from_slice(&body).map_err(|e| Step::Final(format!("{what}: not JSON: {e}")))
    }

    /// Every item of a paged list, following `nextLink`.
    async fn list(&self, path: &str, api: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        for _ in 0..MAX_PAGES {
            let Some(target) = next.take() else {
                return Ok(items);
            };
            let mut page = self.call(Method::GET, &target, api).await?;
            if let Some(Value::Array(v)) = page.get_mut("value").map(Value::take) {
                items.extend(v);
            }
            next = page["nextLink"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        Err(format!("{path}: more than {MAX_PAGES} pages"))
    }

    fn scope_label(&self) -> String {
        match (&self.scope.subscription, &self.scope.resource_group) {
            (Some(s), Some(rg)) => format!("discovery (subscription {s}, resource group {rg})"),
            (Some(s), None) => format!("discovery (subscription {s})"),
            _ => "discovery".to_string(),
        }
    }

    /// The Batch accounts in scope, each with its keys and storage; `only` keeps one name.
    /// Bounded as a whole, so a mount says why within the time its caller waits for it.
    pub async fn discover(&self, only: Option<&str>) -> Result<Vec<AccountConfig>, String> {
        match tokio::time::timeout(DISCOVERY_DEADLINE, self.discover_unbounded(only)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "Resource Manager at {} did not answer within {} s",
                self.base,
                DISCOVERY_DEADLINE.as_secs()
            )),
        }
    }

    async fn discover_unbounded(&self, only: Option<&str>) -> Result<Vec<AccountConfig>, String> {
        let subscriptions = match &self.scope.subscription {
            Some(s) => vec![s.clone()],
            None => self
                .list("/subscriptions", SUBSCRIPTIONS_API)
                .await?
                .iter()
                .filter_map(|s| s["subscriptionId"].as_str().map(str::to_string))
                .collect(),
        };
        let mut found = Vec::new();
        for sub in subscriptions {
            let path = match &self.scope.resource_group {
                Some(rg) => format!(
                    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts"
                ),
                None => format!("/subscriptions/{sub}/providers/Microsoft.Batch/batchAccounts"),
            };
            found.extend(
                self.list(&path, BATCH_API)
                    .await?
                    .into_iter()
                    .filter(|a| only.is_none_or(|n| a["name"].as_str() == Some(n))),
            );
        }
        let accounts = futures::future::join_all(found.into_iter().map(|a| self.account(a))).await;
        Ok(accounts.into_iter().flatten().collect())
    }

    /// One listed account with its keys and storage; `None` if it has no usable name.
    async fn account(&self, body: Value) -> Option<AccountConfig> {
        let name = body["name"].as_str()?.to_string();
        let id = body["id"].as_str()?.to_string();
        let props = &body["properties"];
        let (mut primary_key, mut secondary_key) = (None, None);
        let mut unread = Unread::default();
        if allows_shared_key(props) {
            match self
                .call(Method::POST, &format!("{id}/listKeys"), BATCH_API)
                .await
            {
                Ok(keys) => {
                    primary_key = secret(&keys["primary"]);
                    secondary_key = secret(&keys["secondary"]);
                }
                Err(e) => {
                    tracing::warn!(account = %name, "cannot read the keys: {e}");
                    unread.keys = true;
                }
            }
        } else {
            tracing::info!(
                account = %name,
                "not reading keys: the account's allowedAuthenticationModes exclude SharedKey"
            );
        }
        let storage = match props["autoStorage"]["storageAccountId"].as_str() {
            Some(sid) => match self.storage(props, sid).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(account = %name, storage = sid, "cannot read the storage account: {e}");
                    unread.storage = true;
                    None
                }
            },
            None => None,
        };
        let mut parts = id.split('/').skip(1);
        let (mut subscription_id, mut resource_group) = (None, None);
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            match k.to_ascii_lowercase().as_str() {
                "subscriptions" => subscription_id = Some(v.to_string()),
                "resourcegroups" => resource_group = Some(v.to_string()),
                _ => {}
            }
        }
        let endpoint = props["accountEndpoint"].as_str().map(str::to_string);
        let location = body["location"].as_str().map(str::to_string);
        let service = ServiceConfig {
            url: endpoint.as_deref().and_then(ServiceConfig::url_of),
            // The identity that sees the account may reach its service without keys.
            identity: Some(self.scope.identity.clone()),
            ..ServiceConfig::default()
        };
        Some(AccountConfig {
            service,
            source: self.scope_label(),
            endpoint,
            location,
            arm_body: Some(body),
            unread,
            name,
            subscription_id,
            resource_group,
            tags: None,
            primary_key,
            secondary_key,
            storage,
        })
    }

    async fn storage(&self, batch_props: &Value, sid: &str) -> Result<StorageConfig, String> {
        let account = self.call(Method::GET, sid, STORAGE_API).await?;
        let name = account["name"]
            .as_str()
            .ok_or("the storage account has no name")?;
        let endpoint = account["properties"]["primaryEndpoints"]["blob"]
            .as_str()
            .ok_or("the storage account has no blob endpoint")?;
        let mode = batch_props["autoStorage"]["authenticationMode"]
            .as_str()
            .unwrap_or("StorageKeys");
        let credential = if mode.eq_ignore_ascii_case("BatchAccountManagedIdentity") {
            Credential::Identity(self.scope.identity.clone())
        } else {
            let keys = self
                .call(Method::POST, &format!("{sid}/listKeys"), STORAGE_API)
                .await?;
            let full = keys["keys"].as_array().and_then(|ks| {
                ks.iter().find(|k| {
                    k["permissions"]
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case("full"))
                })
            });
            match full.and_then(|k| secret(&k["value"])) {
                Some(key) => Credential::SharedKey(key),
                None => return Err("listKeys gave no key with full permissions".into()),
            }
        };
        let mut s = StorageConfig::with_key(name, endpoint, Secret::new(""));
        s.credential = credential;
        s.kind = account["kind"].as_str().map(str::to_string);
        s.resource_id = Some(sid.to_string());
        Ok(s)
    }
}

/// Absent `allowedAuthenticationModes` means every mode (accounts created before it existed).
fn allows_shared_key(props: &Value) -> bool {
    match props["allowedAuthenticationModes"].as_array() {
        Some(modes) => modes.iter().any(|m| {
            m.as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case("SharedKey"))
        }),
        None => true,
    }
}

fn secret(v: &Value) -> Option<Secret> {
    v.as_str().filter(|s| !s.is_empty()).map(Secret::new)
}

/// Keeps what an earlier discovery read where this one could not read it: a Resource
/// Manager hiccup or a role assignment in flux must not make `keys` or `storage/` vanish
/// until the next refresh. What an account really lacks is not carried over.
pub fn keep_known(found: &mut [AccountConfig], previous: &[AccountConfig]) {
    for a in found.iter_mut() {
        let Some(prev) = previous.iter().find(|p| p.name == a.name) else {
            continue;
        };
        if a.unread.keys && a.primary_key.is_none() && a.secondary_key.is_none() {
            a.primary_key = prev.primary_key.clone();
            a.secondary_key = prev.secondary_key.clone();
        }
        if a.unread.storage && a.storage.is_none() {
            a.storage = prev.storage.clone();
        }
        if a.unread != Unread::default() {
            tracing::warn!(account = %a.name, "keeping what the last refresh read");
        }
    }
}

/// Config accounts and discovered ones in one list; one name from two sources is an error
/// that names both.
pub fn merge(
    configured: &[AccountConfig],
    discovered: Vec<AccountConfig>,
) -> Result<Vec<AccountConfig>, String> {
    let mut all = configured.to_vec();
    for a in discovered {
        if let Some(c) = all.iter().find(|c| c.name == a.name) {
            return Err(format!(
                "account `{}` is both in {} and in {}; remove one",
                a.name, c.source, a.source
            ));
        }
        all.push(a);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_key_modes() {
        assert!(allows_shared_key(&json!({})));
        assert!(allows_shared_key(
            &json!({"allowedAuthenticationModes": ["AAD", "sharedkey"]})
        ));
        assert!(!allows_shared_key(
            &json!({"allowedAuthenticationModes": ["AAD", "TaskAuthenticationToken"]})
        ));
    }
}
