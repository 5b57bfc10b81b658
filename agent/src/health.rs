//! How long the agent's loops and readings may go quiet before they count as wedged or old.

use std::time::Duration;

/// Room on top of every derived limit: a loaded node may delay a loop by a few seconds
/// without it being wedged.
const SLACK: Duration = Duration::from_secs(5);

/// The longest a loop whose healthy cycle (waiting plus working) takes at most `cycle` may go
/// without progress: three cycles plus [`SLACK`].
pub fn silence_limit(cycle: Duration) -> Duration {
    cycle * 3 + SLACK
}
