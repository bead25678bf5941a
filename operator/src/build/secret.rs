//! The node admin Secret: the bearer token every admin call carries. Created once with a
//! random token (the caller draws it, so this stays pure) and never rotated by reconcile.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::Owner;
use crate::labels;

pub fn build_admin_secret(owner: &Owner, token: &str) -> Secret {
    Secret {
        metadata: owner.meta(
            labels::admin_secret_name(&owner.name),
            labels::component_labels(&owner.name, labels::NODE_APP),
        ),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            labels::ADMIN_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
