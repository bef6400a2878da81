//! Uploads a local directory tree to a storage account: each top-level directory becomes a
//! container, each file below it a blob named by its relative path. Used by scripts/demo.sh
//! to fill Azurite with sample data (the mount itself is read-only for now).
//!
//! usage: SEED_ENDPOINT=http://127.0.0.1:10000/acct SEED_ACCOUNT=acct SEED_KEY=... \
//!        cargo run --example seed -- <dir>

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use batchfs::accounts::config::StorageConfig;
use batchfs::blob::{self, BlobStore, Condition, HttpBlobStore, RetryPolicy};
use batchfs::secret::Secret;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let cfg = StorageConfig::with_key(
        &var("SEED_ACCOUNT")?,
        &var("SEED_ENDPOINT")?,
        Secret::new(var("SEED_KEY")?),
    );
    let root = PathBuf::from(std::env::args().nth(1).ok_or("usage: seed <dir>")?);
    let store = HttpBlobStore::new(&cfg, RetryPolicy::default(), Default::default())
        .map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", root.display()))? {
        let dir = entry.map_err(|e| e.to_string())?.path();
        let Some(container) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        blob::ensure_container(&store, &container)
            .await
            .map_err(|e| format!("container {container}: {e}"))?;
        let mut files = Vec::new();
        files_under(&dir, &mut files).map_err(|e| e.to_string())?;
        for f in files {
            let name = f
                .strip_prefix(&dir)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            let data = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            store
                .put(
                    &container,
                    &name,
                    data.into(),
                    Condition::None,
                    &BTreeMap::new(),
                )
                .await
                .map_err(|e| format!("{container}/{name}: {e}"))?;
        }
        println!("seeded {} / {container}", cfg.account);
    }
    Ok(())
}
