//! The one retry loop of the project: storage requests ([`super::HttpBlobStore`]) and Azure
//! Resource Manager calls (discovery) both go through [`run`].
//!
//! Each attempt says whether its failure is worth another try, and after how long when the
//! service said so (`Retry-After`), or is final. Between tries the loop waits with exponential
//! backoff and full jitter, which spreads the retries of many clients hitting one throttled
//! account. It stops at the attempt limit, or when the next try would start past the deadline;
//! a failure may bring a shorter window of its own (a refused connection is worth two seconds,
//! not a whole deadline). Bounding each attempt is the caller's business.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::RngExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};

#[derive(Debug, Clone)]
pub struct Policy {
    pub max_attempts: u32,
    /// No try starts later than this after the first.
    pub deadline: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

/// How an attempt failed.
pub enum Step<E> {
    Retry {
        error: E,
        /// The wait the service asked for.
        after: Option<Duration>,
        /// A window shorter than the policy's deadline for failures of this kind.
        window: Option<Duration>,
    },
    Final(E),
}

impl<E> Step<E> {
    pub fn retry(error: E, after: Option<Duration>) -> Self {
        Step::Retry {
            error,
            after,
            window: None,
        }
    }
}

/// Runs `attempt` (given the attempt's number, from 1) until it succeeds, fails for good, or
/// the policy says stop. `report` hears of every failure: the error, the attempt's number, and
/// whether another try follows.
pub async fn run<T, E, F, Fut>(
    policy: &Policy,
    mut attempt: F,
    mut report: impl FnMut(&E, u32, bool),
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Step<E>>>,
{
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (error, after, window) = match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(Step::Final(e)) => {
                report(&e, n, false);
                return Err(e);
            }
            Err(Step::Retry {
                error,
                after,
                window,
            }) => (error, after, window),
        };
        let wait = after.unwrap_or_else(|| backoff(policy, n));
        let window = window.map_or(policy.deadline, |w| w.min(policy.deadline));
        let give_up = n >= policy.max_attempts
            || start.elapsed() + wait + Duration::from_millis(50) >= window;
        report(&error, n, !give_up);
        if give_up {
            return Err(error);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Exponential backoff with full jitter: half to all of `base * 2^attempt`, at most the cap.
pub fn backoff(policy: &Policy, attempt: u32) -> Duration {
    let exp = policy.base_backoff.saturating_mul(1 << attempt.min(10));
    let cap = exp.min(policy.max_backoff).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

/// The wait a `Retry-After` header asks for, in seconds (the only form Azure sends).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// HTTP statuses worth another try: timeouts, throttling and the server's passing trouble.
pub fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, deadline_ms: u64) -> Policy {
        Policy {
            max_attempts,
            deadline: Duration::from_millis(deadline_ms),
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn retries_until_success_or_a_limit_and_reports_each_failure() {
        let mut seen = Vec::new();
        let r: Result<u32, &str> = run(
            &policy(10, 5_000),
            |n| async move {
                match n {
                    3 => Ok(n),
                    _ => Err(Step::retry("busy", None)),
                }
            },
            |e, n, again| seen.push((e.to_string(), n, again)),
        )
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(seen, [("busy".into(), 1, true), ("busy".into(), 2, true)]);

        let mut tries = 0;
        let r: Result<(), &str> = run(
            &policy(4, 5_000),
            |_| {
                tries += 1;
                async { Err(Step::retry("busy", None)) }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!((r, tries), (Err("busy"), 4), "the attempt limit");

        let r: Result<(), &str> = run(
            &policy(10, 5_000),
            |_| async { Err(Step::Final("denied")) },
            |_, _, again| assert!(!again),
        )
        .await;
        assert_eq!(r, Err("denied"), "a final failure is not retried");
    }

    #[tokio::test]
    async fn a_failure_s_own_window_and_retry_after_bound_the_tries() {
        let start = Instant::now();
        let mut tries = 0;
        let r: Result<(), &str> = run(
            &policy(100, 60_000),
            |_| {
                tries += 1;
                async {
                    Err(Step::Retry {
                        error: "refused",
                        after: Some(Duration::from_millis(40)),
                        window: Some(Duration::from_millis(200)),
                    })
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(r, Err("refused"));
        assert!(start.elapsed() < Duration::from_millis(400));
        assert!((2..=5).contains(&tries), "{tries} tries in a 200 ms window");
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        assert!(retryable(503) && !retryable(412) && !retryable(409));
    }
}
