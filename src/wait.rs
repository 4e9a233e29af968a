//! Waiting for something to become true: one attempt every `every` until a deadline, on
//! `backon` (no hand-written poll loops). An attempt answers ready, not yet (with what it
//! saw, for the timeout message), or failed (stop at once).

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ConstantBuilder, Retryable};

/// Why an attempt did not succeed.
#[derive(Debug)]
pub enum Stop<E> {
    /// Not there yet: try again (the text says what was seen last).
    NotYet(String),
    /// Give up now.
    Failed(E),
}

/// Run `attempt` every `every` until it succeeds, fails, or `deadline` passes (the last
/// `NotYet` is returned then).
pub async fn until<T, E, F, Fut>(
    every: Duration,
    deadline: Instant,
    attempt: F,
) -> Result<T, Stop<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Stop<E>>>,
{
    attempt
        .retry(
            ConstantBuilder::default()
                .with_delay(every)
                .without_max_times(),
        )
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Stop::NotYet(_)) && Instant::now() < deadline)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_until_ready_and_stops_at_the_deadline_or_a_failure() {
        let n = AtomicU32::new(0);
        let r: Result<u32, Stop<String>> = until(
            Duration::from_millis(1),
            Instant::now() + Duration::from_secs(5),
            || async {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if i < 3 {
                    Err(Stop::NotYet(format!("attempt {i}")))
                } else {
                    Ok(i)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 3);
        let started = Instant::now();
        let r: Result<(), Stop<String>> = until(
            Duration::from_millis(10),
            Instant::now() + Duration::from_millis(100),
            || async { Err(Stop::NotYet("never".into())) },
        )
        .await;
        assert!(matches!(r, Err(Stop::NotYet(s)) if s == "never"));
        assert!(
            started.elapsed() >= Duration::from_millis(100)
                && started.elapsed() < Duration::from_secs(2)
        );
        let tries = AtomicU32::new(0);
        let r: Result<(), Stop<&str>> = until(
            Duration::from_millis(1),
            Instant::now() + Duration::from_secs(5),
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(Stop::Failed("broken"))
            },
        )
        .await;
        assert!(matches!(r, Err(Stop::Failed("broken"))));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
