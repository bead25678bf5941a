//! The JSON body extractor. Unlike axum's own `Json`, every rejection is a JSON
//! [`ErrorBody`](flashsale_core::ErrorBody) that names the field at fault (its path,
//! e.g. `quantity` or `items[1].stock`) and never plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use flashsale_core::ErrorCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A request body parsed as JSON into `T`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Content-Type is not checked: `curl -d` sends a form type, and the body is
        // JSON or it is refused below anyway.
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is over the size limit",
                )
            } else {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("could not read the request body: {e}"),
                )
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses `bytes` as one JSON value of type `T`, nothing before or after it.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(rejection)?;
    de.end()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn rejection(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !matches!(inner.classify(), serde_json::error::Category::Data) {
        return ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {inner}"));
    }
    let message = inner.to_string();
    // serde reports a missing or unknown field at the path of the object holding it,
    // naming the field only in its message: put the two together.
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match (named, path.as_str()) {
        (Some(name), ".") => name.to_string(),
        (Some(name), p) if p.ends_with(name) => p.to_string(),
        (Some(name), p) => format!("{p}.{name}"),
        (None, ".") => return ApiError::new(ErrorCode::BadRequest, format!("body: {message}")),
        (None, p) => p.to_string(),
    };
    ApiError::field(field.clone(), format!("field `{field}`: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_core::{PurchaseRequest, SaleConfig};

    fn field_of<T: DeserializeOwned>(body: &str) -> (ErrorCode, Option<String>, String) {
        let e = parse::<T>(body.as_bytes()).err().expect("must be refused");
        (e.0.code, e.0.field, e.0.message)
    }

    #[test]
    fn each_kind_of_bad_body_names_its_field() {
        let (c, f, m) =
            field_of::<PurchaseRequest>(r#"{"sku":"a","customer":"c","idempotencyKey":"k"}"#);
        assert_eq!((c, f.as_deref()), (ErrorCode::BadRequest, Some("quantity")));
        assert!(m.contains("missing field"), "{m}");
        let (_, f, m) = field_of::<PurchaseRequest>(
            r#"{"sku":"a","quantity":"2","customer":"c","idempotencyKey":"k"}"#,
        );
        assert_eq!(f.as_deref(), Some("quantity"));
        assert!(m.contains("invalid type"), "{m}");
        let (_, f, _) = field_of::<PurchaseRequest>(
            r#"{"sku":"a","quantity":-1,"customer":"c","idempotencyKey":"k"}"#,
        );
        assert_eq!(f.as_deref(), Some("quantity"));
        let (_, f, m) = field_of::<PurchaseRequest>(
            r#"{"sku":"a","quantity":1,"customer":"c","idempotencyKey":"k","price":1}"#,
        );
        assert_eq!(f.as_deref(), Some("price"));
        assert!(m.contains("unknown field"), "{m}");
        let (_, f, _) =
            field_of::<SaleConfig>(r#"{"name":"s","reservationTtlMs":1,"items":[{"sku":"a"}]}"#);
        assert_eq!(f.as_deref(), Some("items[0].stock"));
        let (_, f, _) = field_of::<SaleConfig>(
            r#"{"name":"s","reservationTtlMs":1,"items":[{"sku":"a","stock":1,"x":2}]}"#,
        );
        assert_eq!(f.as_deref(), Some("items[0].x"));
    }

    #[test]
    fn malformed_json_is_a_400_without_a_field() {
        for body in ["", "{", "{\"sku\":}", "[1,2]x", "null", "\u{0}"] {
            let e = parse::<PurchaseRequest>(body.as_bytes()).err().unwrap();
            assert_eq!(e.0.code, ErrorCode::BadRequest, "{body:?}");
        }
        let (_, f, m) = field_of::<PurchaseRequest>(
            r#"{"sku":"a","quantity":1,"customer":"c","idempotencyKey":"k"} {}"#,
        );
        assert_eq!(f, None);
        assert!(m.contains("malformed JSON"), "{m}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let body = "[".repeat(100_000);
        assert!(parse::<serde_json::Value>(body.as_bytes()).is_err());
    }
}
