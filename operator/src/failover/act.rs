//! The failover's actions, carried out (I/O): what [`super::step::decide`] asked for.
//! Each is idempotent; a failed one is retried on the next pass.

use flashsale_core::admin::{Role, RoleAssignment};

use super::keeper::{Keeper, Target};
use super::recover;
use super::step::Action;
use crate::build::{self, BuildConfig, Owner};
use crate::crd::FlashSale;
use crate::labels;
use crate::nodes::NodeClient;
use crate::observe::Observed;

/// What the actions need.
pub struct Actor<'a> {
    pub client: &'a kube::Client,
    pub nodes: &'a NodeClient,
    pub keeper: &'a Keeper,
    pub owner: &'a Owner,
    pub sale: &'a FlashSale,
    pub build: &'a BuildConfig,
    pub admin_token: &'a str,
    pub lease: std::time::Duration,
    /// The keeper's key of the sale.
    pub key: &'a str,
}

impl Actor<'_> {
    /// Tells `pod` its role (no primary to follow) and records the node's answer in
    /// `observed`; returns the pod's URL.
    async fn assign(
        &self,
        observed: &mut Observed,
        pod: &str,
        role: Role,
        epoch: u64,
    ) -> Result<String, String> {
        let url = self.url(observed, pod)?;
        let a = RoleAssignment {
            role,
            epoch,
            primary_url: None,
        };
        let status = self
            .nodes
            .put_role(&url, self.admin_token, &a)
            .await
            .map_err(|e| format!("{pod}: {e}"))?;
        if let Some(v) = observed.pods.iter_mut().find(|p| p.name == pod) {
            v.node = Some(Ok(status));
        }
        Ok(url)
    }

    fn url(&self, observed: &Observed, pod: &str) -> Result<String, String> {
        observed
            .pod(pod)
            .and_then(|p| p.url())
            .ok_or_else(|| format!("{pod} has no address"))
    }

    /// Carries out `action`; the observed views of the nodes it touched are refreshed.
    pub async fn run(&self, action: &Action, observed: &mut Observed) -> Result<(), String> {
        match action {
            Action::StopLease => {
                self.keeper.stop(self.key);
                Ok(())
            }
            Action::Unlabel { pod } => {
                crate::apply::unlabel_pod(self.client, &self.owner.namespace, pod)
                    .await
                    .map_err(|e| format!("{pod}: {e}"))?;
                if let Some(v) = observed.pods.iter_mut().find(|p| &p.name == pod) {
                    v.role_label = None;
                }
                Ok(())
            }
            Action::Park { pod, epoch } => {
                self.assign(observed, pod, Role::Standby, *epoch).await?;
                Ok(())
            }
            Action::CopyTail { from, to, from_seq } => {
                let from_url = self.url(observed, from)?;
                let to_url = self.url(observed, to)?;
                recover::copy_tail(
                    self.nodes.http(),
                    &from_url,
                    &to_url,
                    self.admin_token,
                    *from_seq,
                )
                .await?;
                crate::observe::ask_some(self.nodes, observed, &[to.as_str()]).await;
                Ok(())
            }
            Action::CreateJob { from, to } => {
                let to_url = self.url(observed, to)?;
                let epoch = self.sale.status.as_ref().map_or(0, |s| s.epoch);
                let job = build::build_recovery_job(
                    self.owner, self.sale, self.build, epoch, from, to, &to_url,
                );
                crate::apply::create_job(self.client, &self.owner.namespace, &job)
                    .await
                    .map_err(|e| format!("creating the recovery Job: {e}"))
            }
            Action::DeleteJob { to } => {
                let epoch = self.sale.status.as_ref().map_or(0, |s| s.epoch);
                let job = build::recovery_job_name(&self.owner.name, epoch, to);
                crate::apply::delete_job(self.client, &self.owner.namespace, &job)
                    .await
                    .map_err(|e| format!("deleting the recovery Job {job}: {e}"))
            }
            Action::Promote { pod, epoch } => {
                let url = self.assign(observed, pod, Role::Primary, *epoch).await?;
                let pod_uid = observed
                    .pods
                    .iter()
                    .find(|p| p.name == *pod)
                    .and_then(|p| p.uid.clone());
                // The lease at once: a primary without one is not ready and sells nothing.
                self.keeper.hold(
                    self.key,
                    Target {
                        pod: pod.clone(),
                        pod_uid,
                        url,
                        admin_token: self.admin_token.to_string(),
                        epoch: *epoch,
                        lease: self.lease,
                    },
                );
                if let Err(e) = self.keeper.renew_now(self.key).await {
                    tracing::warn!(%pod, error = %e, "first lease renewal of the new primary failed; the keeper retries");
                }
                crate::apply::patch_pod(
                    self.client,
                    &self.owner.namespace,
                    pod,
                    Some(labels::ROLE_PRIMARY),
                    &[],
                )
                .await
                .map_err(|e| format!("{pod}: {e}"))?;
                if let Some(v) = observed.pods.iter_mut().find(|p| &p.name == pod) {
                    v.role_label = Some(labels::ROLE_PRIMARY.to_string());
                }
                Ok(())
            }
            Action::ClearSwitchoverRequest => crate::apply::remove_sale_annotation(
                self.client,
                &self.owner.namespace,
                &self.owner.name,
                labels::SWITCHOVER_TO,
            )
            .await
            .map_err(|e| format!("removing {}: {e}", labels::SWITCHOVER_TO)),
        }
    }
}
