//! batchfs: Azure Batch accounts and their linked blob storage as one FUSE mount.
//!
//! Data flows one way: kernel → [`fuse`] → [`fs`] (namespace) → [`blob`] (storage client).

pub mod account;
pub mod blob;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod secret;

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Accounts file (TOML).
    #[arg(long, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Stay in the foreground (for systemd and debugging); logs go to stderr.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Let other users (e.g. Batch task users) use the mount; `keys` stays owner-only.
    #[arg(long)]
    pub allow_other: bool,
    /// Owner of every file (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file (default: the mounting user's group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Append logs to this file (in the background, logs go nowhere without it).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Seconds a file's size and mtime from storage are trusted.
    #[arg(long, default_value_t = 1.0)]
    pub attr_timeout: f64,
    /// Seconds a directory listing is trusted.
    #[arg(long, default_value_t = 1.0)]
    pub dir_timeout: f64,
    /// Seconds after which a storage operation gives up (and the caller gets EIO).
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    pub mountpoint: PathBuf,
}
