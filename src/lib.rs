//! batchfs: Azure Batch accounts and their linked blob storage as one FUSE mount.
//!
//! Data flows one way: kernel → [`fuse`] → [`fs`] (namespace) → [`cache`] (pages, budget) and
//! [`write`] (drafts, spill) → [`blob`] (storage client). Where accounts come from (config
//! file, compute node, Resource Manager discovery, Entra ID) is [`accounts`]; the mount daemon
//! that ties them together is [`daemon`]. The Batch service (jobs, tasks, pools, nodes and
//! their files) is read through [`batch`].

pub mod accounts;
pub mod batch;
pub mod blob;
pub mod cache;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod helper;
pub mod logging;
pub mod secret;
pub mod stats;
pub mod write;

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    #[command(flatten)]
    pub sources: accounts::sources::SourceArgs,
    /// Seconds between discovery refreshes (new, removed and rotated accounts); 0: never.
    #[arg(long, default_value_t = 300.0)]
    pub refresh: f64,
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
    /// Append logs to this file. Otherwise logs go to stderr: the journal under systemd, and
    /// nowhere for a daemon started in the background from a shell.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Seconds a file's size and mtime from storage are trusted.
    #[arg(long, default_value_t = 1.0)]
    pub attr_timeout: f64,
    /// Seconds a directory listing is trusted.
    #[arg(long, default_value_t = 1.0)]
    pub dir_timeout: f64,
    /// Page cache budget shared by all open files (e.g. 256M, 1G; at least 16M).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Requests to storage in flight at once, shared by all files.
    #[arg(long, default_value_t = 16)]
    pub max_requests: usize,
    /// Seconds after which a storage operation gives up (and the caller gets EIO).
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Show no account's Batch service (`jobs/`, `pools/`); per account: `service = false`.
    #[arg(long)]
    pub no_service: bool,
    /// Keep fetched pages in this directory too, below the RAM cache, and across mounts
    /// (e.g. the node's temporary disk). It must be empty or one batchfs made.
    #[arg(long)]
    pub disk_cache: Option<PathBuf>,
    /// Bound on what `--disk-cache` holds (e.g. 20G).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub disk_cache_size: u64,
    /// What the disk cache fetches: `pages` (what readers read) or `whole` (the rest of every
    /// blob read, in the background, if it fits).
    #[arg(long, default_value = "pages")]
    pub disk_cache_fill: cache::FillMode,
    /// Read every file through the daemon, even where the kernel could read a blob the disk
    /// cache holds whole directly (passthrough: Linux 6.9+, as root).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Where uploaded blocks of files being written are kept until their commit (in an
    /// unlinked file, so a crash leaves nothing behind). Default: $TMPDIR or /tmp.
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    pub mountpoint: PathBuf,
}

/// `256M`, `1G`, `512K` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s}: unknown unit (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s}: not a size"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s}: too large"))?;
    if bytes < cache::MIN_BUDGET {
        return Err(format!("{s}: the cache needs at least 16M"));
    }
    Ok(bytes)
}
