//! The flashsale operator: turns `FlashSale` resources into running sales.
//!
//! A reconcile runs `observe → validate → build → apply → status`
//! ([`controller::reconcile`]); validate and build are pure and unit tested from YAML
//! fixtures, I/O lives in `observe`, `apply` and `nodes`.

pub mod apply;
pub mod build;
pub mod controller;
pub mod crd;
pub mod failover;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod nodes;
pub mod observe;
pub mod replication;
pub mod roles;
pub mod status;
pub mod validate;
