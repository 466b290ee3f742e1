//! A token bucket: `burst` messages at once, refilled at `per_s` a second.
//! Pure (time passed in), so it is tested without waiting.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    burst: f64,
    per_s: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(per_s: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { burst, per_s: f64::from(per_s), tokens: burst, last: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
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
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "then nothing");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token after 50 ms");
        assert!(b.take(t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!b.take(t0 + Duration::from_millis(110)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later)) && !b.take(later));
    }
}
