//! Helpers for scripts/bench.sh, over the project's own blob client:
//!
//!   benchtool put <container> <name> <bytes>           upload pseudo-random bytes
//!   benchtool put-many <container> <prefix> <dirs> <per-dir>   many 1-byte blobs
//!   benchtool ceiling <chunk> <parallel> <container> <name>...  read blobs directly with
//!                                                       parallel ranged GETs; prints seconds
//!   benchtool upload <block> <parallel> <file> <container> <name>   write a local file as
//!                                                       one block blob, with parallel Put
//!                                                       Block and one Put Block List (the
//!                                                       write ceiling); prints seconds
//!   benchtool wait <container> <prefix> <count> <bytes> poll until `count` blobs under
//!                                                       `prefix` hold `bytes` in all
//!   benchtool rm <container> <prefix>                 delete every blob under `prefix`
//!   benchtool gen <file> <bytes>                       write pseudo-random bytes to a file
//!   benchtool list <container> <prefix>                list one directory; prints seconds
//!   benchtool sas                                      an account SAS for reading and writing
//!   benchtool shaper <listen-port> <upstream-port> <delay-ms> <bytes-per-sec>
//!                                                       a TCP proxy adding latency before
//!                                                       each response and capping each
//!                                                       connection's bandwidth
//!
//! The storage account comes from BENCH_ENDPOINT, BENCH_ACCOUNT and BENCH_KEY.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batchfs::accounts::config::StorageConfig;
use batchfs::blob::{self, BlobStore, Condition, HttpBlobStore, RetryPolicy};
use batchfs::secret::Secret;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn store() -> Result<Arc<HttpBlobStore>, String> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let cfg = StorageConfig::with_key(
        &var("BENCH_ACCOUNT")?,
        &var("BENCH_ENDPOINT")?,
        Secret::new(var("BENCH_KEY")?),
    );
    let policy = RetryPolicy {
        deadline: Duration::from_secs(120),
        attempt_timeout: Duration::from_secs(110),
        ..RetryPolicy::default()
    };
    HttpBlobStore::new(&cfg, policy, Default::default())
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}"))
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn ceiling(args: &[String]) -> Result<(), String> {
    let chunk: u64 = arg(args, 2, "chunk")?;
    let parallel: usize = arg(args, 3, "parallel")?;
    let container: String = arg(args, 4, "container")?;
    let names = &args[5..];
    let s = store()?;
    let mut ranges = Vec::new();
    for n in names {
        let size = s.head(&container, n).await.map_err(|e| e.to_string())?.size;
        let mut off = 0;
        while off < size {
            ranges.push((n.clone(), off, chunk.min(size - off)));
            off += chunk;
        }
    }
    let start = Instant::now();
    let total: u64 = futures::stream::iter(ranges)
        .map(|(n, off, len)| {
            let s = s.clone();
            let c = container.clone();
            async move {
                s.get_range(&c, &n, off, len, None)
                    .await
                    .map(|b| b.len() as u64)
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?
        .into_iter()
        .sum();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("ceiling: {} MiB in {secs:.2} s", total >> 20);
    println!("{secs:.3}");
    Ok(())
}

async fn upload(args: &[String]) -> Result<(), String> {
    let block: usize = arg(args, 2, "block")?;
    let parallel: usize = arg(args, 3, "parallel")?;
    let (file, container, name): (String, String, String) = (
        arg(args, 4, "file")?,
        arg(args, 5, "container")?,
        arg(args, 6, "name")?,
    );
    let data = Bytes::from(std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?);
    let s = store()?;
    let start = Instant::now();
    let ids: Vec<String> = (0..data.len().div_ceil(block))
        .map(|i| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("ceiling-{i:08}"))
        })
        .collect();
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let (s, c, n) = (s.clone(), container.clone(), name.clone());
            let part = data.slice(i * block..((i + 1) * block).min(data.len()));
            async move { s.put_block(&c, &n, id, part).await }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    s.put_block_list(&container, &name, &ids, Condition::None, &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("upload: {} MiB in {secs:.2} s", data.len() >> 20);
    println!("{secs:.3}");
    Ok(())
}

/// Waits until storage holds what a mount wrote (for mounts whose close returns before the
/// upload is done).
async fn wait(args: &[String]) -> Result<(), String> {
    let (container, prefix): (String, String) =
        (arg(args, 2, "container")?, arg(args, 3, "prefix")?);
    let (count, bytes): (usize, u64) = (arg(args, 4, "count")?, arg(args, 5, "bytes")?);
    let s = store()?;
    let start = Instant::now();
    loop {
        let page = blob::list_all(s.as_ref(), &container, &prefix, None)
            .await
            .map_err(|e| e.to_string())?;
        let total: u64 = page.blobs.iter().map(|b| b.props.size).sum();
        if page.blobs.len() >= count && total >= bytes {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(1800) {
            return Err(format!(
                "{prefix}: {} blobs, {total} bytes after 30 min",
                page.blobs.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shaper(args: &[String]) -> Result<(), String> {
    let listen: u16 = arg(args, 2, "listen port")?;
    let upstream: u16 = arg(args, 3, "upstream port")?;
    let delay = Duration::from_millis(arg(args, 4, "delay")?);
    let rate: f64 = arg(args, 5, "rate")?;
    let l = tokio::net::TcpListener::bind(("127.0.0.1", listen))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let (client, _) = l.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let asked = Arc::new(AtomicBool::new(false));
            let up = pump(cr, sw, rate, None, asked.clone());
            let down = pump(sr, cw, rate, Some(delay), asked);
            let _ = tokio::join!(up, down);
        });
    }
}

/// Copies one direction, at most `rate` bytes per second. The request direction sets
/// `asked`; the response direction waits `delay` before the first bytes after each request.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: f64,
    delay: Option<Duration>,
    asked: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut next = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match delay {
            None => asked.store(true, Ordering::Release),
            Some(d) => {
                if asked.swap(false, Ordering::AcqRel) {
                    tokio::time::sleep(d).await;
                    next = next.max(Instant::now());
                }
            }
        }
        next = next.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(next.into()).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("put") => {
            let (c, n): (String, String) = (arg(&args, 2, "container")?, arg(&args, 3, "name")?);
            let size: usize = arg(&args, 4, "bytes")?;
            let s = store()?;
            blob::ensure_container(s.as_ref(), &c)
                .await
                .map_err(|e| e.to_string())?;
            let data = Bytes::from(pseudo_random(size, n.len() as u64 * 7919));
            s.put(&c, &n, data, Condition::None, &BTreeMap::new())
                .await
                .map_err(|e| e.to_string())?;
        }
        Some("put-many") => {
            let (c, prefix): (String, String) =
                (arg(&args, 2, "container")?, arg(&args, 3, "prefix")?);
            let (dirs, per): (usize, usize) = (arg(&args, 4, "dirs")?, arg(&args, 5, "per-dir")?);
            let s = store()?;
            blob::ensure_container(s.as_ref(), &c)
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = (0..dirs)
                .flat_map(|d| (0..per).map(move |f| (d, f)))
                .map(|(d, f)| {
                    if dirs == 1 {
                        format!("{prefix}/f{f:05}")
                    } else {
                        format!("{prefix}/d{d:03}/f{f:05}")
                    }
                })
                .collect();
            futures::stream::iter(names)
                .map(|n| {
                    let (s, c) = (s.clone(), c.clone());
                    async move {
                        s.put(
                            &c,
                            &n,
                            Bytes::from_static(b"x"),
                            Condition::None,
                            &BTreeMap::new(),
                        )
                        .await
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
        }
        Some("ceiling") => ceiling(&args).await?,
        Some("upload") => upload(&args).await?,
        Some("wait") => wait(&args).await?,
        Some("rm") => {
            let (c, p): (String, String) = (arg(&args, 2, "container")?, arg(&args, 3, "prefix")?);
            let s = store()?;
            let page = blob::list_all(s.as_ref(), &c, &p, None)
                .await
                .map_err(|e| e.to_string())?;
            futures::stream::iter(page.blobs)
                .map(|b| {
                    let (s, c) = (s.clone(), c.clone());
                    async move { s.delete(&c, &b.name, Condition::None).await }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
        }
        Some("gen") => {
            let (file, size): (String, usize) = (arg(&args, 2, "file")?, arg(&args, 3, "bytes")?);
            let mut f = std::fs::File::create(&file).map_err(|e| format!("{file}: {e}"))?;
            let mut left = size;
            let mut seed = 1;
            while left > 0 {
                let n = left.min(64 << 20);
                std::io::Write::write_all(&mut f, &pseudo_random(n, seed))
                    .map_err(|e| format!("{file}: {e}"))?;
                left -= n;
                seed += 1;
            }
        }
        Some("list") => {
            let (c, p): (String, String) = (arg(&args, 2, "container")?, arg(&args, 3, "prefix")?);
            let s = store()?;
            let start = Instant::now();
            let page = blob::list_all(s.as_ref(), &c, &p, Some("/"))
                .await
                .map_err(|e| e.to_string())?;
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "list: {} entries in {secs:.3} s",
                page.blobs.len() + page.prefixes.len()
            );
            println!("{secs:.3}");
        }
        Some("shaper") => shaper(&args).await?,
        Some("sas") => {
            let key = Secret::new(std::env::var("BENCH_KEY").map_err(|_| "BENCH_KEY is not set")?);
            let account = std::env::var("BENCH_ACCOUNT").map_err(|_| "BENCH_ACCOUNT is not set")?;
            println!(
                "{}",
                blob::auth::account_sas(&account, &key, "racwdl", "2099-01-01T00:00:00Z")?
            );
        }
        _ => return Err("usage: see the top of examples/benchtool.rs".into()),
    }
    Ok(())
}
