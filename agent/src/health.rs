//! What `/healthz` and `/readyz` mean for the agent: how long its loops and readings may go quiet
//! before they count as wedged or old, and readiness as a report produced recently.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Room on top of every derived limit: a loaded node may delay a loop by a few seconds
/// without it being wedged.
const SLACK: Duration = Duration::from_secs(5);

/// The longest a loop whose healthy cycle (waiting plus working) takes at most `cycle` may go
/// without progress: three cycles plus [`SLACK`].
pub fn silence_limit(cycle: Duration) -> Duration {
    cycle * 3 + SLACK
}

/// Room on top of the missed report intervals before the agent stops counting as ready.
const READY_SLACK: Duration = Duration::from_secs(1);

/// Reports that may be missed before the agent stops counting as ready.
const READY_MISSED_REPORTS: u32 = 3;

/// Readiness: the agent is ready while it produces reports — a first one exists and the last is
/// at most [`READY_MISSED_REPORTS`] intervals (plus [`READY_SLACK`]) old.
#[derive(Debug)]
pub struct Reporting {
    interval: Duration,
    state: Mutex<ReportingState>,
}

#[derive(Debug, Default)]
struct ReportingState {
    last: Option<Instant>,
    /// Why the last attempt produced no report, if it did not.
    problem: Option<String>,
}

impl Reporting {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReportingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A report was produced at `at`.
    pub fn produced(&self, at: Instant) {
        let mut state = self.lock();
        state.last = Some(at);
        state.problem = None;
    }

    /// An attempt produced no report, for `problem`.
    pub fn failed(&self, problem: String) {
        self.lock().problem = Some(problem);
    }

    /// `Ok` while ready at `now`; else why not.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let state = self.lock();
        let because = state
            .problem
            .as_ref()
            .map_or(String::new(), |p| format!(": {p}"));
        let Some(last) = state.last else {
            return Err(format!("no report yet{because}"));
        };
        let age = now.saturating_duration_since(last);
        if age > self.interval * READY_MISSED_REPORTS + READY_SLACK {
            return Err(format!(
                "no report for {:.1}s (one is due every {:?}){because}",
                age.as_secs_f64(),
                self.interval
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_recent_report_and_says_why_not() {
        let reporting = Reporting::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(reporting.check(start), Err("no report yet".into()));
        reporting.failed("cpu file /run/util: missing".into());
        assert_eq!(
            reporting.check(start),
            Err("no report yet: cpu file /run/util: missing".into())
        );
        reporting.produced(start);
        assert_eq!(reporting.check(start + Duration::from_secs(4)), Ok(()));
        let late = reporting.check(start + Duration::from_millis(4100));
        assert_eq!(late, Err("no report for 4.1s (one is due every 1s)".into()));
        reporting.failed("power model: broken".into());
        let why = reporting.check(start + Duration::from_secs(5)).unwrap_err();
        assert!(why.ends_with(": power model: broken"), "{why}");
    }

    #[test]
    fn silence_limits_leave_three_cycles_and_slack() {
        assert_eq!(
            silence_limit(Duration::from_secs(10)),
            Duration::from_secs(35)
        );
    }
}
