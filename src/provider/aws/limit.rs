//! A client-side token bucket, so tend stays inside the request rates AWS
//! documents (EC2: describe calls a bucket of 100 refilled at 20 per second,
//! mutating calls 200 at 5 per second) instead of relying on throttling.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(capacity: f64, per_second: f64) -> TokenBucket {
        TokenBucket {
            capacity,
            per_second,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Waits until a request may be sent, and takes its token.
    pub async fn acquire(&self) {
        let stats = crate::provider::stats::of(crate::model::ProviderName::Aws);
        stats
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut waited = false;
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
                s.0 = (s.0 + refill).min(self.capacity);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    if waited {
                        stats
                            .throttled
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return;
                }
                waited = true;
                Duration::from_secs_f64((1.0 - s.0) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_beyond_the_bucket_waits_for_the_refill_rate() {
        let b = TokenBucket::new(5.0, 50.0);
        let start = Instant::now();
        for _ in 0..5 {
            b.acquire().await;
        }
        let burst = start.elapsed();
        for _ in 0..5 {
            b.acquire().await;
        }
        // Five more tokens at 50 per second take at least 100 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(95),
            "{:?}",
            start.elapsed()
        );
        assert!(
            burst < Duration::from_millis(50),
            "the bucket's burst is immediate: {burst:?}"
        );
    }
}
