//! Entra ID tokens, for Azure Resource Manager (discovery) and for blob storage.
//!
//! The credentials themselves come from `azure_identity`; this module picks one, caches its
//! token and renews it well before expiry, and bounds every fetch so that a token endpoint
//! that does not answer gives an error (EIO at the FUSE edge), never a hang.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use azure_core::http::RetryOptions;
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};

use crate::secret::Secret;

pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The Batch resource; the double slash is what Microsoft's SDKs send.
pub const BATCH_SCOPE: &str = "https://batch.core.windows.net//.default";
pub const ARM_ENDPOINT: &str = "https://management.azure.com";

/// A token is renewed once it has less than this left, so no request carries one that
/// expires in flight.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A service principal from the environment if one is set, else a managed identity if
    /// the environment names one, else the Azure CLI if `az` is installed, else IMDS.
    Auto,
    /// The node's managed identity; `Some(client id)` picks a user-assigned one.
    Managed(Option<String>),
    /// `az account get-access-token` of the CLI's logged-in account.
    Cli,
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`.
    ServicePrincipal,
}

impl Identity {
    /// `auto`, `managed-identity`, `azure-cli` or `service-principal`.
    pub fn parse(kind: &str, client_id: Option<String>) -> Result<Self, String> {
        match kind {
            "auto" if client_id.is_none() => Ok(Identity::Auto),
            "auto" | "managed-identity" => Ok(Identity::Managed(client_id)),
            _ if client_id.is_some() => {
                Err("a client id is only used with `managed-identity`".to_string())
            }
            "azure-cli" => Ok(Identity::Cli),
            "service-principal" => Ok(Identity::ServicePrincipal),
            other => Err(format!(
                "`{other}` is not an identity (use auto, managed-identity, azure-cli or \
                 service-principal)"
            )),
        }
    }

    fn resolve(&self) -> Identity {
        if *self != Identity::Auto {
            return self.clone();
        }
        let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
        if set("AZURE_CLIENT_SECRET") && set("AZURE_CLIENT_ID") && set("AZURE_TENANT_ID") {
            Identity::ServicePrincipal
        } else if set("IDENTITY_ENDPOINT") || set("MSI_ENDPOINT") {
            Identity::Managed(None)
        } else if on_path("az") {
            Identity::Cli
        } else {
            Identity::Managed(None)
        }
    }

    /// Compares as configured (`Auto` stays `Auto`), for reusing a token source.
    fn same_as(&self, other: &Identity) -> bool {
        self == other || self.resolve() == other.resolve()
    }

    fn credential(&self) -> Result<Arc<dyn TokenCredential>, String> {
        let managed = |client_id: Option<String>| {
            let mut options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(UserAssignedId::ClientId),
                ..Default::default()
            };
            // Our own deadline bounds the fetch; a failing endpoint should say so now
            // rather than after retries that outlast it.
            options.client_options.retry = RetryOptions::none();
            ManagedIdentityCredential::new(Some(options)).map_err(|e| e.to_string())
        };
        let cred: Arc<dyn TokenCredential> = match self.resolve() {
            Identity::Managed(client_id) => managed(client_id)?,
            // `resolve` never gives Auto back; IMDS would be its last resort anyway.
            Identity::Auto => managed(None)?,
            Identity::Cli => AzureCliCredential::new(None).map_err(|e| e.to_string())?,
            Identity::ServicePrincipal => {
                let var = |v: &str| {
                    std::env::var(v).map_err(|_| format!("service principal: {v} is not set"))
                };
                ClientSecretCredential::new(
                    &var("AZURE_TENANT_ID")?,
                    var("AZURE_CLIENT_ID")?,
                    var("AZURE_CLIENT_SECRET")?.into(),
                    None,
                )
                .map_err(|e| e.to_string())?
            }
        };
        Ok(cred)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Auto => f.write_str("auto"),
            Identity::Managed(None) => f.write_str("managed identity"),
            Identity::Managed(Some(id)) => write!(f, "managed identity {id}"),
            Identity::Cli => f.write_str("Azure CLI"),
            Identity::ServicePrincipal => f.write_str("service principal"),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(program).is_file()))
}

/// Tokens for one scope from one identity, cached until shortly before they expire.
pub struct TokenSource {
    identity: Identity,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    cached: tokio::sync::Mutex<Option<(Secret, SystemTime)>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSource({}, {})", self.identity, self.scope)
    }
}

impl TokenSource {
    pub fn new(identity: &Identity, scope: &str) -> Result<Self, String> {
        Ok(TokenSource {
            // As resolved, so messages name the credential really in use.
            identity: identity.resolve(),
            credential: identity
                .credential()
                .map_err(|e| format!("{identity}: {e}"))?,
            scope: scope.to_string(),
            cached: tokio::sync::Mutex::new(None),
        })
    }

    pub fn serves(&self, identity: &Identity) -> bool {
        self.identity.same_as(identity)
    }

    /// A token valid for at least a few more minutes.
    pub async fn token(&self) -> Result<Secret, String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = &*cached
            && SystemTime::now() + RENEW_BEFORE < *expires
        {
            return Ok(token.clone());
        }
        let scopes = [self.scope.as_str()];
        let fetch = self.credential.get_token(&scopes, None);
        let token = match tokio::time::timeout(FETCH_TIMEOUT, fetch).await {
            Ok(Ok(t)) => t,
            // The error text of azure_identity names the credential and the reason; it
            // carries no token.
            Ok(Err(e)) => return Err(format!("{} token for {}: {e}", self.identity, self.scope)),
            Err(_) => {
                return Err(format!(
                    "{} token for {}: no answer within {} s",
                    self.identity,
                    self.scope,
                    FETCH_TIMEOUT.as_secs()
                ));
            }
        };
        let expires = UNIX_EPOCH
            + Duration::from_secs(u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0));
        let secret = Secret::new(token.token.secret());
        *cached = Some((secret.clone(), expires));
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names() {
        assert_eq!(Identity::parse("auto", None), Ok(Identity::Auto));
        assert_eq!(
            Identity::parse("auto", Some("c1".into())),
            Ok(Identity::Managed(Some("c1".into())))
        );
        assert_eq!(Identity::parse("azure-cli", None), Ok(Identity::Cli));
        assert!(Identity::parse("azure-cli", Some("c1".into())).is_err());
        assert!(Identity::parse("msi", None).unwrap_err().contains("msi"));
    }
}
