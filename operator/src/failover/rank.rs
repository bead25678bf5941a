//! The choice of the node to promote: a sort, not a story (STYLE.md). Eligible are the
//! nodes that answer, run, hold the sale, are not the node being replaced, and are not
//! behind its epoch; the best holds the most of the log on disk.

use flashsale_core::admin::Role;

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
/// lowest ordinal, name. `min_epoch`: a node told an older epoch is not eligible.
pub fn rank(pods: &[PodView], exclude: &str, min_epoch: u64, lagging: &[String]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = pods
        .iter()
        .filter(|p| p.name != exclude && p.running)
        .filter_map(|p| {
            let s = p.node_status()?;
            let eligible = matches!(s.role, Role::Secondary | Role::Standby)
                && s.epoch >= min_epoch
                && s.sale.is_some();
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

/// The ranking as one line for an Event and the status.
pub fn describe(ranked: &[Candidate]) -> String {
    ranked
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" > ")
}
