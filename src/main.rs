//! batchfs: Azure Batch accounts and their linked blob storage as one FUSE mount.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use batchfs::accounts::sources::SourceArgs;
use batchfs::{MountArgs, daemon, helper};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "batchfs",
    version,
    about = "Mount Azure Batch accounts and their storage as files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the Batch accounts (accounts file, discovery or the node's own) under MOUNTPOINT.
    Mount(MountArgs),
    /// Unmount a batchfs mount.
    Unmount {
        /// Detach now even if files are open (the daemon exits once they are closed).
        #[arg(long)]
        lazy: bool,
        mountpoint: PathBuf,
    },
    /// Print the running counters of a mount (requests, bytes, cache hits, ...).
    Stats { mountpoint: PathBuf },
    /// List the accounts (from the same sources as mount) and check that their storage answers.
    Accounts(SourceArgs),
}

fn main() -> ExitCode {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let lossy: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into()).collect();
    if helper::is_helper(&lossy) {
        match helper::to_mount_args(&lossy) {
            Ok(translated) => argv = translated.into_iter().map(OsString::from).collect(),
            Err(e) => {
                eprintln!("mount.fuse.batchfs: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cli = Cli::parse_from(&argv);
    let result = match cli.command {
        Command::Mount(args) => daemon::mount(args, &argv[1..]),
        Command::Unmount { lazy, mountpoint } => daemon::unmount(&mountpoint, lazy),
        Command::Accounts(sources) => daemon::accounts(&sources),
        Command::Stats { mountpoint } => daemon::stats(&mountpoint),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("batchfs: {msg}");
            ExitCode::FAILURE
        }
    }
}
