//! How large the GETs of a sequential reader are: chosen per storage account by measuring
//! what the link rewards, not by a constant.
//!
//! Links differ in kind. Azurite on loopback spends ~15 ms of one core on each request
//! whatever its size, so 2 MiB ranges top out near 130 MiB/s while 32 MiB ranges reach
//! 750; a node far from its storage account, with a per-connection cap, wants many
//! moderate ranges in flight instead, and the window (bytes in flight, bounded by the RAM
//! budget) divided by larger ranges means fewer connections. So each account has a
//! [`Link`] that keeps a throughput estimate for each range size in [`SIZES`] and uses the
//! best: the aggregate rate of its prefetch GETs over the time at least one is in flight,
//! measured over samples of [`SAMPLE`] bytes (not the first: the windows' ramp-up). Every
//! third sample tries a neighbour of the best size instead (alternately larger and
//! smaller), so the choice moves when the link changes. Fewer, larger requests also cut
//! the request rate and the transaction bill. Uploads have a link of their own per account
//! (see `Cache::upload_link`): its size is how many 4 MiB blocks a writer sends in one Put
//! Block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

const MIB: u64 = 1 << 20;
/// The rest of the blob, in one GET whose body is read as the reader goes (a stream).
pub const REST: u64 = u64::MAX;
/// The range sizes a sequential reader may use.
pub const SIZES: [u64; 6] = [2 * MIB, 4 * MIB, 8 * MIB, 16 * MIB, 32 * MIB, REST];
/// Where a new link starts: 8 MiB, a middle that neither kind of link punishes much.
const START: usize = 2;
/// Bytes per throughput sample.
const SAMPLE: u64 = 64 * MIB;
/// Weight of a new sample in a size's estimate.
const ALPHA: f64 = 0.5;

#[derive(Debug)]
struct State {
    /// The size in use now, and the best one known.
    current: usize,
    best: usize,
    /// Estimated aggregate MiB/s for each size; `None` until tried.
    rate: [Option<f64>; SIZES.len()],
    samples: u64,
    /// Direction of the next exploration: larger (true) or smaller.
    up: bool,
    /// The direction of the exploration being measured, if `current` is one.
    trying: Option<bool>,
    in_flight: u32,
    /// A first sample has been taken (and thrown away).
    warm: bool,
    /// The size was set by a test, not to be changed by measurements.
    pinned: bool,
    since: Instant,
    bytes: u64,
    busy: f64,
}

/// One storage account's link.
#[derive(Debug)]
pub struct Link {
    state: Mutex<State>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: Mutex::new(State {
                current: START,
                best: START,
                rate: [None; SIZES.len()],
                samples: 0,
                up: true,
                trying: None,
                in_flight: 0,
                warm: false,
                pinned: false,
                since: Instant::now(),
                bytes: 0,
                busy: 0.0,
            }),
        }
    }
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The size of the next prefetch GET.
    pub fn chunk(&self) -> u64 {
        SIZES[self.lock().current]
    }

    /// A prefetch GET starts.
    pub fn started(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 {
            s.since = Instant::now();
        }
        s.in_flight += 1;
    }

    /// A prefetch GET that brought `bytes` (0 if it failed) ended.
    pub fn finished(&self, bytes: u64) {
        let mut s = self.lock();
        let now = Instant::now();
        s.busy += now.duration_since(s.since).as_secs_f64();
        s.since = now;
        s.in_flight = s.in_flight.saturating_sub(1);
        s.bytes += bytes;
        if s.bytes >= SAMPLE && s.busy > 0.0 {
            let rate = s.bytes as f64 / MIB as f64 / s.busy;
            s.bytes = 0;
            s.busy = 0.0;
            // The first sample holds the windows' ramp-up (few GETs in flight), which says
            // nothing of the size: learning it sent a capped link to larger ranges.
            if s.warm {
                s.learn(rate);
            }
            s.warm = true;
        }
    }

    /// Uses `size` from now on, whatever is measured (for tests: an in-memory store's
    /// rates are noise).
    #[cfg(test)]
    pub fn pin(&self, size: u64) {
        let mut s = self.lock();
        let i = SIZES.iter().position(|&x| x == size).unwrap_or(START);
        s.current = i;
        s.best = i;
        s.pinned = true;
    }

    /// The current estimates, for logs and tests: (size, MiB/s) of each size tried.
    pub fn rates(&self) -> Vec<(u64, f64)> {
        let s = self.lock();
        SIZES
            .iter()
            .zip(s.rate)
            .filter_map(|(&size, r)| Some((size, r?)))
            .collect()
    }
}

impl State {
    fn learn(&mut self, rate: f64) {
        if self.pinned {
            return;
        }
        let i = self.current;
        self.rate[i] = Some(match self.rate[i] {
            Some(old) => old * (1.0 - ALPHA) + rate * ALPHA,
            None => rate,
        });
        let best = (0..SIZES.len())
            .filter_map(|j| Some((j, self.rate[j]?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(self.best, |(j, _)| j);
        if best != self.best {
            tracing::debug!(
                from = label(SIZES[self.best]),
                to = label(SIZES[best]),
                "sequential reads change range size"
            );
        }
        self.best = best;
        self.samples += 1;
        // An exploration that won goes on in the same direction at once (a link far from
        // the start size gets there in a few samples, not a few dozen); otherwise every
        // third sample, and the first, tries a neighbour of the best, alternately larger
        // and smaller (or whichever exists).
        let dir = match self.trying.take() {
            Some(up) if best == i => Some(up),
            _ if self.samples == 1 || self.samples.is_multiple_of(3) => {
                self.up = !self.up;
                Some(!self.up)
            }
            _ => None,
        };
        self.current = best;
        if let Some(up) = dir {
            let up = match up {
                true => best + 1 < SIZES.len(),
                false => best == 0,
            };
            self.current = if up { best + 1 } else { best - 1 };
            self.trying = Some(up);
        }
    }
}

fn label(size: u64) -> String {
    match size {
        REST => "the rest of the blob".into(),
        s => format!("{} MiB", s / MIB),
    }
}

/// The link of each storage account, by origin.
#[derive(Default)]
pub struct Links {
    map: Mutex<HashMap<Arc<str>, Arc<Link>>>,
}

impl Links {
    pub fn of(&self, origin: &Arc<str>) -> Arc<Link> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(origin.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a link samples from a model of the link: MiB/s as a function of range size.
    fn drive(link: &Link, model: impl Fn(u64) -> f64, samples: usize) {
        for _ in 0..samples {
            let mut s = link.lock();
            let rate = model(SIZES[s.current]);
            s.learn(rate);
        }
    }

    #[test]
    fn an_overhead_bound_link_moves_to_large_ranges() {
        // Azurite on loopback: ~16 ms per request, ~800 MiB/s otherwise.
        let link = Link::default();
        drive(
            &link,
            |c| (c as f64 / MIB as f64) / (0.016 + c as f64 / MIB as f64 / 800.0),
            30,
        );
        assert_eq!(link.lock().best, SIZES.len() - 1, "{:?}", link.rates());
    }

    #[test]
    fn a_per_connection_cap_keeps_moderate_ranges_and_follows_a_change() {
        // 64 MiB in flight, 25 MiB/s per connection, 36 ms per request, requests serialised
        // at the server for 16 ms each: the best is 4 MiB.
        let capped = |c: u64| {
            let m = c as f64 / MIB as f64;
            (64.0 / (0.036 + m / 25.0)).min(m / 0.016)
        };
        let link = Link::default();
        drive(&link, capped, 30);
        assert_eq!(SIZES[link.lock().best], 4 * MIB, "{:?}", link.rates());
        // The cap goes away: the link finds larger ranges again.
        drive(
            &link,
            |c| (c as f64 / MIB as f64) / (0.016 + c as f64 / MIB as f64 / 800.0),
            40,
        );
        assert!(SIZES[link.lock().best] >= 16 * MIB, "{:?}", link.rates());
    }

    #[test]
    fn busy_time_not_idle_time_makes_the_rate() {
        let link = Link::default();
        let ms = std::time::Duration::from_millis;
        // The first sample is the ramp-up, and is not learned.
        link.started();
        link.finished(SAMPLE);
        assert!(link.rates().is_empty(), "{:?}", link.rates());
        link.started();
        std::thread::sleep(ms(20));
        link.finished(SAMPLE / 2);
        // A long idle gap (the reader was slow) does not count.
        std::thread::sleep(ms(60));
        link.started();
        std::thread::sleep(ms(20));
        link.finished(SAMPLE / 2);
        let rates = link.rates();
        assert_eq!(rates.len(), 1);
        // 64 MiB in 40 ms busy (1,600 MiB/s), not in 100 ms (640).
        assert!(rates[0].1 > 64.0 / 0.07, "{rates:?}");
    }
}
