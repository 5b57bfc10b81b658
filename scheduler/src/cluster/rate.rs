//! Rate limits: of the scheduler's writes (events, node labels), so that a burst of work never
//! turns into a burst of writes against the API server, and of each agent report stream.

use std::time::Instant;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A bucket holding `burst` tokens at `now`.
    pub fn full(rate: f64, burst: u32, now: Instant) -> Self {
        Self {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            at: now,
        }
    }

    /// Takes a token if one is left at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(2.0, 3, t0);
        assert_eq!((0..5).filter(|_| bucket.take(t0)).count(), 3);
        // Half a second at 2 per second: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..5).filter(|_| bucket.take(t1)).count(), 1);
        // Refills stop at the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(t2)).count(), 3);
    }
}
