//! The benchmark's HTTP ceiling (`stock-node bench-noop`): the node's listener, JSON
//! extractor and answer for a purchase, with no engine behind it.

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use flashsale_core::{Order, OrderState, PurchaseRequest};
use tokio::net::TcpListener;

use super::Limits;
use super::json::Json;

/// The benchmark's ceiling: the same server, extractor and JSON answer as a purchase,
/// with no engine behind it.
pub async fn serve_noop(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/v1/purchases", post(noop_purchase));
    let limits = super::server::ConnectionLimits::from(&Limits::default());
    super::server::serve(listener, app, limits, shutdown).await
}

async fn noop_purchase(Json(req): Json<PurchaseRequest>) -> Response {
    let order = Order {
        id: 1,
        sku: req.sku,
        quantity: req.quantity,
        customer: req.customer,
        idempotency_key: req.idempotency_key,
        state: OrderState::Reserved,
        created_at_ms: 0,
        expires_at_ms: 0,
        confirmed_at_ms: None,
    };
    super::json::answer(StatusCode::CREATED, &order)
}
