//! The PodDisruptionBudget: voluntary evictions (drains) take at most one node at a time,
//! so a drain never empties a sale; with one replica a drain may still proceed.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::labels;

pub fn build_pdb(owner: &Owner) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(
            labels::pdb_name(&owner.name),
            labels::component_labels(&owner.name, labels::NODE_APP),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::node_selector(&owner.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
