//! The energy level as published on Node objects: the `energy-status` label (the configured
//! `policy.energy_label`) and wattwise's annotations. What a node's metadata *should* say is a pure
//! function of what it says now and what its agent reports ([`decide`]); the adapter
//! ([`super::adapter`]) only applies the answer.
//!
//! Ownership: a label wattwise wrote carries [`SOURCE_ANNOTATION`]` = `[`SOURCE_VALUE`]. A label
//! without it is the operator's: never changed, never removed, and read as the node's level while
//! its agent reports none. A label with it is never read as a level (the reports are the truth;
//! a marked label outliving its reports would keep a stale level alive).

use std::collections::BTreeMap;

use wattwise_core::EnergyLevel;

/// Marks the energy label as written by wattwise.
pub const SOURCE_ANNOTATION: &str = "wattwise.io/energy-status-source";
pub const SOURCE_VALUE: &str = "wattwise";
/// The reported stored-energy percentage, rounded to a whole number.
pub const PERCENT_ANNOTATION: &str = "wattwise.io/energy-percent";

/// What a Node object says about its energy level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedEnergy {
    /// The energy label's value, if any.
    pub label: Option<String>,
    /// [`SOURCE_ANNOTATION`] says wattwise wrote the label.
    pub managed: bool,
    /// [`PERCENT_ANNOTATION`]'s value, if any.
    pub percent: Option<String>,
}

impl PublishedEnergy {
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        label_key: &str,
    ) -> Self {
        Self {
            label: labels.get(label_key).cloned(),
            managed: annotations.get(SOURCE_ANNOTATION).map(String::as_str) == Some(SOURCE_VALUE),
            percent: annotations.get(PERCENT_ANNOTATION).cloned(),
        }
    }

    /// The label is the operator's: present and not marked as wattwise's.
    pub fn operator_label(&self) -> Option<&str> {
        self.label.as_deref().filter(|_| !self.managed)
    }

    /// The level wattwise published, if the label is its own and a level.
    pub fn managed_level(&self) -> Option<EnergyLevel> {
        self.label
            .as_deref()
            .filter(|_| self.managed)
            .and_then(|l| l.parse().ok())
    }
}

/// What the node's agent says about its energy now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReportedEnergy {
    /// A fresh report with a level.
    Level { level: EnergyLevel, percent: f64 },
    /// A fresh report without a level, a stale report, or no report although the agent had
    /// `stale_after` to send one.
    None,
    /// No report yet, and this process has not run long enough to expect one: nothing is known
    /// (a scheduler that just started must not strip every label before agents reconnect).
    NotYet,
}

/// A change to a node's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set the label to `label`, mark it, set the percentage annotation.
    Publish {
        label: &'static str,
        percent: String,
    },
    /// Remove the label and both annotations.
    Remove,
}

impl LabelChange {
    /// The change only updates the percentage of a label that already shows the level: the
    /// least urgent kind of write.
    pub fn percent_only(&self, published: &PublishedEnergy) -> bool {
        matches!(self, LabelChange::Publish { label, .. }
            if published.managed && published.label.as_deref() == Some(*label))
    }
}

/// The percentage as published: a whole number, so sub-percent drift writes nothing.
pub fn percent_text(percent: f64) -> String {
    format!("{:.0}", percent.clamp(0.0, 100.0))
}

/// What must change on a node's metadata (`None`: nothing).
pub fn decide(published: &PublishedEnergy, reported: ReportedEnergy) -> Option<LabelChange> {
    if published.operator_label().is_some() {
        return None;
    }
    match reported {
        ReportedEnergy::Level { level, percent } => {
            let change = LabelChange::Publish {
                label: level.label(),
                percent: percent_text(percent),
            };
            let current = published.managed
                && published.label.as_deref() == Some(level.label())
                && published.percent.as_deref() == Some(percent_text(percent).as_str());
            (!current).then_some(change)
        }
        // Only wattwise's own marks are removed; a bare percentage annotation without the
        // marker is someone else's.
        ReportedEnergy::None if published.managed => Some(LabelChange::Remove),
        ReportedEnergy::None | ReportedEnergy::NotYet => None,
    }
}

/// The JSON merge patch that makes `change` (metadata only; `null` removes a key).
pub fn merge_patch(change: &LabelChange, label_key: &str) -> serde_json::Value {
    use serde_json::{json, Value};
    let (label, source, percent) = match change {
        LabelChange::Publish { label, percent } => (
            Value::from(*label),
            Value::from(SOURCE_VALUE),
            Value::from(percent.as_str()),
        ),
        LabelChange::Remove => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "metadata": {
            "labels": { label_key: label },
            "annotations": { SOURCE_ANNOTATION: source, PERCENT_ANNOTATION: percent },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn published(label: Option<&str>, managed: bool, percent: Option<&str>) -> PublishedEnergy {
        PublishedEnergy {
            label: label.map(Into::into),
            managed,
            percent: percent.map(Into::into),
        }
    }

    const LOW_22: ReportedEnergy = ReportedEnergy::Level {
        level: EnergyLevel::LowPowered,
        percent: 22.4,
    };

    fn publish(label: &'static str, percent: &str) -> Option<LabelChange> {
        Some(LabelChange::Publish {
            label,
            percent: percent.into(),
        })
    }

    #[test]
    fn a_reported_level_is_published_on_an_unlabelled_node() {
        assert_eq!(
            decide(&published(None, false, None), LOW_22),
            publish("low-powered", "22")
        );
    }

    #[test]
    fn an_unchanged_level_and_percentage_write_nothing() {
        assert_eq!(
            decide(&published(Some("low-powered"), true, Some("22")), LOW_22),
            None
        );
        // Sub-percent drift rounds to the same text.
        let drift = ReportedEnergy::Level {
            level: EnergyLevel::LowPowered,
            percent: 21.6,
        };
        assert_eq!(
            decide(&published(Some("low-powered"), true, Some("22")), drift),
            None
        );
    }

    #[test]
    fn a_changed_level_or_percentage_is_republished() {
        assert_eq!(
            decide(&published(Some("vulnerable"), true, Some("41")), LOW_22),
            publish("low-powered", "22")
        );
        assert_eq!(
            decide(&published(Some("low-powered"), true, Some("30")), LOW_22),
            publish("low-powered", "22")
        );
        // Our marker without our label (someone removed the label): published again.
        assert_eq!(
            decide(&published(None, true, Some("22")), LOW_22),
            publish("low-powered", "22")
        );
    }

    #[test]
    fn percentage_updates_are_told_apart_from_new_levels() {
        let ours = published(Some("low-powered"), true, Some("30"));
        let change = decide(&ours, LOW_22).unwrap();
        assert!(change.percent_only(&ours));
        let was_vulnerable = published(Some("vulnerable"), true, Some("41"));
        assert!(!decide(&was_vulnerable, LOW_22)
            .unwrap()
            .percent_only(&was_vulnerable));
        assert!(!decide(&published(None, false, None), LOW_22)
            .unwrap()
            .percent_only(&published(None, false, None)));
        assert!(!LabelChange::Remove.percent_only(&ours));
    }

    #[test]
    fn an_operator_label_is_never_touched() {
        let operator = published(Some("vulnerable"), false, None);
        for reported in [LOW_22, ReportedEnergy::None, ReportedEnergy::NotYet] {
            assert_eq!(decide(&operator, reported), None, "{reported:?}");
        }
        assert_eq!(operator.operator_label(), Some("vulnerable"));
        assert_eq!(operator.managed_level(), None);
    }

    #[test]
    fn a_managed_label_is_removed_when_the_level_is_no_longer_reported() {
        let ours = published(Some("low-powered"), true, Some("22"));
        assert_eq!(ours.operator_label(), None);
        assert_eq!(ours.managed_level(), Some(EnergyLevel::LowPowered));
        assert_eq!(
            decide(&ours, ReportedEnergy::None),
            Some(LabelChange::Remove)
        );
        // Before agents could have reported, nothing is known: nothing is removed.
        assert_eq!(decide(&ours, ReportedEnergy::NotYet), None);
        // Nothing of ours on the node: nothing to remove.
        assert_eq!(
            decide(&published(None, false, Some("50")), ReportedEnergy::None),
            None
        );
        assert_eq!(
            decide(&published(None, false, None), ReportedEnergy::None),
            None
        );
    }

    #[test]
    fn metadata_is_read_with_the_configured_key() {
        let labels = BTreeMap::from([("energy-status".to_string(), "powerless".to_string())]);
        let annotations = BTreeMap::from([
            (SOURCE_ANNOTATION.to_string(), "wattwise".to_string()),
            (PERCENT_ANNOTATION.to_string(), "3".to_string()),
        ]);
        assert_eq!(
            PublishedEnergy::from_metadata(&labels, &annotations, "energy-status"),
            published(Some("powerless"), true, Some("3"))
        );
        // Another source's marker is not ours.
        let other = BTreeMap::from([(SOURCE_ANNOTATION.to_string(), "someone".to_string())]);
        assert_eq!(
            PublishedEnergy::from_metadata(&labels, &other, "energy-status"),
            published(Some("powerless"), false, None)
        );
        assert_eq!(
            PublishedEnergy::from_metadata(&labels, &annotations, "power-tier").label,
            None
        );
    }

    #[test]
    fn patches_touch_only_the_label_and_the_annotations() {
        assert_eq!(
            merge_patch(&publish("vulnerable", "63").unwrap(), "energy-status"),
            json!({"metadata": {
                "labels": {"energy-status": "vulnerable"},
                "annotations": {SOURCE_ANNOTATION: "wattwise", PERCENT_ANNOTATION: "63"},
            }})
        );
        assert_eq!(
            merge_patch(&LabelChange::Remove, "energy-status"),
            json!({"metadata": {
                "labels": {"energy-status": null},
                "annotations": {SOURCE_ANNOTATION: null, PERCENT_ANNOTATION: null},
            }})
        );
    }

    #[test]
    fn percentages_are_whole_and_clamped() {
        assert_eq!(percent_text(63.49), "63");
        assert_eq!(percent_text(99.7), "100");
        assert_eq!(percent_text(-0.2), "0");
    }
}
