//! The rules of one sale: what is sold, how much of it, to whom, and when.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMs;

/// One item on sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemSpec {
    /// Stock-keeping unit: the item's unique name in the sale.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    pub sku: String,
    /// Units on sale, at most 10⁹. Raising it adds stock; it can never drop below what
    /// is sold and held.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub stock: u64,
    /// Most units one customer may hold or buy (0 = no limit), at most 10⁶.
    #[serde(default)]
    #[schema(format = Int64, minimum = 0, maximum = 1000000)]
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
    /// The sale's name (the FlashSale's name on Kubernetes): 1 to 128 characters, not
    /// blank.
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    pub name: String,
    /// 1 to 200 items, each SKU once.
    #[schema(min_items = 1, max_items = 200)]
    pub items: Vec<ItemSpec>,
    /// Opening time (Unix ms); `None` means open now.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub starts_at_ms: Option<UnixMs>,
    /// Closing time (Unix ms), after `startsAtMs`; `None` means never closes.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub ends_at_ms: Option<UnixMs>,
    /// How long a purchase holds stock before it must be confirmed: 1 s to 24 h.
    #[schema(minimum = 1000, maximum = 86400000)]
    pub reservation_ttl_ms: u64,
    #[serde(default)]
    pub durability: Durability,
}
