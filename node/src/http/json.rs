//! The JSON body extractor. Unlike axum's own `Json`, every rejection is a JSON
//! [`ErrorBody`](flashsale_core::ErrorBody) that names the field at fault (its path,
//! e.g. `quantity` or `items[1].stock`) and never plain text.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_core::ErrorCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A request body parsed as JSON into `T`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    /// Reads the whole body. Its size is bounded where the route's limit is known, in
    /// the node's middleware (`super::ops::Observe`): a declared length over it is
    /// refused before reading, and a body of unknown length is read through a limit
    /// (axum's `DefaultBodyLimit` does not apply here). Here, only the largest JSON
    /// body any route takes ([`JSON_BODY_BYTES_MAX`]), for a listener without that
    /// middleware (the no-op ceiling).
    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        // Content-Type is not checked: `curl -d` sends a form type, and the body is
        // JSON or it is refused below anyway.
        let bytes = http_body_util::Limited::new(req.into_body(), JSON_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| {
                if over_limit(&*e) {
                    ApiError::body_too_large()
                } else {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("could not read the request body: {e}"),
                    )
                }
            })?
            .to_bytes();
        parse(&bytes).map(Json)
    }
}

/// The largest JSON body any route takes: a forwarded batch's. `--body-bytes-max` is
/// at most this.
pub const JSON_BODY_BYTES_MAX: usize = super::FORWARD_BODY_BYTES_MAX;

/// Whether reading a body failed on a size limit (`http_body_util::Limited`, this
/// extractor's or the middleware's inside it).
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `value` as a JSON answer with `status`: what axum's `Json` answers, serialised into
/// a buffer sized for an order in one go (axum's starts at 128 bytes and writes each
/// fragment through `BytesMut`: about 2 000 instructions more per purchase, counted
/// with callgrind).
pub fn answer<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = Vec::with_capacity(ANSWER_BYTES_FIRST);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        // Plain data cannot fail to serialise, but never panic on a path every client reaches.
        Err(e) => ApiError::new(ErrorCode::Internal, format!("serialising the answer: {e}"))
            .into_response(),
    }
}

/// The first buffer for an answer: an order with keys and names of a few dozen bytes
/// each fits.
const ANSWER_BYTES_FIRST: usize = 384;

/// Parses `bytes` as one JSON object of type `T`, nothing before or after it. Every
/// body the API takes is an object: a positional array (which serde would otherwise
/// read into a struct, field by field in order) is refused.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "body: must be a JSON object (`{…}` with named fields)",
        ));
    }
    // A valid body is parsed once, without the path tracking; only a refused one is
    // parsed again to name the field at fault. (Counted with callgrind, the tracking
    // was about 40% of a purchase body's parse.)
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        // `1.0` is an integer to JSON Schema (and to JavaScript): read it as one. Only
        // when the path-tracking parse met such a number, so a body without one is
        // never read into a `Value`.
        Err(e)
            if e.inner()
                .to_string()
                .starts_with("invalid type: floating point") =>
        {
            return parse_with_integral_floats(bytes).unwrap_or_else(|| Err(rejection(e)));
        }
        Err(e) => return Err(rejection(e)),
    };
    de.end()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Parses `bytes` with every number that has no fractional part (`136.0`, `1e3`) read
/// as an integer; None if the body is not JSON at all.
fn parse_with_integral_floats<T: DeserializeOwned>(bytes: &[u8]) -> Option<Result<T, ApiError>> {
    fn integral(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                // Only below 2^53, where every integer is a float exactly: beyond it
                // `-9223372036854775809` (out of i64, so read as a float) would
                // round into range.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if f.fract() == 0.0 && f.abs() < EXACT {
                    *n = if f >= 0.0 {
                        serde_json::Number::from(f as u64)
                    } else {
                        serde_json::Number::from(f as i64)
                    };
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(integral),
            serde_json::Value::Object(o) => o.values_mut().for_each(integral),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    integral(&mut v);
    Some(serde_path_to_error::deserialize(v).map_err(rejection))
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
    let named = ["missing field `", "unknown field `", "duplicate field `"]
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

    #[test]
    fn a_number_without_a_fraction_is_an_integer_and_one_with_is_refused() {
        let ok: PurchaseRequest =
            parse(br#"{"sku":"tee","quantity":2.0,"customer":"c","idempotencyKey":"k"}"#).unwrap();
        assert_eq!(ok.quantity, 2);
        let e = parse::<PurchaseRequest>(
            br#"{"sku":"tee","quantity":2.5,"customer":"c","idempotencyKey":"k"}"#,
        )
        .unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("quantity"));
        // Beyond the type's range stays refused, never saturated.
        let e = parse::<PurchaseRequest>(
            br#"{"sku":"tee","quantity":1e10,"customer":"c","idempotencyKey":"k"}"#,
        )
        .unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("quantity"));
        // Past 2^53 a float is not read as an integer (it may have been rounded).
        let e = parse::<SaleConfig>(
            br#"{"name":"s","items":[{"sku":"a","stock":1}],"reservationTtlMs":1000,"startsAtMs":-9223372036854775809}"#,
        )
        .unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("startsAtMs"));
    }
    use flashsale_core::{PurchaseRequest, SaleConfig};

    fn field_of<T: DeserializeOwned>(body: &str) -> (ErrorCode, Option<String>, String) {
        let e = parse::<T>(body.as_bytes()).err().expect("must be refused");
        (e.0.code, e.0.field, e.0.detail)
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
        let body = format!("{{\"a\":{}", "[".repeat(100_000));
        assert!(parse::<serde_json::Value>(body.as_bytes()).is_err());
    }

    #[test]
    fn a_positional_array_is_not_an_object() {
        // serde reads a struct from a sequence, field by field: refused here.
        let (c, f, m) = field_of::<PurchaseRequest>(r#"["a", 1, "c", "k"]"#);
        assert_eq!((c, f), (ErrorCode::BadRequest, None));
        assert!(m.contains("JSON object"), "{m}");
        assert!(parse::<SaleConfig>(br#"["s", [], null, null, 60000]"#).is_err());
    }

    #[test]
    fn a_duplicate_key_names_its_field() {
        let (c, f, m) = field_of::<PurchaseRequest>(
            r#"{"sku":"a","sku":"b","quantity":1,"customer":"c","idempotencyKey":"k"}"#,
        );
        assert_eq!((c, f.as_deref()), (ErrorCode::BadRequest, Some("sku")));
        assert!(m.contains("duplicate field"), "{m}");
    }
}
