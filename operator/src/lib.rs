//! The flashsale operator: turns `FlashSale` resources into running sales.
//!
//! A reconcile pass is a pipeline (see [`controller`]): validate, observe, desired,
//! apply, plan roles, execute, status, notes. The pure steps (`validate`, `build`,
//! `roles`, `rollout`, `replication`, `status`, `events`) are unit tested from fixtures; I/O lives
//! in `observe`, `apply`, `execute` and `nodes`.

pub mod apply;
pub mod autoscale;
pub mod build;
pub mod conclude;
pub mod controller;
pub mod crd;
pub mod events;
pub mod execute;
pub mod failover;
pub mod http;
pub mod labels;
pub mod metrics;
pub mod nodes;
pub mod observe;
pub mod replication;
pub mod roles;
pub mod rollout;
pub mod scale;
pub mod status;
pub mod validate;
