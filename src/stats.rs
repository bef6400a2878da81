//! Running counters of a mount, shown by `batchfs stats MOUNTPOINT`.
//!
//! The daemon serves them as JSON in the file [`STATS_FILE`] at the mount's root. It is not
//! listed (so `ls`, `find` and `cp -r` never see it) and cannot clash with an account name.
//! (A file, not an extended attribute: any tool can read it, and `user.*` attributes are blob
//! metadata.)

use std::sync::atomic::{AtomicU64, Ordering};

pub const STATS_FILE: &str = ".batchfs-stats";

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        impl Stats {
            /// Every counter by name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    list_requests: "List Blobs and List Containers requests sent",
    head_requests: "Get Blob Properties requests sent",
    get_requests: "ranged Get Blob requests sent",
    other_requests: "any other request sent",
    request_micros: "time spent waiting for storage, summed over all requests (µs)",
    bytes_fetched: "bytes received from Get Blob",
    put_requests: "Put Blob, Put Block and Put Block List requests sent",
    bytes_uploaded: "bytes sent by Put Blob and Put Block",
    commits: "files committed (Put Blob or Put Block List)",
    conflicts: "commits refused because the blob changed elsewhere (data kept in a sibling)",
    dirty_bytes: "bytes written by applications and not yet uploaded",
    retries: "attempts repeated after a retryable failure",
    errors: "operations that failed after retries (not counting 404/409/412 answers)",
    service_requests: "requests sent to the Batch service",
    service_bytes: "bytes received from the Batch service's Get File",
    cache_hits: "pages served from the page cache",
    cache_misses: "pages a reader had to fetch (not prefetched)",
    prefetched_pages: "pages fetched ahead of the reader",
    evictions: "pages evicted to stay within the cache budget",
    cache_bytes: "bytes held or reserved by the page cache now",
    disk_hits: "pages served from the disk cache (after their hash matched)",
    disk_misses: "pages of cacheable blobs fetched from storage while the disk cache is on",
    disk_read_bytes: "bytes read from the disk cache",
    disk_written_bytes: "bytes written to the disk cache",
    disk_bytes: "bytes the disk cache holds now (as du counts them, indexes aside)",
    disk_evictions: "1 MiB segments evicted to stay within --disk-cache-size",
    disk_whole: "blobs that came to be held whole (synced, fit for passthrough)",
    disk_fills: "whole-blob fills finished (--disk-cache-fill whole)",
    disk_skipped: "fetches not kept because the disk cache had no room (all of it in use by passthrough)",
    disk_corrupt: "pages dropped because their bytes no longer matched their hash",
    disk_errors: "I/O errors on the disk cache directory",
    passthrough_opens: "opens served by kernel passthrough from the disk cache",
    inodes: "files and directories the mount remembers now (those the kernel holds)",
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` off a gauge, never below zero.
    pub fn sub(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}
