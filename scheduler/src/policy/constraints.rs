//! Constraints standalone mode does not evaluate. A pod that needs one is refused with a reason
//! that names it, instead of being bound where it may never start (a volume that cannot reach
//! the node) or where it breaks what it asked for (affinity, spread).

use std::fmt;

use super::types::{ClaimState, PodConstraints};

/// What follows the name of a constraint wattwise leaves to another scheduler.
const NOT_EVALUATED: &str =
    "which wattwise's standalone mode does not evaluate (use extender mode or the default scheduler)";

/// A constraint that keeps a pod from being scheduled here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// Gated pods wait until their gates are removed; an update that removes them retries.
    SchedulingGates(Vec<String>),
    /// The claim watch has not synced yet.
    ClaimNotKnownYet(String),
    ClaimMissing(String),
    /// Not bound yet, but the volume controller binds it on its own: a claim event retries.
    ClaimUnbound(String),
    /// Only a scheduler that binds volumes (picks the claim's node) can make it bound.
    ClaimWaitsForFirstConsumer {
        claim: String,
        storage_class: String,
    },
    PodAffinity,
    PodAntiAffinity,
    TopologySpread,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SchedulingGates(gates) => write!(
                f,
                "pod has scheduling gates ({}); it waits until they are removed",
                gates.join(", ")
            ),
            Self::ClaimNotKnownYet(claim) => write!(
                f,
                "persistentvolumeclaim {claim:?} is not known yet (claims are still being listed)"
            ),
            // kube-scheduler's words for the next two.
            Self::ClaimMissing(claim) => write!(f, "persistentvolumeclaim {claim:?} not found"),
            Self::ClaimUnbound(claim) => write!(
                f,
                "pod has unbound immediate PersistentVolumeClaims ({claim:?})"
            ),
            Self::ClaimWaitsForFirstConsumer {
                claim,
                storage_class,
            } => write!(
                f,
                "pod has PersistentVolumeClaim {claim:?} of StorageClass {storage_class:?} with \
                 volumeBindingMode WaitForFirstConsumer, {NOT_EVALUATED}"
            ),
            Self::PodAffinity => write!(f, "pod has required pod affinity, {NOT_EVALUATED}"),
            Self::PodAntiAffinity => {
                write!(f, "pod has required pod anti-affinity, {NOT_EVALUATED}")
            }
            Self::TopologySpread => {
                write!(f, "pod has topology spread constraints, {NOT_EVALUATED}")
            }
        }
    }
}

/// Every constraint of the pod that standalone mode cannot honour, gates first (kube-scheduler
/// does not even try a gated pod), then volumes, then the constraints between pods. Empty: the
/// filters and scores decide everything the pod asks for. Soft constraints are never listed
/// (see [`PodConstraints`]).
pub fn unsupported(pod: &PodConstraints) -> Vec<Unsupported> {
    let mut found = Vec::new();
    if !pod.scheduling_gates.is_empty() {
        found.push(Unsupported::SchedulingGates(pod.scheduling_gates.clone()));
    }
    for claim in &pod.volume_claims {
        let name = claim.name.clone();
        match &claim.state {
            ClaimState::Bound => {}
            ClaimState::Unknown => found.push(Unsupported::ClaimNotKnownYet(name)),
            ClaimState::Missing => found.push(Unsupported::ClaimMissing(name)),
            ClaimState::Unbound {
                storage_class: Some(storage_class),
                wait_for_first_consumer: true,
            } => found.push(Unsupported::ClaimWaitsForFirstConsumer {
                claim: name,
                storage_class: storage_class.clone(),
            }),
            ClaimState::Unbound { .. } => found.push(Unsupported::ClaimUnbound(name)),
        }
    }
    if pod.required_pod_affinity {
        found.push(Unsupported::PodAffinity);
    }
    if pod.required_pod_anti_affinity {
        found.push(Unsupported::PodAntiAffinity);
    }
    if !pod.hard_topology_spread.is_empty() {
        found.push(Unsupported::TopologySpread);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::types::VolumeClaim;

    fn claim(name: &str, state: ClaimState) -> VolumeClaim {
        VolumeClaim {
            name: name.into(),
            state,
        }
    }

    #[test]
    fn a_pod_without_constraints_or_with_bound_claims_is_supported() {
        assert_eq!(unsupported(&PodConstraints::default()), []);
        let bound = PodConstraints {
            volume_claims: vec![claim("data", ClaimState::Bound)],
            ..Default::default()
        };
        assert_eq!(unsupported(&bound), []);
    }

    #[test]
    fn each_constraint_is_named() {
        let unbound = |wait_for_first_consumer| ClaimState::Unbound {
            storage_class: Some("local".into()),
            wait_for_first_consumer,
        };
        let pod = PodConstraints {
            scheduling_gates: vec!["example.com/quota".into(), "example.com/approval".into()],
            required_pod_affinity: true,
            required_pod_anti_affinity: true,
            hard_topology_spread: vec!["topology.kubernetes.io/zone".into()],
            volume_claims: vec![
                claim("bound", ClaimState::Bound),
                claim("early", ClaimState::Unknown),
                claim("gone", ClaimState::Missing),
                claim("immediate", unbound(false)),
                claim(
                    "no-class",
                    ClaimState::Unbound {
                        storage_class: None,
                        wait_for_first_consumer: false,
                    },
                ),
                claim("local-data", unbound(true)),
            ],
        };
        let messages: Vec<String> = unsupported(&pod).iter().map(|u| u.to_string()).collect();
        assert_eq!(
            messages,
            [
                "pod has scheduling gates (example.com/quota, example.com/approval); it waits \
                 until they are removed",
                "persistentvolumeclaim \"early\" is not known yet (claims are still being listed)",
                "persistentvolumeclaim \"gone\" not found",
                "pod has unbound immediate PersistentVolumeClaims (\"immediate\")",
                "pod has unbound immediate PersistentVolumeClaims (\"no-class\")",
                "pod has PersistentVolumeClaim \"local-data\" of StorageClass \"local\" with \
                 volumeBindingMode WaitForFirstConsumer, which wattwise's standalone mode does \
                 not evaluate (use extender mode or the default scheduler)",
                "pod has required pod affinity, which wattwise's standalone mode does not \
                 evaluate (use extender mode or the default scheduler)",
                "pod has required pod anti-affinity, which wattwise's standalone mode does not \
                 evaluate (use extender mode or the default scheduler)",
                "pod has topology spread constraints, which wattwise's standalone mode does not \
                 evaluate (use extender mode or the default scheduler)",
            ]
        );
    }
}
