//! Validate: the spec as the nodes will run it. Pure. The API server's CEL rules refuse
//! most mistakes at `kubectl apply`; this repeats them (a CRD can be installed without
//! them, or edited) and turns the spec into the node's [`SaleConfig`].

use flashsale_core::rules::{PER_CUSTOMER_LIMIT_MAX, STOCK_MAX};
use flashsale_core::{Durability, ItemSpec, SaleConfig};
use kube::ResourceExt;

use crate::crd::{DurabilitySpec, FlashSale, NAME_LEN_MAX, NODES_REPLICAS_MAX, ReplicationMode};

/// A spec the operator will not run, and the field at fault. Waits for a spec change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks the spec and returns the config every node of the sale is given. The sale's
/// own rules are the node's (`flashsale_core::rules`, through [`SaleConfig::check`]);
/// only what is Kubernetes' (names, replicas, Redis, autoscaling bounds) is checked here.
pub fn validate(sale: &FlashSale) -> Result<SaleConfig, InvalidSpec> {
    let name = sale.name_any();
    if name.len() > NAME_LEN_MAX {
        return Err(invalid(
            "metadata.name",
            format!("at most {NAME_LEN_MAX} characters"),
        ));
    }
    let spec = &sale.spec;
    let mut items = Vec::with_capacity(spec.items.len());
    for (i, item) in spec.items.iter().enumerate() {
        let field = |f: &str| format!("spec.items[{i}].{f}");
        let stock = u64::try_from(item.stock)
            .map_err(|_| invalid(field("stock"), format!("must be 0 to {STOCK_MAX}")))?;
        let per_customer_limit = u32::try_from(item.per_customer_limit).map_err(|_| {
            invalid(
                field("perCustomerLimit"),
                format!("must be 0 (no limit) to {PER_CUSTOMER_LIMIT_MAX}"),
            )
        })?;
        items.push(ItemSpec {
            sku: item.sku.clone(),
            stock,
            per_customer_limit,
        });
    }
    if spec.reservation_ttl.is_negative() {
        return Err(invalid("spec.reservationTtl", "must not be negative"));
    }
    let ttl: std::time::Duration = spec.reservation_ttl.into();
    let config = SaleConfig {
        name,
        items,
        starts_at_ms: spec.window.starts_at.as_ref().map(|t| t.0.as_millisecond()),
        ends_at_ms: spec.window.ends_at.as_ref().map(|t| t.0.as_millisecond()),
        reservation_ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        durability: match spec.durability {
            DurabilitySpec::Fsync => Durability::Fsync,
            DurabilitySpec::NoSync => Durability::NoSync,
        },
    };
    config
        .check()
        .map_err(|e| invalid(spec_field(&e.field), e.reason))?;
    if !(1..=NODES_REPLICAS_MAX).contains(&spec.nodes.replicas) {
        return Err(invalid(
            "spec.nodes.replicas",
            format!("between 1 and {NODES_REPLICAS_MAX}"),
        ));
    }
    if spec.replication.mode == ReplicationMode::Quorum && spec.nodes.replicas < 2 {
        return Err(invalid(
            "spec.nodes.replicas",
            "at least 2 with replication.mode quorum (a purchase is acknowledged once it is durable on a secondary too: with none, every purchase would time out)",
        ));
    }
    if spec.redis.managed == spec.redis.external_url_secret_ref.is_some() {
        return Err(invalid(
            "spec.redis",
            "set managed: true, or managed: false with externalUrlSecretRef (not both)",
        ));
    }
    let a = &spec.autoscaling;
    if a.min_replicas > a.max_replicas {
        return Err(invalid(
            "spec.autoscaling.minReplicas",
            "must not exceed maxReplicas",
        ));
    }
    let (stable, panic): (std::time::Duration, std::time::Duration) =
        (a.stable_window.into(), a.panic_window.into());
    if panic >= stable {
        return Err(invalid(
            "spec.autoscaling.panicWindow",
            "must be shorter than stableWindow",
        ));
    }
    if let Some(n) = a.pre_scale_replicas
        && !(a.min_replicas..=a.max_replicas).contains(&n)
    {
        return Err(invalid(
            "spec.autoscaling.preScaleReplicas",
            "must be between minReplicas and maxReplicas",
        ));
    }
    Ok(config)
}

/// Where a field of the node's config sits in the FlashSale.
pub fn spec_field(config_field: &str) -> String {
    match config_field {
        "name" => "metadata.name".to_string(),
        "reservationTtlMs" => "spec.reservationTtl".to_string(),
        "startsAtMs" => "spec.window.startsAt".to_string(),
        "endsAtMs" => "spec.window.endsAt".to_string(),
        other => format!("spec.{other}"),
    }
}

/// A short stable fingerprint of a config: a node whose pod carries the same hash
/// has this exact config (window and TTL included, which the node's status does not show).
pub fn config_hash(config: &SaleConfig) -> String {
    let bytes = serde_json::to_vec(config).expect("a SaleConfig always serializes");
    format!("{:08x}", crc32c::crc32c(&bytes))
}
