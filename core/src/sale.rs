//! The rules of one sale: what is sold, how much of it, to whom, and when.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMs;

/// One item on sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemSpec {
    /// Stock-keeping unit: the item's unique name in the sale.
    pub sku: String,
    /// Units on sale. Raising it adds stock; it can never drop below what is sold and held.
    pub stock: u64,
    /// Most units one customer may hold or buy (0 = no limit).
    #[serde(default)]
    pub per_customer_limit: u32,
}

/// How a purchase becomes durable before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// One `fdatasync` per group-committed batch before any answer (the default).
    #[default]
    Fsync,
    /// Written but not synced before the answer: a power loss can lose acknowledged
    /// sales. Only for benchmarks and sales that say so explicitly.
    NoSync,
}

/// The whole configuration of a sale as the node holds it (logged in the WAL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaleConfig {
    /// The sale's name (the FlashSale's name on Kubernetes).
    pub name: String,
    pub items: Vec<ItemSpec>,
    /// Opening time; `None` means open now.
    #[serde(default)]
    pub starts_at_ms: Option<UnixMs>,
    /// Closing time; `None` means never closes.
    #[serde(default)]
    pub ends_at_ms: Option<UnixMs>,
    /// How long a purchase holds stock before it must be confirmed.
    pub reservation_ttl_ms: u64,
    #[serde(default)]
    pub durability: Durability,
}
