//! Tail recovery, the I/O: copy the old primary's log into the candidate from the old
//! pod (`GET /admin/v1/wal` → `POST /admin/v1/wal`, in bounded chunks, each checked by
//! the candidate at its boundary; a start compacted into the old primary's snapshot
//! goes over as that snapshot first), and read the recovery Job's state.

use std::time::Duration;

use flashsale_core::admin::NodeStatus;
use flashsale_core::replication::{
    HEADER_DURABLE_SEQ, HEADER_SNAPSHOT_SEQ, SNAPSHOT_ROUTE, WAL_ROUTE, common_prefix, epoch_at,
};
use flashsale_core::wal::decode_batch;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use super::step::JobState;

/// Most bytes of records per request.
const CHUNK_BYTES: usize = 1 << 20;
/// A tail copy gives up after this long (the next pass tries again).
const COPY_TIMEOUT: Duration = Duration::from_secs(20);

/// Copies `from`'s log from `from_seq` (the candidate's last record, sent again so the
/// candidate checks the boundary) to its end into `to`. Returns the records the
/// candidate applied.
pub async fn copy_tail(
    http: &reqwest::Client,
    from_url: &str,
    to_url: &str,
    admin_token: &str,
    from_seq: u64,
) -> Result<u64, String> {
    let work = async {
        let mut next = from_seq.max(1);
        let mut prev_epoch: Option<u64> = None;
        let mut applied = 0u64;
        let mut past_snapshot = false;
        loop {
            let resp = http
                .get(format!(
                    "{from_url}{WAL_ROUTE}?from={next}&max_bytes={CHUNK_BYTES}"
                ))
                .bearer_auth(admin_token)
                .send()
                .await
                .map_err(|e| format!("reading the tail from the old primary: {e}"))?;
            let end = resp
                .headers()
                .get(HEADER_DURABLE_SEQ)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match resp.status().as_u16() {
                204 => return Ok(applied),
                200 => {}
                410 if !past_snapshot => {
                    // Compacted into the old primary's snapshot: that first, then on.
                    past_snapshot = true;
                    (next, prev_epoch) =
                        past_compacted(http, from_url, to_url, admin_token).await?;
                    continue;
                }
                s => {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(format!("the old primary answered {s}: {body}"));
                }
            }
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            let batch = decode_batch(&bytes).map_err(|e| format!("the tail is damaged: {e}"))?;
            let last = batch.last_seq;
            let last_epoch = batch.records.last().map(|r| r.epoch);
            let mut url = format!("{to_url}{WAL_ROUTE}");
            if let Some(e) = prev_epoch {
                url.push_str(&format!("?prev_epoch={e}"));
            }
            let posted = http
                .post(url)
                .bearer_auth(admin_token)
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
                .send()
                .await
                .map_err(|e| format!("posting the tail to the candidate: {e}"))?;
            if !posted.status().is_success() {
                let s = posted.status();
                let body = posted.text().await.unwrap_or_default();
                return Err(format!("the candidate refused the tail: {s}: {body}"));
            }
            let answer: serde_json::Value = posted.json().await.map_err(|e| e.to_string())?;
            applied += answer["appliedRecords"].as_u64().unwrap_or(0);
            if end.is_some_and(|e| last >= e) {
                return Ok(applied);
            }
            next = last + 1;
            prev_epoch = last_epoch;
        }
    };
    tokio::time::timeout(COPY_TIMEOUT, work)
        .await
        .map_err(|_| format!("copying the tail took over {COPY_TIMEOUT:?}"))?
}

/// The records the copy needs next were compacted into the old primary's newest
/// snapshot (410 `wal_compacted`), as its Job's `stock-node wal ship` can find on a
/// volume. The candidate's log must be a prefix of the old primary's (compared by
/// epoch history, as the first chunk's boundary would have been: a log that parted is
/// refused, never replaced); it takes the snapshot (`PUT /admin/v1/snapshot`) unless it
/// holds what the snapshot covers already. Returns where the copy goes on and the epoch
/// of the record before it in the old primary's log, which the candidate checks its
/// own against. A snapshot is as large as the sale's state: its requests get the whole
/// copy's time, not the operator's short per-request timeout.
async fn past_compacted(
    http: &reqwest::Client,
    from_url: &str,
    to_url: &str,
    admin_token: &str,
) -> Result<(u64, Option<u64>), String> {
    let status = async |url: &str, whose: &str| -> Result<NodeStatus, String> {
        http.get(format!("{url}/admin/v1/status"))
            .bearer_auth(admin_token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("asking {whose} for its log: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{whose}'s status: {e}"))
    };
    let old = status(from_url, "the old primary").await?;
    let candidate = status(to_url, "the candidate").await?;
    let held = candidate.applied_seq;
    let shared = common_prefix(&candidate.epochs, held, &old.epochs, old.durable_seq);
    if shared < held {
        return Err(format!(
            "the candidate's log parted from the old primary's after record {shared} (it holds {held}): not replaced by the old primary's snapshot"
        ));
    }
    let resp = http
        .get(format!("{from_url}{SNAPSHOT_ROUTE}"))
        .bearer_auth(admin_token)
        .timeout(COPY_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("reading the old primary's snapshot: {e}"))?;
    if !resp.status().is_success() {
        let s = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "the old primary compacted the records after {held} and its snapshot is not served: {s}: {body}"
        ));
    }
    let snapshot_seq = resp
        .headers()
        .get(HEADER_SNAPSHOT_SEQ)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("the old primary's snapshot has no {HEADER_SNAPSHOT_SEQ}"))?;
    let last = if snapshot_seq > held {
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let installed: NodeStatus = http
            .put(format!("{to_url}{SNAPSHOT_ROUTE}"))
            .bearer_auth(admin_token)
            .timeout(COPY_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(|e| format!("installing the old primary's snapshot on the candidate: {e}"))?
            .error_for_status()
            .map_err(|e| format!("the candidate refused the old primary's snapshot: {e}"))?
            .json()
            .await
            .map_err(|e| format!("the candidate's status: {e}"))?;
        installed.applied_seq
    } else {
        held
    };
    let prev_epoch = epoch_at(&old.epochs, old.durable_seq, last).ok_or_else(|| {
        format!(
            "record {last} is not in the old primary's epoch history (its log ends at {})",
            old.durable_seq
        )
    })?;
    Ok((last + 1, Some(prev_epoch)))
}

/// A recovery Job's state, from its status conditions, or from its pods: one that
/// exited 0 shipped the whole tail, which the operator can act on before the Job
/// controller (which batches pod updates for a second) marks the Job complete. Only
/// this Job's own pods count (owned by its uid): a Job of the same name deleted before
/// it (its candidate lost, then chosen again at the same epoch) leaves its pods behind
/// until the garbage collector gets to them, and one of them that exited 0 shipped
/// into the candidate as it was then.
pub fn job_state<'a>(job: &Job, pods: impl IntoIterator<Item = &'a Pod>) -> JobState {
    let own = |p: &Pod| {
        job.metadata.uid.as_ref().is_some_and(|uid| {
            p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| &r.uid == uid))
        })
    };
    let shipped = pods
        .into_iter()
        .filter(|p| own(p))
        .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
    if shipped {
        return JobState::Succeeded;
    }
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete") || is("SuccessCriteriaMet") {
        JobState::Succeeded
    } else if is("Failed") || is("FailureTarget") {
        let why = conditions
            .iter()
            .find(|c| c.type_ == "Failed" || c.type_ == "FailureTarget")
            .and_then(|c| c.message.clone().or(c.reason.clone()))
            .unwrap_or_else(|| "the Job failed".into());
        JobState::Failed(why)
    } else if job.metadata.deletion_timestamp.is_some() {
        JobState::Deleting
    } else {
        JobState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod of the Job whose uid is `job-1`.
    fn pod(phase: &str) -> Pod {
        owned_by("job-1", phase)
    }

    fn owned_by(job_uid: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job_uid,
                "controller": true
            }]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn a_job_whose_pod_exited_0_has_shipped_before_it_is_marked_complete() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "uid": "job-1"}
        }))
        .unwrap();
        assert_eq!(job_state(&job, [&pod("Running")]), JobState::Running);
        assert_eq!(job_state(&job, [&pod("Failed")]), JobState::Running);
        assert_eq!(
            job_state(&job, [&pod("Failed"), &pod("Succeeded")]),
            JobState::Succeeded
        );
        // The pod of a Job of the same name deleted before this one is not its pod.
        assert_eq!(
            job_state(&job, [&owned_by("job-0", "Succeeded"), &pod("Running")]),
            JobState::Running
        );
        let failed: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "message": "exit 3"}]}
        }))
        .unwrap();
        assert_eq!(job_state(&failed, []), JobState::Failed("exit 3".into()));
    }

    #[test]
    fn a_job_being_deleted_is_deleting_unless_it_already_ended() {
        let deleting: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "uid": "job-1", "deletionTimestamp": "2026-12-02T08:00:00Z"}
        }))
        .unwrap();
        assert_eq!(job_state(&deleting, [&pod("Running")]), JobState::Deleting);
        assert_eq!(
            job_state(&deleting, [&pod("Succeeded")]),
            JobState::Succeeded
        );
        let failed: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j", "deletionTimestamp": "2026-12-02T08:00:00Z"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "message": "exit 3"}]}
        }))
        .unwrap();
        assert_eq!(job_state(&failed, []), JobState::Failed("exit 3".into()));
    }
}
