//! Liveness of a daemon's long-running loops. Each loop registers a [`Heartbeat`] with the longest
//! silence it may keep, and beats whenever it makes progress — also while idle, from the same
//! `select!` that waits for work, so that an idle loop is alive and a wedged one (blocked on a
//! lock, a hung call, a task that died) is not. `/healthz` answers 503 naming every silent loop,
//! so the kubelet restarts a process whose loops stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Beat {
    name: &'static str,
    max_silence: Duration,
    /// Milliseconds after [`Liveness`]'s origin of the last beat.
    last_ms: AtomicU64,
}

/// The loops of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Liveness {
    origin: Instant,
    beats: Arc<Mutex<Vec<Arc<Beat>>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

/// One loop's pulse. Dropping it unregisters the loop (a loop that ended on purpose is not
/// wedged).
#[derive(Debug)]
pub struct Heartbeat {
    beat: Arc<Beat>,
    liveness: Liveness,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.beat
            .last_ms
            .store(self.liveness.now_ms(), Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.beat.name
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let mut beats = self.liveness.lock();
        beats.retain(|b| !Arc::ptr_eq(b, &self.beat));
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            beats: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Beat>>> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Registers a loop that has just beaten; it is wedged once silent for longer than
    /// `max_silence`.
    pub fn register(&self, name: &'static str, max_silence: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            name,
            max_silence,
            last_ms: AtomicU64::new(self.now_ms()),
        });
        self.lock().push(beat.clone());
        Heartbeat {
            beat,
            liveness: self.clone(),
        }
    }

    /// `Ok` when every registered loop beat recently; else why not, naming each silent loop.
    pub fn check(&self) -> Result<(), String> {
        let now = self.now_ms();
        let silent: Vec<String> = self
            .lock()
            .iter()
            .filter_map(|b| {
                let silence =
                    Duration::from_millis(now.saturating_sub(b.last_ms.load(Ordering::Relaxed)));
                (silence > b.max_silence).then(|| {
                    format!(
                        "{} silent for {:.1}s (limit {:.1}s)",
                        b.name,
                        silence.as_secs_f64(),
                        b.max_silence.as_secs_f64()
                    )
                })
            })
            .collect();
        if silent.is_empty() {
            Ok(())
        } else {
            Err(format!("wedged: {}", silent.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_named_and_one_that_ends_is_forgotten() {
        let liveness = Liveness::new();
        let fast = liveness.register("decisions", Duration::from_millis(20));
        let slow = liveness.register("watch", Duration::from_secs(60));
        assert_eq!(liveness.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(40));
        slow.beat();
        let err = liveness.check().unwrap_err();
        assert!(err.contains("decisions silent for"), "{err}");
        assert!(!err.contains("watch"), "{err}");
        fast.beat();
        assert_eq!(liveness.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(liveness.check().is_err());
        drop(fast);
        assert_eq!(liveness.check(), Ok(()), "an ended loop is not wedged");
        assert_eq!(slow.name(), "watch");
    }
}
