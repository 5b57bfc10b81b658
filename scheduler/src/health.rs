//! What `/readyz` knows about the watches: a replica is ready while its node and pod caches are in
//! sync with the API server, i.e. both watches have listed once and neither has been down for
//! longer than a connection may legitimately stay silent.
//!
//! A kube-rs watcher reports its failures (every failed list or watch request is an error item)
//! but re-establishes a connection silently, so a watch counts as back up on its next event or
//! once it has gone a whole retry round without a new error.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ApiConfig;

/// The watcher's longest backoff between attempts (kube-runtime's default backoff caps at 30 s).
const WATCHER_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One watch's connection state.
#[derive(Debug)]
pub struct WatchHealth {
    name: &'static str,
    /// Server-side timeout of each watch request.
    watch_timeout: Duration,
    /// An attempt of the watcher fails within this (the watch client's read and connect bounds).
    attempt_bound: Duration,
    state: Mutex<Down>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Down {
    since: Option<Instant>,
    last_error: Option<Instant>,
}

impl WatchHealth {
    pub fn new(name: &'static str, api: &ApiConfig) -> Self {
        Self {
            name,
            watch_timeout: api.watch_timeout,
            attempt_bound: api.watch_silence().max(api.timeout),
            state: Mutex::default(),
        }
    }

    /// The watcher yielded an event (`ok`) or an error.
    pub fn saw(&self, ok: bool, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if ok || self.recovered(&s, now) {
            *s = Down::default();
        }
        if !ok {
            s.since.get_or_insert(now);
            s.last_error = Some(now);
        }
    }

    /// A failing watcher errs again within one backoff plus one attempt; silence since its last
    /// error means its retry connected.
    fn recovered(&self, s: &Down, now: Instant) -> bool {
        s.last_error.is_none_or(|t| {
            now.saturating_duration_since(t) > WATCHER_BACKOFF_MAX + self.attempt_bound
        })
    }

    /// How long the watch has been down, if it is.
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        let s = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.recovered(&s, now) {
            return None;
        }
        s.since.map(|t| now.saturating_duration_since(t))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `api.watch_timeout` as the watch requests' `timeoutSeconds`.
    pub fn watch_timeout_secs(&self) -> u32 {
        self.watch_timeout.as_secs().min(u32::MAX as u64) as u32
    }
}

/// `Ok` when both caches listed once and no watch is down for longer than `max_down`.
pub fn caches_in_sync(
    synced: bool,
    watches: &[&WatchHealth],
    max_down: Duration,
    now: Instant,
) -> Result<(), String> {
    if !synced {
        return Err("caches not synced yet".into());
    }
    let down: Vec<String> = watches
        .iter()
        .filter_map(|w| {
            let d = w.down_for(now)?;
            (d > max_down).then(|| format!("{} down for {:.0}s", w.name(), d.as_secs_f64()))
        })
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("caches out of sync: {}", down.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_down_from_its_first_error_until_an_event_or_a_quiet_retry_round() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let api = ApiConfig {
            timeout: Duration::from_secs(2),
            watch_timeout: Duration::from_secs(10),
        };
        let w = WatchHealth::new("pod watch", &api);
        assert_eq!(w.watch_timeout_secs(), 10);
        assert_eq!(
            caches_in_sync(false, &[&w], Duration::from_secs(15), t0),
            Err("caches not synced yet".into())
        );
        assert_eq!(
            caches_in_sync(true, &[&w], Duration::from_secs(15), t0),
            Ok(())
        );
        w.saw(false, s(0));
        w.saw(false, s(20));
        assert_eq!(w.down_for(s(21)), Some(Duration::from_secs(21)));
        let err = caches_in_sync(true, &[&w], Duration::from_secs(15), s(21)).unwrap_err();
        assert!(err.contains("pod watch down for 21s"), "{err}");
        // No error for longer than backoff + attempt: the retry connected.
        assert_eq!(w.down_for(s(20 + 46)), None);
        w.saw(false, s(100));
        assert_eq!(
            w.down_for(s(101)),
            Some(Duration::from_secs(1)),
            "a new outage counts anew"
        );
        w.saw(true, s(102));
        assert_eq!(w.down_for(s(103)), None);
    }
}
