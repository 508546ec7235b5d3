//! Listener limits and dial backoff: token buckets and an exponential backoff with jitter.
//! Time is passed in (`now`), entropy too, so both are tested without a clock.

use core::time::Duration;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use mfp_core::EntropySource;

/// A token bucket: `rate` tokens per second, at most `burst` held, one spent per event.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second, holding at most `burst` (both at
    /// least 1).
    #[must_use]
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate.max(1)), burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Whether a token is available at `now` (refills, spends nothing).
    pub fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Spends a token if one is available at `now`; returns whether it did.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.available(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (a full bucket carries no information and can
    /// be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Why a handshake was refused by the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// The source address is over its rate.
    PerSource,
    /// The listener is over its overall rate.
    Overall,
    /// Too many distinct sources are being tracked at once.
    TooManySources,
}

/// Handshake rate limits of a listener: one bucket per source IP address and one overall
/// (boringtun's defaults: 10 per second per source, 100 overall). The number of source
/// buckets is bounded: full buckets are forgotten when the table is full, and a new source
/// is refused while every tracked one is still draining.
#[derive(Debug)]
pub struct HandshakeLimiter {
    per_source_rate: u32,
    per_source: HashMap<IpAddr, TokenBucket>,
    overall: TokenBucket,
    max_sources: usize,
}

impl HandshakeLimiter {
    /// A limiter allowing `per_source` handshakes per second from each source address
    /// and `overall` per second in total, tracking at most `max_sources` addresses.
    #[must_use]
    pub fn new(per_source: u32, overall: u32, max_sources: usize, now: Instant) -> Self {
        Self {
            per_source_rate: per_source,
            per_source: HashMap::new(),
            overall: TokenBucket::new(overall, overall, now),
            max_sources: max_sources.max(1),
        }
    }

    /// Spends a token for a handshake from `source` at `now`, or says why not. Nothing is
    /// spent when the handshake is refused.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Result<(), RateLimited> {
        if !self.per_source.contains_key(&source) && self.per_source.len() >= self.max_sources {
            self.per_source.retain(|_, b| !b.is_full(now));
            if self.per_source.len() >= self.max_sources {
                return Err(RateLimited::TooManySources);
            }
        }
        let rate = self.per_source_rate;
        let bucket = self.per_source.entry(source).or_insert_with(|| TokenBucket::new(rate, rate, now));
        if !bucket.available(now) {
            return Err(RateLimited::PerSource);
        }
        if !self.overall.try_take(now) {
            return Err(RateLimited::Overall);
        }
        bucket.try_take(now);
        Ok(())
    }

    /// Source addresses currently tracked.
    #[must_use]
    pub fn tracked_sources(&self) -> usize {
        self.per_source.len()
    }
}

/// Exponential dial backoff with jitter: the delay doubles from `initial` up to `max`
/// (pymfp's defaults: 0.1 s to 30 s); each wait is drawn uniformly from the upper half of
/// the current delay, so peers that lost each other at the same moment do not redial in
/// lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self { initial, max: max.max(initial), current: initial }
    }

    /// Back to the initial delay (after a session was established).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The next wait, and doubles the delay for the one after. Without entropy (the
    /// source failed) the wait is the full delay.
    pub fn next_delay(&mut self, entropy: &mut dyn EntropySource) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        let mut bytes = [0u8; 8];
        if entropy.fill(&mut bytes).is_err() {
            return delay;
        }
        let half = delay / 2;
        let frac = (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfp_core::testing::SplitMix64;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 10, t0);
        for _ in 0..10 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // Never above the burst, however long it rests.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.is_full(later));
        for _ in 0..10 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn limiter_per_source_then_overall() {
        let t0 = Instant::now();
        let mut l = HandshakeLimiter::new(10, 100, 1024, t0);
        for _ in 0..10 {
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        assert_eq!(l.check(ip(1), t0), Err(RateLimited::PerSource));
        // Other sources still get through until the overall budget is spent.
        let mut ok = 10;
        for i in 2..=20u8 {
            while l.check(ip(i), t0).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);
        assert_eq!(l.check(ip(30), t0), Err(RateLimited::Overall));
        // A refused handshake spent nothing from its source's bucket.
        assert_eq!(l.check(ip(30), t0 + Duration::from_millis(10)), Ok(()));
    }

    #[test]
    fn limiter_tracks_a_bounded_number_of_sources() {
        let t0 = Instant::now();
        let mut l = HandshakeLimiter::new(10, 1000, 4, t0);
        for i in 0..4u8 {
            assert_eq!(l.check(ip(i), t0), Ok(()));
        }
        assert_eq!(l.check(ip(9), t0), Err(RateLimited::TooManySources));
        assert_eq!(l.tracked_sources(), 4);
        // Once the tracked buckets have refilled they are forgotten and room is made.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.check(ip(9), later), Ok(()));
        assert_eq!(l.tracked_sources(), 1);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut e = SplitMix64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut nominal = Duration::from_millis(100);
        for _ in 0..20 {
            let d = b.next_delay(&mut e);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} outside [{:?}, {nominal:?}]", nominal / 2);
            nominal = (nominal * 2).min(Duration::from_secs(30));
        }
        assert_eq!(nominal, Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay(&mut e) <= Duration::from_millis(100));
        // Failing entropy: the full delay.
        let mut failing = mfp_core::FnEntropy(|_: &mut [u8]| Err(mfp_core::Error::Entropy));
        assert_eq!(b.next_delay(&mut failing), Duration::from_millis(200));
    }
}
