//! The deadline of the filesystem operation a storage request is made for.
//!
//! One system call may need several requests in turn (a lookup that lists, then a HEAD; a
//! close that stages, then commits). Each is bounded by `--timeout`, and so is their sum: the
//! FUSE adapter runs every operation within [`within`], and the client never lets a request
//! wait past [`remaining`]. Each transfer that succeeds is [`progress`]: the deadline moves to
//! `--timeout` after it. The bound is on waiting for a storage that does not answer, not on
//! moving a large file over a slow link or committing thousands of blocks. Background work
//! (uploads of sealed blocks) has no operation deadline and is bounded request by request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Clock {
    start: Instant,
    limit: Duration,
    /// Deadline, in ms from `start`.
    deadline_ms: AtomicU64,
}

tokio::task_local! {
    static CLOCK: Arc<Clock>;
}

/// Runs `f` with a deadline `limit` from now.
pub async fn within<F: Future>(limit: Duration, f: F) -> F::Output {
    let clock = Clock {
        start: Instant::now(),
        limit,
        deadline_ms: AtomicU64::new(limit.as_millis() as u64),
    };
    CLOCK.scope(Arc::new(clock), f).await
}

/// Time left before the current operation's deadline; `None` outside an operation.
pub fn remaining() -> Option<Duration> {
    CLOCK
        .try_with(|c| {
            let deadline = c.start + Duration::from_millis(c.deadline_ms.load(Ordering::Relaxed));
            deadline.saturating_duration_since(Instant::now())
        })
        .ok()
}

/// A transfer succeeded: storage answers, and the operation has `--timeout` from now.
pub fn progress() {
    let _ = CLOCK.try_with(|c| {
        let next = (c.start.elapsed() + c.limit).as_millis() as u64;
        c.deadline_ms.fetch_max(next, Ordering::Relaxed)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_hold_in_an_operation_and_not_across_spawns() {
        assert_eq!(remaining(), None);
        within(Duration::from_secs(5), async {
            let left = remaining().unwrap();
            assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
            tokio::time::sleep(Duration::from_millis(50)).await;
            progress();
            assert!(remaining().unwrap() > Duration::from_millis(4990));
            let spawned = tokio::spawn(async { remaining() }).await.unwrap();
            assert_eq!(spawned, None, "background work has no operation deadline");
        })
        .await;
    }
}
