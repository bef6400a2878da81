//! Which accounts a mount shows: the accounts file, Azure Resource Manager discovery, and on
//! a Batch compute node the node's own account (`AZ_BATCH_ACCOUNT_NAME`/`_URL`).

use std::path::PathBuf;

use clap::Args;

use crate::accounts::config::{self, AccountConfig, Config, DiscoveryConfig, ServiceConfig};
use crate::accounts::discovery::{self, Arm};
use crate::accounts::identity::Identity;
use crate::secret::Secret;

#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Accounts file (TOML). Default /etc/batchfs/accounts.toml; it may be absent when
    /// --subscription or --node give the accounts.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Discover the Batch accounts of this subscription through Azure Resource Manager.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Only discover accounts in this resource group (needs --subscription).
    #[arg(long, requires = "subscription")]
    pub resource_group: Option<String>,
    /// Entra ID identity for discovery: auto, managed-identity, azure-cli or service-principal.
    #[arg(long)]
    pub identity: Option<String>,
    /// Client id of the user-assigned managed identity to use.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Azure Resource Manager endpoint (other clouds, or a test server).
    #[arg(long)]
    pub arm_endpoint: Option<String>,
    /// On a Batch compute node: mount the node's own account (AZ_BATCH_ACCOUNT_NAME and
    /// AZ_BATCH_ACCOUNT_URL), its storage from the accounts file or the node's identity.
    #[arg(long)]
    pub node: bool,
}

/// The node's account, from the variables Batch sets for every task.
#[derive(Debug, Clone)]
struct NodeAccount {
    name: String,
    endpoint: Option<String>,
    /// `AZ_BATCH_ACCOUNT_URL` as given (with its scheme).
    url: Option<String>,
    /// The task's `AZ_BATCH_AUTHENTICATION_TOKEN`, job-scoped.
    task_token: Option<Secret>,
}

impl NodeAccount {
    /// What the node's environment adds to its account's description.
    fn apply(&self, a: &mut AccountConfig) {
        if a.service.url.is_none() {
            a.service.url = self.url.as_deref().and_then(ServiceConfig::url_of);
        }
        a.service.task_token = self.task_token.clone();
        // Discovery's identity found the account; it may hold no role on the Batch service,
        // while the task's token surely reads its own job: prefer the token then.
        if self.task_token.is_some() && a.arm_body.is_some() {
            a.service.identity = None;
        }
    }
}

pub struct Sources {
    config: Config,
    config_path: PathBuf,
    arm: Option<Arm>,
    node: Option<NodeAccount>,
}

impl Sources {
    /// Reads the accounts file and the flags; nothing is asked of Azure yet.
    pub fn new(args: &SourceArgs) -> Result<Sources, String> {
        let explicit = args.config.is_some();
        let config_path = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
        // Any discovery flag means the accounts may come from Azure alone.
        let others = args.subscription.is_some()
            || args.identity.is_some()
            || args.arm_endpoint.is_some()
            || args.node;
        let config = if !explicit && !config_path.exists() {
            if !others {
                return Err(format!(
                    "{} does not exist: write an accounts file there (or name one with \
                     --config), or find accounts with --subscription or --node",
                    config_path.display()
                ));
            }
            Config::default()
        } else {
            config::load(&config_path).map_err(|e| e.to_string())?
        };
        let node = match args.node {
            true => Some(node_account()?),
            false => None,
        };
        let discovery = discovery_scope(args, config.discovery.clone(), node.is_some())?;
        let arm = match &discovery {
            Some(d) => Some(Arm::new(d).map_err(|e| format!("discovery: {e}"))?),
            None => None,
        };
        if config.accounts.is_empty() && arm.is_none() {
            return Err(format!(
                "no accounts: {} lists none; add [[account]] or [discovery], or use \
                 --subscription or --node",
                config_path.display()
            ));
        }
        Ok(Sources {
            config,
            config_path,
            arm,
            node,
        })
    }

    pub fn warnings(&self) -> &[String] {
        &self.config.warnings
    }

    /// Whether the accounts can change while mounted: discovery is in use, and not just
    /// standing by for a node whose account the accounts file describes.
    pub fn discovers(&self) -> bool {
        let node_from_file = self
            .node
            .as_ref()
            .is_some_and(|n| self.config.accounts.iter().any(|a| a.name == n.name));
        self.arm.is_some() && !node_from_file
    }

    /// The accounts to show now.
    pub async fn accounts(&self) -> Result<Vec<AccountConfig>, String> {
        let Some(node) = &self.node else {
            let found = match &self.arm {
                Some(arm) => arm
                    .discover(None)
                    .await
                    .map_err(|e| format!("discovery: {e}"))?,
                None => Vec::new(),
            };
            return discovery::merge(&self.config.accounts, found);
        };
        if let Some(a) = self.config.accounts.iter().find(|a| a.name == node.name) {
            let mut a = a.clone();
            a.endpoint = a.endpoint.or_else(|| node.endpoint.clone());
            node.apply(&mut a);
            return Ok(vec![a]);
        }
        let found = match &self.arm {
            Some(arm) => arm.discover(Some(&node.name)).await,
            None => Err("no discovery".into()),
        };
        match found {
            Ok(mut v) if !v.is_empty() => {
                v.iter_mut().for_each(|a| node.apply(a));
                Ok(v)
            }
            Ok(_) => Err(format!(
                "--node: account {} is not in {} and the node's identity sees no Batch \
                 account of that name",
                node.name,
                self.config_path.display()
            )),
            Err(e) => Err(format!(
                "--node: account {} is not in {}, and discovery with the node's identity \
                 failed: {e}",
                node.name,
                self.config_path.display()
            )),
        }
    }
}

fn node_account() -> Result<NodeAccount, String> {
    let name = std::env::var("AZ_BATCH_ACCOUNT_NAME")
        .map_err(|_| "--node: AZ_BATCH_ACCOUNT_NAME is not set (not on a Batch node?)")?;
    let name = name.trim().to_ascii_lowercase();
    if !config::valid_account_name(&name) {
        return Err(format!(
            "--node: AZ_BATCH_ACCOUNT_NAME `{name}` is not a Batch account name"
        ));
    }
    let url = std::env::var("AZ_BATCH_ACCOUNT_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let endpoint = url.as_deref().map(config::host_only);
    let task_token = std::env::var("AZ_BATCH_AUTHENTICATION_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Secret::new(t.trim()));
    Ok(NodeAccount {
        name,
        endpoint,
        url,
        task_token,
    })
}

/// Discovery settings: the file's `[discovery]`, overridden by flags. A node always may
/// discover (with its own identity) in case the file does not describe its account.
fn discovery_scope(
    args: &SourceArgs,
    from_file: Option<DiscoveryConfig>,
    node: bool,
) -> Result<Option<DiscoveryConfig>, String> {
    let wanted = from_file.is_some()
        || args.subscription.is_some()
        || args.identity.is_some()
        || args.arm_endpoint.is_some()
        || node;
    if !wanted {
        return Ok(None);
    }
    let mut d = from_file.unwrap_or_else(|| DiscoveryConfig::new(None, None));
    if let Some(s) = &args.subscription {
        d.subscription = Some(s.clone());
        d.resource_group = args.resource_group.clone();
    }
    if args.identity.is_some() || args.client_id.is_some() {
        let kind = args.identity.as_deref().unwrap_or("auto");
        d.identity = Identity::parse(kind, args.client_id.clone())
            .map_err(|e| format!("--identity: {e}"))?;
    }
    if let Some(e) = &args.arm_endpoint {
        let url = reqwest::Url::parse(e).map_err(|err| format!("--arm-endpoint {e}: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--arm-endpoint {e}: not an http(s) URL"));
        }
        d.resource_manager = e.trim_end_matches('/').to_string();
    }
    Ok(Some(d))
}
