//! Every node's latest agent report, with its age. A report is fresh for `stale_after` from when
//! its agent observed it (not from when it arrived: a replayed or long-buffered report is as old
//! as its readings); its utilisation, curve and energy level count only while it is fresh.
//!
//! Expiry is event-driven: a queue of the times reports go stale, so a decision touches only the
//! nodes whose report expired since the last one instead of scanning every node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use wattwise_core::{EnergyLevel, PowerCurve, ValidatedReport};

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRejection {
    #[error("node_name: unknown node {0:?}")]
    UnknownNode(String),
    #[error("sequence: {got} is not after {last} for agent_instance {instance:?}")]
    OutOfOrder {
        instance: String,
        got: u64,
        last: u64,
    },
}

impl ReportRejection {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownNode(_) => "unknown_node",
            Self::OutOfOrder { .. } => "out_of_order",
        }
    }
}

/// A node's latest report, as readings with a time.
#[derive(Debug, Clone)]
pub struct Reading {
    /// When the agent read its inputs, in this process' clock: never after the report arrived
    /// (an agent whose clock runs ahead is taken as reporting on arrival).
    pub observed_at: Instant,
    /// `observed_at + stale_after` (`None`: past what an `Instant` holds, never stale).
    pub fresh_until: Option<Instant>,
    /// Gone stale: already on arrival, or found so by [`PowerView::expire`].
    pub stale: bool,
    /// The time of the node's live entry in the expiry queue; other entries for it are
    /// outdated and dropped when they come due.
    armed: Option<Instant>,
    pub instance: String,
    pub sequence: u64,
    pub curve: PowerCurve,
    pub utilisation: f64,
    pub capacity_millicores: u64,
    pub energy: Option<EnergyLevel>,
    /// The stored-energy percentage the level was read from (with `energy`).
    pub energy_percent: Option<f64>,
}

#[derive(Debug, Default)]
pub struct PowerView {
    readings: HashMap<String, Reading>,
    /// (when a node's report goes stale, node): at most one entry per node, re-armed when it
    /// comes due for a report that has been replaced by a newer one.
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
}

impl PowerView {
    pub fn reading(&self, node: &str) -> Option<&Reading> {
        self.readings.get(node)
    }

    /// The node's report, unless it has gone stale.
    pub fn fresh(&self, node: &str) -> Option<&Reading> {
        self.readings.get(node).filter(|r| !r.stale)
    }

    /// Nodes that have reported at least once.
    pub fn reporting(&self) -> usize {
        self.readings.len()
    }

    /// Readings and queued expiries (for tests of memory bounds).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.readings.len(), self.expiries.len())
    }

    /// Takes a validated report for a known node, received at `now`.
    pub fn ingest(
        &mut self,
        report: &ValidatedReport,
        now: Instant,
        stale_after: Duration,
    ) -> Result<&Reading, ReportRejection> {
        let name = report.node_name();
        let instance = &report.report().agent_instance;
        if let Some(last) = self.readings.get(name) {
            if &last.instance == instance && report.sequence() <= last.sequence {
                return Err(ReportRejection::OutOfOrder {
                    instance: instance.clone(),
                    got: report.sequence(),
                    last: last.sequence,
                });
            }
        }
        let age = SystemTime::now()
            .duration_since(report.observed_at())
            .unwrap_or_default();
        let observed_at = now.checked_sub(age).unwrap_or(now);
        let fresh_until = observed_at.checked_add(stale_after);
        // One live queued expiry per node, at or before its report's: one queued for the
        // replaced report is re-armed for this one when it comes due.
        let mut armed = self
            .readings
            .get(name)
            .and_then(|r| r.armed.filter(|_| !r.stale));
        if let Some(until) = fresh_until {
            if armed.is_none_or(|at| until < at) {
                self.expiries.push(Reverse((until, name.to_string())));
                armed = Some(until);
            }
        }
        let reading = Reading {
            observed_at,
            fresh_until,
            stale: fresh_until.is_some_and(|until| now > until),
            armed,
            instance: instance.clone(),
            sequence: report.sequence(),
            curve: report.curve().clone(),
            utilisation: report.utilisation(),
            capacity_millicores: report.capacity_millicores(),
            energy: report.energy_level(),
            energy_percent: report.report().energy.as_ref().map(|e| e.percent),
        };
        self.readings.insert(name.to_string(), reading);
        Ok(&self.readings[name])
    }

    /// Marks the reports that went stale by `now`; returns their nodes.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut stale = Vec::new();
        while let Some(Reverse((due, _))) = self.expiries.peek() {
            if *due >= now {
                break;
            }
            let Some(Reverse((due, node))) = self.expiries.pop() else {
                break;
            };
            let Some(reading) = self.readings.get_mut(&node) else {
                continue; // the node left
            };
            if reading.stale || reading.armed != Some(due) {
                continue; // outdated
            }
            match reading.fresh_until {
                Some(until) if until >= now => {
                    reading.armed = Some(until);
                    self.expiries.push(Reverse((until, node)));
                }
                Some(_) => {
                    reading.stale = true;
                    reading.armed = None;
                    stale.push(node);
                }
                None => reading.armed = None,
            }
        }
        stale
    }

    pub fn remove(&mut self, node: &str) {
        self.readings.remove(node);
    }
}
