//! Where accounts come from: the accounts file ([`config`]), the compute node's environment and
//! Azure Resource Manager discovery ([`sources`], [`discovery`]), the Entra ID identities that
//! discovery and token-authenticated storage use ([`identity`]), and what the mount shows of
//! an account (`account.json`, `keys`: [`account`]).

pub mod account;
pub mod config;
pub mod discovery;
pub mod identity;
pub mod sources;
