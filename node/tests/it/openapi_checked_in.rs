//! The OpenAPI document checked in at `node/openapi.json` — what a shop generates its
//! client from (`clients/typescript`) — is exactly the one the node serves at
//! `GET /openapi.json`, which is generated from the Rust types and the handlers'
//! annotations. A change to either that is not also made to the checked-in document
//! fails here; regenerate it with
//! `UPDATE_OPENAPI=1 cargo test -p stock-node --test it openapi_checked_in` and review
//! the diff (a shop's client changes with it).

use std::path::Path;

#[test]
fn the_checked_in_openapi_document_is_the_one_the_node_serves() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let served = serde_json::to_string_pretty(&stock_node::http::openapi::document())
        .expect("the document serialises")
        + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).expect("write node/openapi.json");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != served {
        let first = checked_in
            .lines()
            .zip(served.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(served.lines().count()));
        panic!(
            "node/openapi.json is not the document the node serves (first difference at line {}: checked in {:?}, served {:?}); \
             regenerate it with `UPDATE_OPENAPI=1 cargo test -p stock-node --test it openapi_checked_in` and review the diff",
            first + 1,
            checked_in.lines().nth(first).unwrap_or("<end>"),
            served.lines().nth(first).unwrap_or("<end>"),
        );
    }
}
