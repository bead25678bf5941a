//! What the stock node and the operator share, with no Kubernetes in it: the sale's
//! rules, the HTTP wire types, the stable error codes, and the WAL record format.

pub mod admin;
pub mod api;
pub mod error;
pub mod replication;
pub mod role;
pub mod rules;
pub mod sale;
pub mod wal;

pub use api::{ItemView, Order, OrderState, PurchaseRequest};
pub use error::{ErrorBody, ErrorCode, PROBLEM_JSON, SellError};
pub use sale::{Durability, ItemSpec, SaleConfig};

/// Milliseconds since the Unix epoch: the only clock unit on the wire and in the WAL.
pub type UnixMs = i64;
