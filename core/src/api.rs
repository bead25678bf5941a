//! The stock node's HTTP wire types (JSON, camelCase).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMs;

/// A purchase: holds `quantity` units of `sku` for `customer` until confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The item (`rules::SKU_PATTERN`).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    pub sku: String,
    /// Units wanted: at least 1, at most the item's per-customer limit (else 422
    /// `bad_quantity`).
    #[schema(format = Int64, minimum = 1, maximum = 4294967295u64)]
    pub quantity: u32,
    /// The buyer; the per-customer limit counts per this id. 1 to 128 characters, not
    /// blank.
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    pub customer: String,
    /// Client-chosen key: the same key with the same body returns the first answer.
    /// 1 to 128 characters, not blank. May instead (or also, the same) be sent as the
    /// `Idempotency-Key` header; one of the two is required.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    pub idempotency_key: String,
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OrderState {
    /// Stock is held until `expiresAtMs`.
    Reserved,
    /// Sold.
    Confirmed,
    /// Cancelled by the client; its stock went back.
    Cancelled,
    /// Not confirmed in time; its stock went back.
    Expired,
}

/// An order as the node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Unique in the sale; assigned by the primary (the WAL sequence of the purchase).
    pub id: u64,
    pub sku: String,
    pub quantity: u32,
    pub customer: String,
    pub idempotency_key: String,
    pub state: OrderState,
    pub created_at_ms: UnixMs,
    /// When an unconfirmed hold returns to stock.
    pub expires_at_ms: UnixMs,
    /// When it was confirmed (the primary's clock, from the confirm's WAL record);
    /// absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at_ms: Option<UnixMs>,
}

/// One item's stock as the node sees it. Always `sold + held + remaining == stock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    pub sku: String,
    /// Units on sale in total.
    pub stock: u64,
    /// Units in confirmed orders.
    pub sold: u64,
    /// Units held by reservations not yet confirmed.
    pub held: u64,
    /// Units still for sale.
    pub remaining: u64,
    pub per_customer_limit: u32,
}
