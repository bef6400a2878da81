//! A local stand-in for Azure Resource Manager and a managed identity token endpoint.
//!
//! It answers with the documented response shapes (Batch account list with `nextLink`
//! paging, Batch `listKeys`, storage account GET and `listKeys`, subscriptions list, App
//! Service style managed identity tokens) and records every request that broke the rules a
//! real ARM enforces (method, api-version, bearer token), so a test can assert there were none.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub const BATCH_API: &str = "2024-07-01";
pub const STORAGE_API: &str = "2023-05-01";
pub const SUBSCRIPTIONS_API: &str = "2022-12-01";
/// What the managed identity endpoint wants in `X-IDENTITY-HEADER`.
pub const IDENTITY_HEADER: &str = "identity-header-secret-6a1f";

#[derive(Clone, Debug)]
pub struct FakeBatch {
    pub name: String,
    pub resource_group: String,
    pub storage: Option<String>,
    pub storage_mode: Option<&'static str>,
    pub modes: Option<Vec<&'static str>>,
    pub primary: String,
    pub secondary: String,
    /// `accountEndpoint`; by default a local port where nothing listens, so no test sends
    /// requests to Azure.
    pub endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FakeStorage {
    pub name: String,
    pub resource_group: String,
    pub blob_endpoint: String,
    /// (keyName, value, permissions) as listKeys returns them.
    pub keys: Vec<(String, String, String)>,
}

#[derive(Default)]
pub struct State {
    pub subscription: String,
    pub batch: Vec<FakeBatch>,
    pub storage: Vec<FakeStorage>,
    /// The bearer token handed out for every resource.
    pub token: String,
    /// Resources tokens were asked for (`resource=` of the identity endpoint).
    pub token_resources: Vec<String>,
    /// `client_id=` of those requests (a user-assigned identity), empty when absent.
    pub token_client_ids: Vec<String>,
    pub violations: Vec<String>,
    /// Method and path of every ARM call, in order.
    pub calls: Vec<String>,
    /// Make the identity endpoint fail (500).
    pub token_broken: bool,
    /// Refuse every `listKeys` (403), as when a role assignment is taken away.
    pub list_keys_denied: bool,
    /// Answer the next Batch account list with 429 and `Retry-After: 1`.
    pub throttle_once: bool,
    /// Seconds the tokens handed out are valid (default one hour).
    pub token_ttl: Option<u64>,
}

pub struct FakeArm {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

impl FakeArm {
    pub fn start(state: State) -> FakeArm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, port, &state));
            }
        });
        FakeArm { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment that makes azure_identity's managed identity credential use this server.
    pub fn identity_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("{}/msi/token", self.endpoint()),
            ),
            ("IDENTITY_HEADER".into(), IDENTITY_HEADER.into()),
        ]
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("state"))
    }

    /// The ARM GET body of a Batch account, as the list and GET return it.
    pub fn batch_body(&self, name: &str) -> Value {
        self.with(|s| {
            let b = s
                .batch
                .iter()
                .find(|b| b.name == name)
                .expect("known account");
            batch_json(s, b)
        })
    }
}

fn batch_id(sub: &str, b: &FakeBatch) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Batch/batchAccounts/{}",
        b.resource_group, b.name
    )
}

fn storage_id(sub: &str, s: &FakeStorage) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
        s.resource_group, s.name
    )
}

fn batch_json(s: &State, b: &FakeBatch) -> Value {
    let mut props = json!({
        "accountEndpoint": b.endpoint.clone().unwrap_or_else(|| "127.0.0.1:9".to_string()),
        "provisioningState": "Succeeded",
        "poolAllocationMode": "BatchService",
        "dedicatedCoreQuota": 20,
        "publicNetworkAccess": "Enabled",
    });
    if let Some(st) = &b.storage
        && let Some(sa) = s.storage.iter().find(|x| &x.name == st)
    {
        let mut auto = json!({
            "storageAccountId": storage_id(&s.subscription, sa),
            "lastKeySync": "2026-11-01T10:00:00.0000000Z",
        });
        if let Some(mode) = b.storage_mode {
            auto["authenticationMode"] = json!(mode);
        }
        props["autoStorage"] = auto;
    }
    if let Some(modes) = &b.modes {
        props["allowedAuthenticationModes"] = json!(modes);
    }
    json!({
        "id": batch_id(&s.subscription, b),
        "name": b.name,
        "type": "Microsoft.Batch/batchAccounts",
        "location": "westeurope",
        "tags": {"team": "render"},
        "identity": {"type": "None"},
        "properties": props,
    })
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = url_pairs(q);
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
    })
}

fn url_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<State>) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut w = write_half;
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        let (status, body) = {
            let mut s = state.lock().expect("state");
            answer(&mut s, &req, port)
        };
        let text = body.to_string();
        let retry = if status == 429 {
            "retry-after: 1\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-ms-request-id: fake-{}\r\n{retry}\r\n",
            text.len(),
            rand_id()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn rand_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn error(code: &str) -> Value {
    json!({"error": {"code": code, "message": code}})
}

fn answer(s: &mut State, req: &Request, port: u16) -> (u16, Value) {
    if req.path == "/msi/token" {
        if req.headers.get("x-identity-header").map(String::as_str) != Some(IDENTITY_HEADER) {
            s.violations
                .push("token request without X-IDENTITY-HEADER".into());
            return (401, error("Unauthorized"));
        }
        if s.token_broken {
            return (500, error("InternalError"));
        }
        let resource = req.query.get("resource").cloned().unwrap_or_default();
        s.token_resources.push(resource.clone());
        let client_id = req.query.get("client_id").cloned().unwrap_or_default();
        s.token_client_ids.push(client_id);
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() + s.token_ttl.unwrap_or(3600))
            .unwrap_or(0);
        return (
            200,
            json!({
                "access_token": s.token,
                "expires_on": expires.to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        );
    }
    s.calls.push(format!("{} {}", req.method, req.path));
    let bearer = format!("Bearer {}", s.token);
    if req.headers.get("authorization") != Some(&bearer) {
        s.violations.push(format!(
            "{} {}: no or wrong bearer token",
            req.method, req.path
        ));
        return (401, error("AuthenticationFailed"));
    }
    let api = req.query.get("api-version").cloned().unwrap_or_default();
    let sub = s.subscription.clone();
    let want = |s: &mut State, method: &str, version: &str| {
        let ok = req.method == method && api == version;
        if !ok {
            s.violations.push(format!(
                "{} {} api-version={api}: expected {method} with {version}",
                req.method, req.path
            ));
        }
        ok
    };
    let p = req.path.as_str();
    if p.ends_with("/listKeys") && s.list_keys_denied {
        return (403, error("AuthorizationFailed"));
    }
    if p == "/subscriptions" {
        if !want(s, "GET", SUBSCRIPTIONS_API) {
            return (400, error("InvalidApiVersionParameter"));
        }
        return (
            200,
            json!({"value": [{"id": format!("/subscriptions/{sub}"), "subscriptionId": sub,
                   "displayName": "test", "state": "Enabled"}]}),
        );
    }
    let batch_list = format!("/subscriptions/{sub}/providers/Microsoft.Batch/batchAccounts");
    let rg_list = |rg: &str| {
        format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts")
    };
    let in_rg = s
        .batch
        .iter()
        .map(|b| b.resource_group.clone())
        .find(|rg| p == rg_list(rg));
    if p == batch_list || in_rg.is_some() {
        if !want(s, "GET", BATCH_API) {
            return (400, error("InvalidApiVersionParameter"));
        }
        if std::mem::take(&mut s.throttle_once) {
            return (429, error("TooManyRequests"));
        }
        // One account per page, so every listing follows nextLink.
        let page: usize = req
            .query
            .get("page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let all: Vec<Value> = s
            .batch
            .iter()
            .filter(|b| in_rg.as_ref().is_none_or(|rg| &b.resource_group == rg))
            .map(|b| batch_json(s, b))
            .collect();
        let mut body = json!({"value": all.get(page).cloned().into_iter().collect::<Vec<_>>()});
        if page + 1 < all.len() {
            body["nextLink"] = json!(format!(
                "http://127.0.0.1:{port}{p}?api-version={BATCH_API}&page={}",
                page + 1
            ));
        }
        return (200, body);
    }
    for b in s.batch.clone() {
        let id = batch_id(&sub, &b);
        if p == id {
            if !want(s, "GET", BATCH_API) {
                return (400, error("InvalidApiVersionParameter"));
            }
            return (200, batch_json(s, &b));
        }
        if p == format!("{id}/listKeys") {
            if !want(s, "POST", BATCH_API) {
                return (400, error("InvalidApiVersionParameter"));
            }
            if b.modes.as_ref().is_some_and(|m| !m.contains(&"SharedKey")) {
                s.violations
                    .push(format!("listKeys of {} that excludes SharedKey", b.name));
                return (400, error("OperationNotValid"));
            }
            return (
                200,
                json!({"accountName": b.name, "primary": b.primary, "secondary": b.secondary}),
            );
        }
    }
    for st in s.storage.clone() {
        let id = storage_id(&sub, &st);
        if p == id {
            if !want(s, "GET", STORAGE_API) {
                return (400, error("InvalidApiVersionParameter"));
            }
            return (
                200,
                json!({
                    "id": id, "name": st.name, "type": "Microsoft.Storage/storageAccounts",
                    "location": "westeurope", "kind": "StorageV2",
                    "sku": {"name": "Standard_LRS", "tier": "Standard"},
                    "properties": {"primaryEndpoints": {"blob": st.blob_endpoint,
                        "dfs": "https://unused.dfs.core.windows.net/"},
                        "provisioningState": "Succeeded"},
                }),
            );
        }
        if p == format!("{id}/listKeys") {
            if !want(s, "POST", STORAGE_API) {
                return (400, error("InvalidApiVersionParameter"));
            }
            let keys: Vec<Value> = st
                .keys
                .iter()
                .map(|(n, v, perm)| {
                    json!({"keyName": n, "value": v, "permissions": perm,
                                           "creationTime": "2026-11-01T10:00:00Z"})
                })
                .collect();
            return (200, json!({"keys": keys}));
        }
    }
    (404, error("ResourceNotFound"))
}
