//! Who a node is in its sale: its role and fencing epoch. Both the admin API (the
//! operator's word) and the WAL (a primary logs its own assignment) speak it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What part a node plays in its sale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Started but not told its role yet: answers reads, refuses purchases (503).
    #[default]
    Standby,
    /// The one node that sells.
    Primary,
    /// Holds a live copy; answers reads, forwards or refuses purchases.
    Secondary,
}

impl Role {
    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// The operator's word on a node's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleAssignment {
    pub role: Role,
    /// Fencing epoch, 1 to 2⁵³−1: a node refuses writes and replication from an older
    /// epoch.
    #[schema(minimum = 1, maximum = 9007199254740991u64)]
    pub epoch: u64,
    /// The primary's base URL (`http://host:port`, at most 512 bytes); a secondary must
    /// have one.
    #[serde(default)]
    #[schema(max_length = 512)]
    pub primary_url: Option<String>,
}
