//! The choice of the node to promote: a sort, not a story (STYLE.md). Eligible are the
//! nodes that answer, run, hold the sale, are not the node being replaced, are not
//! behind its epoch, and whose log has not parted from another's at an older epoch; the
//! best holds the most of the log on disk.

use flashsale_core::admin::{NodeStatus, Role};
use flashsale_core::replication::{common_prefix, epoch_at};

use crate::observe::PodView;

/// One eligible node, with what it was ranked by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub durable_seq: u64,
    pub applied_seq: u64,
    pub lagging: bool,
    pub ordinal: Option<u32>,
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (durable {}, applied {}{})",
            self.name,
            self.durable_seq,
            self.applied_seq,
            if self.lagging { ", lagging" } else { "" }
        )
    }
}

/// The eligible nodes, best first: by durable sequence, applied sequence, not lagging,
/// lowest ordinal, name. `min_epoch`: a node told an older epoch is not eligible; nor is
/// one whose log parted from another answering node's ([`diverged`]).
pub fn rank(pods: &[PodView], exclude: &str, min_epoch: u64, lagging: &[String]) -> Vec<Candidate> {
    let logs: Vec<&NodeStatus> = pods.iter().filter_map(PodView::node_status).collect();
    let mut out: Vec<Candidate> = pods
        .iter()
        .filter(|p| p.name != exclude && p.running)
        .filter_map(|p| {
            let s = p.node_status()?;
            let eligible = matches!(s.role, Role::Secondary | Role::Standby)
                && s.epoch >= min_epoch
                && s.sale.is_some()
                && !logs.iter().any(|other| diverged(s, other));
            eligible.then(|| Candidate {
                name: p.name.clone(),
                durable_seq: s.durable_seq,
                applied_seq: s.applied_seq,
                lagging: lagging.contains(&p.name),
                ordinal: p.ordinal,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.durable_seq
            .cmp(&a.durable_seq)
            .then(b.applied_seq.cmp(&a.applied_seq))
            .then(a.lagging.cmp(&b.lagging))
            .then(a.ordinal.cmp(&b.ordinal))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// Whether `mine`'s log parted from `theirs` at a record of an older epoch: the two
/// hold the same sequence at different epochs, and `mine`'s is the older one. A record
/// of the newer epoch was written by a primary that began after the older one's was
/// replaced, so `mine` wrote on past where its primary was cut off (an old primary come
/// back, its catch-up not done yet): records no one acknowledged, above a sale history
/// it lacks. Promoted, it would lose the newer epoch's acknowledged sales.
fn diverged(mine: &NodeStatus, theirs: &NodeStatus) -> bool {
    let shared = common_prefix(
        &mine.epochs,
        mine.applied_seq,
        &theirs.epochs,
        theirs.applied_seq,
    );
    if shared >= mine.applied_seq.min(theirs.applied_seq) {
        return false;
    }
    let at = shared + 1;
    match (
        epoch_at(&mine.epochs, mine.applied_seq, at),
        epoch_at(&theirs.epochs, theirs.applied_seq, at),
    ) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// The ranking as one line for an Event and the status.
pub fn describe(ranked: &[Candidate]) -> String {
    ranked
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" > ")
}
