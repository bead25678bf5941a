//! Validate: the spec as the nodes will run it. Pure. The API server's CEL rules refuse
//! most mistakes at `kubectl apply`; this repeats them (a CRD can be installed without
//! them, or edited) and turns the spec into the node's [`SaleConfig`].

use std::collections::BTreeSet;

use flashsale_core::{Durability, ItemSpec, SaleConfig};
use kube::ResourceExt;

use crate::crd::{DurabilitySpec, FlashSale, ITEMS_MAX, NAME_LEN_MAX, NODES_REPLICAS_MAX};

/// Longest SKU the node accepts (the CRD's pattern allows 64 characters).
const SKU_LEN_MAX: usize = 64;
const STOCK_MAX: i64 = 1_000_000_000;
const RESERVATION_TTL_MIN_MS: u64 = 1_000;
const RESERVATION_TTL_MAX_MS: u64 = 24 * 3_600 * 1_000;

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

/// Checks the spec and returns the config every node of the sale is given.
pub fn validate(sale: &FlashSale) -> Result<SaleConfig, InvalidSpec> {
    let name = sale.name_any();
    if name.len() > NAME_LEN_MAX {
        return Err(invalid(
            "metadata.name",
            format!("at most {NAME_LEN_MAX} characters"),
        ));
    }
    let spec = &sale.spec;
    if spec.items.is_empty() {
        return Err(invalid("spec.items", "at least one item"));
    }
    if spec.items.len() > ITEMS_MAX {
        return Err(invalid("spec.items", format!("at most {ITEMS_MAX} items")));
    }
    let mut skus = BTreeSet::new();
    let mut items = Vec::with_capacity(spec.items.len());
    for (i, item) in spec.items.iter().enumerate() {
        let field = |f: &str| format!("spec.items[{i}].{f}");
        if !sku_is_valid(&item.sku) {
            return Err(invalid(
                field("sku"),
                "letters, digits, '.', '_', '-', starting with a letter or digit, at most 64",
            ));
        }
        if !skus.insert(item.sku.as_str()) {
            return Err(invalid(
                field("sku"),
                format!("duplicate sku {:?}", item.sku),
            ));
        }
        if !(0..=STOCK_MAX).contains(&item.stock) {
            return Err(invalid(
                field("stock"),
                format!("between 0 and {STOCK_MAX}"),
            ));
        }
        let per_customer_limit = u32::try_from(item.per_customer_limit)
            .map_err(|_| invalid(field("perCustomerLimit"), "between 0 and 4294967295"))?;
        items.push(ItemSpec {
            sku: item.sku.clone(),
            stock: item.stock as u64,
            per_customer_limit,
        });
    }
    let starts_at_ms = spec.window.starts_at.as_ref().map(|t| t.0.as_millisecond());
    let ends_at_ms = spec.window.ends_at.as_ref().map(|t| t.0.as_millisecond());
    if let (Some(start), Some(end)) = (starts_at_ms, ends_at_ms)
        && start >= end
    {
        return Err(invalid("spec.window.endsAt", "must be after startsAt"));
    }
    if spec.reservation_ttl.is_negative() {
        return Err(invalid("spec.reservationTtl", "must not be negative"));
    }
    let ttl: std::time::Duration = spec.reservation_ttl.into();
    let reservation_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if !(RESERVATION_TTL_MIN_MS..=RESERVATION_TTL_MAX_MS).contains(&reservation_ttl_ms) {
        return Err(invalid("spec.reservationTtl", "between 1s and 24h"));
    }
    if !(1..=NODES_REPLICAS_MAX).contains(&spec.nodes.replicas) {
        return Err(invalid(
            "spec.nodes.replicas",
            format!("between 1 and {NODES_REPLICAS_MAX}"),
        ));
    }
    if spec.redis.managed == spec.redis.external_url_secret_ref.is_some() {
        return Err(invalid(
            "spec.redis",
            "set managed: true, or managed: false with externalUrlSecretRef (not both)",
        ));
    }
    if spec.autoscaling.min_replicas > spec.autoscaling.max_replicas {
        return Err(invalid(
            "spec.autoscaling.minReplicas",
            "must not exceed maxReplicas",
        ));
    }
    Ok(SaleConfig {
        name,
        items,
        starts_at_ms,
        ends_at_ms,
        reservation_ttl_ms,
        durability: match spec.durability {
            DurabilitySpec::Fsync => Durability::Fsync,
            DurabilitySpec::NoSync => Durability::NoSync,
        },
    })
}

fn sku_is_valid(sku: &str) -> bool {
    let mut chars = sku.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && sku.len() <= SKU_LEN_MAX
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A short stable fingerprint of a config: a node whose pod carries the same hash
/// has this exact config (window and TTL included, which the node's status does not show).
pub fn config_hash(config: &SaleConfig) -> String {
    let bytes = serde_json::to_vec(config).expect("a SaleConfig always serializes");
    format!("{:08x}", crc32c::crc32c(&bytes))
}
