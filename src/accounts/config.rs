//! The accounts file (TOML).
//!
//! Parsing is strict: unknown fields are errors (a typo such as `kee = ...` must not silently
//! mount without credentials), and every error names the file, the line and the field, because
//! the person reading it is usually editing that file on a compute node over ssh.
//!
//! Secrets may be given inline, as `*_file` (a path whose contents are the secret) or as `*_env`
//! (an environment variable). They are resolved here, once, into [`Secret`]s.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use toml::Spanned;

use crate::accounts::identity::{ARM_ENDPOINT, Identity};
use crate::secret::Secret;

pub const DEFAULT_PATH: &str = "/etc/batchfs/accounts.toml";

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub accounts: Vec<AccountConfig>,
    /// `[discovery]`: accounts listed from Azure Resource Manager.
    pub discovery: Option<DiscoveryConfig>,
    /// Things worth telling the user that do not stop the mount (e.g. a world-readable key).
    pub warnings: Vec<String>,
}

/// Where discovery looks for Batch accounts, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `None`: every subscription the identity can see.
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    pub identity: Identity,
    /// Azure Resource Manager endpoint, without a trailing slash.
    pub resource_manager: String,
}

impl DiscoveryConfig {
    pub fn new(subscription: Option<String>, resource_group: Option<String>) -> Self {
        DiscoveryConfig {
            subscription,
            resource_group,
            identity: Identity::Auto,
            resource_manager: ARM_ENDPOINT.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub name: String,
    /// Where the account was described, for messages: `file:line` or the discovery scope.
    pub source: String,
    /// For a discovered account, the ARM GET body exactly as Azure returned it.
    pub arm_body: Option<serde_json::Value>,
    /// Parts discovery failed to read this time (as opposed to parts the account lacks).
    pub unread: Unread,
    /// Host only, as ARM's `accountEndpoint` shows it.
    pub endpoint: Option<String>,
    pub location: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub primary_key: Option<Secret>,
    pub secondary_key: Option<Secret>,
    pub storage: Option<StorageConfig>,
    pub service: ServiceConfig,
}

/// The Batch service of an account: where it is, whether to show it, and, for an account
/// without keys, as whom to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Full URL: `https://` + `accountEndpoint`, or the endpoint as configured with its
    /// scheme (`http://127.0.0.1:8443` for tests and proxies).
    pub url: Option<String>,
    /// `service = false` hides `jobs/` and `pools/`.
    pub enabled: bool,
    /// Entra ID for the Batch resource, used when no key is known.
    pub identity: Option<Identity>,
    /// On a compute node, the task's job-scoped `AZ_BATCH_AUTHENTICATION_TOKEN`.
    pub task_token: Option<Secret>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            url: None,
            enabled: true,
            identity: None,
            task_token: None,
        }
    }
}

impl ServiceConfig {
    /// The service URL for an endpoint given as a host (`x.westeurope.batch.azure.com`, as
    /// ARM shows it) or as a URL.
    pub fn url_of(endpoint: &str) -> Option<String> {
        let e = endpoint.trim().trim_end_matches('/');
        if e.is_empty() {
            return None;
        }
        Some(
            match e.starts_with("http://") || e.starts_with("https://") {
                true => e.to_string(),
                false => format!("https://{e}"),
            },
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    pub keys: bool,
    pub storage: bool,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub account: String,
    /// Blob service endpoint, without a trailing slash.
    pub endpoint: String,
    pub kind: Option<String>,
    /// Full ARM id of the storage account, shown as `autoStorage.storageAccountId`.
    pub resource_id: Option<String>,
    pub credential: Credential,
    pub container: Option<String>,
}

impl StorageConfig {
    /// A storage account reached with its shared key, as tools and tests build one.
    pub fn with_key(account: &str, endpoint: &str, key: Secret) -> Self {
        StorageConfig {
            account: account.to_string(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            kind: None,
            resource_id: None,
            credential: Credential::SharedKey(key),
            container: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    SharedKey(Secret),
    Sas(Secret),
    /// Entra ID bearer tokens (storage scope) from this identity.
    Identity(Identity),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    account: Vec<Spanned<RawAccount>>,
    discovery: Option<Spanned<RawDiscovery>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    subscription: Field,
    resource_group: Field,
    identity: Field,
    client_id: Field,
    resource_manager: Field,
}

type Field = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Option<Spanned<String>>,
    endpoint: Field,
    location: Field,
    subscription_id: Field,
    resource_group: Field,
    tags: Option<BTreeMap<String, String>>,
    primary_key: Field,
    primary_key_file: Field,
    primary_key_env: Field,
    secondary_key: Field,
    secondary_key_file: Field,
    secondary_key_env: Field,
    storage: Option<Spanned<RawStorage>>,
    service: Option<Spanned<bool>>,
    identity: Field,
    client_id: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    account: Option<Spanned<String>>,
    endpoint: Field,
    kind: Field,
    resource_id: Field,
    key: Field,
    key_file: Field,
    key_env: Field,
    sas: Field,
    sas_file: Field,
    sas_env: Field,
    identity: Field,
    client_id: Field,
    container: Field,
}

/// Reads and validates the accounts file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: None,
        field: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    let mut config = parse(path, &text)?;
    if holds_inline_secret(&text)
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        config.warnings.push(format!(
            "{} holds a key or SAS token and is readable by other users (mode {:o}); \
             run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        ));
    }
    Ok(config)
}

fn holds_inline_secret(text: &str) -> bool {
    text.lines().any(|l| {
        let key = l.split('=').next().unwrap_or("").trim();
        matches!(key, "primary_key" | "secondary_key" | "key" | "sas")
    })
}

/// Parses config text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: e.span().map(|s| ctx.line_of(s.start)),
        field: None,
        message: e.message().trim().to_string(),
    })?;
    let mut accounts = Vec::new();
    let mut seen = HashSet::new();
    for acct in raw.account {
        let span = acct.span();
        let acct = acct.into_inner();
        let a = ctx.account(acct, span.start)?;
        if !seen.insert(a.name.clone()) {
            return Err(ctx.err(
                span.start,
                "name",
                format!("account `{}` is listed twice", a.name),
            ));
        }
        accounts.push(a);
    }
    let discovery = match raw.discovery {
        Some(d) => {
            let at = d.span().start;
            Some(ctx.discovery(d.into_inner(), at)?)
        }
        None => None,
    };
    Ok(Config {
        accounts,
        discovery,
        warnings: Vec::new(),
    })
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, offset: usize, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            line: Some(self.line_of(offset)),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    fn field_err(
        &self,
        f: &Spanned<String>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.err(f.span().start, field, message)
    }

    fn account(&self, raw: RawAccount, at: usize) -> Result<AccountConfig, ConfigError> {
        let name = raw
            .name
            .ok_or_else(|| self.err(at, "name", "every [[account]] needs a name"))?;
        if !valid_account_name(name.get_ref()) {
            return Err(self.field_err(
                &name,
                "name",
                format!(
                    "`{}` is not a Batch account name (3-24 lowercase letters and digits)",
                    name.get_ref()
                ),
            ));
        }
        let service_url = match &raw.endpoint {
            Some(e) if e.get_ref().contains("://") => Some(self.http_url(e, "endpoint")?),
            Some(e) => ServiceConfig::url_of(e.get_ref()),
            None => None,
        };
        let endpoint = raw.endpoint.map(|e| host_only(e.get_ref()));
        // Without an endpoint, the public cloud's name for it.
        let service_url = service_url.or_else(|| {
            let loc = raw.location.as_ref()?.get_ref();
            Some(format!("https://{}.{loc}.batch.azure.com", name.get_ref()))
        });
        let identity = match raw.identity {
            Some(kind) => Some(
                Identity::parse(kind.get_ref(), raw.client_id.map(Spanned::into_inner))
                    .map_err(|m| self.field_err(&kind, "identity", m))?,
            ),
            None if raw.client_id.is_some() => {
                return Err(self.err(
                    at,
                    "client_id",
                    "client_id needs identity = \"managed-identity\"",
                ));
            }
            None => None,
        };
        let primary_key = self.secret(
            raw.primary_key,
            raw.primary_key_file,
            raw.primary_key_env,
            "primary_key",
        )?;
        let secondary_key = self.secret(
            raw.secondary_key,
            raw.secondary_key_file,
            raw.secondary_key_env,
            "secondary_key",
        )?;
        let storage = match raw.storage {
            Some(s) => {
                let at = s.span().start;
                Some(self.storage(s.into_inner(), at)?)
            }
            None => None,
        };
        Ok(AccountConfig {
            source: format!("{}:{}", self.path.display(), self.line_of(at)),
            arm_body: None,
            unread: Unread::default(),
            name: name.into_inner(),
            endpoint,
            location: raw.location.map(Spanned::into_inner),
            subscription_id: raw.subscription_id.map(Spanned::into_inner),
            resource_group: raw.resource_group.map(Spanned::into_inner),
            tags: raw.tags,
            primary_key,
            secondary_key,
            storage,
            service: ServiceConfig {
                // Without an endpoint, the public cloud's name for it.
                url: service_url,
                enabled: raw.service.is_none_or(Spanned::into_inner),
                identity,
                task_token: None,
            },
        })
    }

    fn storage(&self, raw: RawStorage, at: usize) -> Result<StorageConfig, ConfigError> {
        let account = raw.account.ok_or_else(|| {
            self.err(
                at,
                "storage.account",
                "[account.storage] needs the storage account name",
            )
        })?;
        if !valid_account_name(account.get_ref()) {
            return Err(self.field_err(
                &account,
                "storage.account",
                format!(
                    "`{}` is not a storage account name (3-24 lowercase letters and digits)",
                    account.get_ref()
                ),
            ));
        }
        let endpoint = match raw.endpoint {
            Some(e) => self.http_url(&e, "storage.endpoint")?,
            None => format!("https://{}.blob.core.windows.net", account.get_ref()),
        };
        let key = self.secret(raw.key, raw.key_file, raw.key_env, "storage.key")?;
        let sas = self.secret(raw.sas, raw.sas_file, raw.sas_env, "storage.sas")?;
        let identity = self.identity(raw.identity, raw.client_id, "storage")?;
        let credential = match (key, sas, identity) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(self.err(
                    at,
                    "storage.key",
                    "give one credential: a key, a SAS token or an identity",
                ));
            }
            (None, None, Some(identity)) => Credential::Identity(identity),
            (Some(k), None, None) => {
                if base64::engine::general_purpose::STANDARD
                    .decode(k.expose())
                    .is_err()
                {
                    return Err(self.err(at, "storage.key", "the shared key is not valid base64"));
                }
                Credential::SharedKey(k)
            }
            (None, Some(s), None) => {
                Credential::Sas(Secret::new(s.expose().trim_start_matches('?')))
            }
            (None, None, None) => {
                return Err(self.err(
                    at,
                    "storage.key",
                    "storage needs a credential: key, key_file, key_env, sas, sas_file, sas_env \
                     or identity",
                ));
            }
        };
        if let Some(c) = &raw.container
            && !valid_container_name(c.get_ref())
        {
            return Err(self.field_err(
                c,
                "storage.container",
                format!(
                    "`{}` is not a container name (3-63 of a-z, 0-9, -)",
                    c.get_ref()
                ),
            ));
        }
        Ok(StorageConfig {
            account: account.into_inner(),
            endpoint,
            kind: raw.kind.map(Spanned::into_inner),
            resource_id: raw.resource_id.map(Spanned::into_inner),
            credential,
            container: raw.container.map(Spanned::into_inner),
        })
    }

    fn discovery(&self, raw: RawDiscovery, at: usize) -> Result<DiscoveryConfig, ConfigError> {
        let mut d = DiscoveryConfig::new(
            raw.subscription.map(Spanned::into_inner),
            raw.resource_group.map(Spanned::into_inner),
        );
        if d.resource_group.is_some() && d.subscription.is_none() {
            return Err(self.err(
                at,
                "discovery.resource_group",
                "a resource group needs its `subscription`",
            ));
        }
        d.identity = self
            .identity(raw.identity, raw.client_id, "discovery")?
            .unwrap_or(Identity::Auto);
        if let Some(e) = raw.resource_manager {
            d.resource_manager = self.http_url(&e, "discovery.resource_manager")?;
        }
        Ok(d)
    }

    /// `identity = "..."` with an optional `client_id` (of a user-assigned managed identity).
    fn identity(
        &self,
        kind: Field,
        client_id: Field,
        section: &str,
    ) -> Result<Option<Identity>, ConfigError> {
        let Some(kind) = kind else {
            return match client_id {
                Some(c) => Err(self.field_err(
                    &c,
                    &format!("{section}.client_id"),
                    "needs `identity = \"managed-identity\"`",
                )),
                None => Ok(None),
            };
        };
        Identity::parse(kind.get_ref(), client_id.map(Spanned::into_inner))
            .map(Some)
            .map_err(|e| self.field_err(&kind, &format!("{section}.identity"), e))
    }

    /// An http(s) endpoint without a query, returned without a trailing slash.
    fn http_url(&self, e: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(e.get_ref())
            .map_err(|err| self.field_err(e, field, format!("not a URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(self.field_err(
                e,
                field,
                "must be an http(s) URL without a query (put a SAS token in `sas`)",
            ));
        }
        Ok(e.get_ref().trim_end_matches('/').to_string())
    }

    /// Resolves one secret given inline, as a file or as an environment variable.
    fn secret(
        &self,
        inline: Field,
        file: Field,
        env: Field,
        field: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        let given = [inline.is_some(), file.is_some(), env.is_some()];
        if given.iter().filter(|&&g| g).count() > 1 {
            let at = [&inline, &file, &env]
                .iter()
                .filter_map(|f| f.as_ref().map(|s| s.span().start))
                .max()
                .unwrap_or(0);
            return Err(self.err(
                at,
                field,
                format!("give only one of `{field}`, `{field}_file` and `{field}_env`"),
            ));
        }
        let given_at = [&inline, &file, &env]
            .iter()
            .filter_map(|f| f.as_ref().map(|s| s.span().start))
            .max();
        let value = if let Some(v) = inline {
            v.into_inner()
        } else if let Some(f) = file {
            let name = format!("{field}_file");
            std::fs::read_to_string(f.get_ref()).map_err(|e| {
                self.field_err(&f, &name, format!("cannot read {}: {e}", f.get_ref()))
            })?
        } else if let Some(e) = env {
            let name = format!("{field}_env");
            std::env::var(e.get_ref()).map_err(|_| {
                self.field_err(
                    &e,
                    &name,
                    format!("environment variable {} is not set", e.get_ref()),
                )
            })?
        } else {
            return Ok(None);
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(ConfigError {
                path: self.path.to_owned(),
                line: given_at.map(|at| self.line_of(at)),
                field: Some(field.to_string()),
                message: "is empty".into(),
            });
        }
        Ok(Some(Secret::new(value)))
    }
}

/// Batch and storage account names: 3-24 lowercase letters and digits.
pub fn valid_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn valid_container_name(s: &str) -> bool {
    matches!(s, "$root" | "$logs" | "$web")
        || ((3..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--"))
}

/// `https://x.batch.azure.com/` -> `x.batch.azure.com`, as ARM shows `accountEndpoint`.
pub fn host_only(endpoint: &str) -> String {
    let s = endpoint.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/batchfs/accounts.toml"), text)
    }

    #[test]
    fn full_account_parses() {
        let c = p(&format!(
            r#"
[[account]]
name = "demobatch"
endpoint = "https://demobatch.westeurope.batch.azure.com/"
location = "westeurope"
primary_key = "pk"
[account.storage]
account = "devstoreaccount1"
endpoint = "http://127.0.0.1:10000/devstoreaccount1/"
key = "{KEY}"
container = "input"
"#
        ))
        .unwrap();
        let a = &c.accounts[0];
        assert_eq!(
            a.endpoint.as_deref(),
            Some("demobatch.westeurope.batch.azure.com")
        );
        let s = a.storage.as_ref().unwrap();
        assert_eq!(s.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(s.container.as_deref(), Some("input"));
        assert!(matches!(s.credential, Credential::SharedKey(_)));
        assert!(a.secondary_key.is_none());
        // No secret in Debug output.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(KEY) && !dbg.contains("\"pk\""), "{dbg}");
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let e = p("[[account]]\nname = \"abc\"\nkee = \"x\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("kee"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/batchfs/accounts.toml:3"),
            "{e}"
        );
    }

    #[test]
    fn bad_name_is_reported_on_its_line() {
        let e = p("\n[[account]]\nname = \"Bad_Name\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.field.as_deref(), Some("name"));
    }

    #[test]
    fn storage_needs_credential_and_valid_key() {
        let e =
            p("[[account]]\nname = \"abc\"\n[account.storage]\naccount = \"sto\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("storage.key"));
        let e = p("[[account]]\nname = \"abc\"\n[account.storage]\naccount = \"sto\"\nkey = \"not base64!\"\n")
            .unwrap_err();
        assert!(e.message.contains("base64"));
        assert!(!e.to_string().contains("not base64!"));
    }

    #[test]
    fn secret_from_env_and_missing_file() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("BATCHFS_TEST_SAS", "?sv=1&sig=abc") };
        let c = p("[[account]]\nname = \"abc\"\n[account.storage]\naccount = \"sto\"\nsas_env = \"BATCHFS_TEST_SAS\"\n")
            .unwrap();
        match &c.accounts[0].storage.as_ref().unwrap().credential {
            Credential::Sas(s) => assert_eq!(s.expose(), "sv=1&sig=abc"),
            other => panic!("{other:?}"),
        }
        let e =
            p("[[account]]\nname = \"abc\"\nprimary_key_file = \"/nonexistent/k\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("primary_key_file"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn duplicate_and_conflicting() {
        let e = p("[[account]]\nname = \"abc\"\n[[account]]\nname = \"abc\"\n").unwrap_err();
        assert!(e.message.contains("twice"));
        let e = p("[[account]]\nname = \"abc\"\nprimary_key = \"a\"\nprimary_key_env = \"B\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4));
        let e = p("[[account]]\nname = \"abc\"\nsecondary_key = \" \"\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (Some(3), "is empty"));
    }

    #[test]
    fn the_batch_service_endpoint_credential_and_switch() {
        let c = p("[[account]]\nname = \"abc\"\nendpoint = \"abc.westeurope.batch.azure.com/\"\n")
            .unwrap();
        let svc = &c.accounts[0].service;
        assert_eq!(
            svc.url.as_deref(),
            Some("https://abc.westeurope.batch.azure.com")
        );
        assert!(svc.enabled && svc.identity.is_none());
        let c = p(
            "[[account]]\nname = \"abc\"\nendpoint = \"http://127.0.0.1:8443/\"\n\
                   identity = \"azure-cli\"\nservice = false\n",
        )
        .unwrap();
        let a = &c.accounts[0];
        assert_eq!(a.service.url.as_deref(), Some("http://127.0.0.1:8443"));
        assert_eq!(
            a.endpoint.as_deref(),
            Some("127.0.0.1:8443"),
            "accountEndpoint is a host"
        );
        assert_eq!(a.service.identity, Some(Identity::Cli));
        assert!(!a.service.enabled);
        let e = p("[[account]]\nname = \"abc\"\nidentity = \"msi\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("identity")));
        let e = p("[[account]]\nname = \"abc\"\nendpoint = \"ftp://x/\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("endpoint")));
        let e = p("[[account]]\nname = \"abc\"\nservice = \"no\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
    }
}
