//! The OpenAPI document (`GET /openapi.json`), generated from the Rust types and the
//! handlers' annotations, so it cannot drift from what the node serves.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, ops, public, replication};

#[derive(OpenApi)]
#[openapi(
    info(title = "flashsale stock node", description = "Sells a flash sale's items durably, without overselling. Every error is an ErrorBody with a stable `code`."),
    paths(
        public::list_items, public::get_item, public::purchase, public::confirm, public::cancel, public::get_order,
        admin::status, admin::put_config, admin::put_role, admin::put_lease, admin::delete_lease,
        ops::healthz, ops::readyz, ops::metrics,
        replication::wal, replication::post_wal, replication::snapshot, replication::put_snapshot,
    ),
    components(schemas(flashsale_core::ErrorBody, flashsale_core::ErrorCode, flashsale_core::OrderState)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served.
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
