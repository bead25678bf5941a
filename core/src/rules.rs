//! The rules and limits of a sale, in one place. The node checks them when it loads a
//! sale file, takes `PUT /admin/v1/config` or a purchase, and again in its engine; the
//! operator's CRD carries the same figures as schema bounds, and the operator checks a
//! spec with [`SaleConfig::check`] before it gives it to a node. So a manifest the API
//! server accepts is a sale every node accepts, and the other way round (the operator's
//! tests compare the CRD's schema with these constants).

use crate::role::{Role, RoleAssignment};
use crate::{PurchaseRequest, SaleConfig};

/// Longest SKU, in bytes.
pub const SKU_BYTES_MAX: usize = 64;
/// What a SKU looks like: letters, digits, `.`, `_`, `-`, starting with a letter or a
/// digit, at most [`SKU_BYTES_MAX`] (the `63` is that limit less the first character).
pub const SKU_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// Longest customer id, idempotency key or sale name, in characters (each is kept per order
/// or per sale, so one request cannot grow the node's memory without bound).
pub const ID_CHARS_MAX: usize = 128;
/// Most items one sale may list (bounds the node's config and the CRD's CEL uniqueness check).
pub const ITEMS_MAX: usize = 200;
/// Most units of one item.
pub const STOCK_MAX: u64 = 1_000_000_000;
/// Largest per-customer limit (0 = no limit).
pub const PER_CUSTOMER_LIMIT_MAX: u32 = 1_000_000;
/// Shortest and longest reservation TTL: a second and a day.
pub const RESERVATION_TTL_MS_MIN: u64 = 1_000;
pub const RESERVATION_TTL_MS_MAX: u64 = 86_400_000;

/// Largest fencing epoch: 2^53 − 1, a JSON number every client reads exactly, and far
/// enough from `u64::MAX` that a node can always be fenced by a higher epoch.
pub const EPOCH_MAX: u64 = (1 << 53) - 1;
/// Longest primary URL, in bytes.
pub const URL_BYTES_MAX: usize = 512;

/// A value that breaks a rule, and the field that holds it (a JSON path of the
/// node's wire types: `items[1].sku`, `reservationTtlMs`, `customer`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct RuleError {
    pub field: String,
    pub reason: String,
}

fn broken(field: impl Into<String>, reason: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `sku` matches [`SKU_PATTERN`].
pub fn sku_is_valid(sku: &str) -> bool {
    // By bytes: every character the pattern allows is ASCII, and every byte of any
    // other character is not.
    let b = sku.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.len() <= SKU_BYTES_MAX
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A SKU, or why it is not one.
pub fn check_sku(field: &str, sku: &str) -> Result<(), RuleError> {
    if sku_is_valid(sku) {
        return Ok(());
    }
    Err(broken(
        field,
        format!(
            "must be 1 to {SKU_BYTES_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit (got {} bytes)",
            sku.len()
        ),
    ))
}

/// A customer id, idempotency key or sale name: 1 to [`ID_CHARS_MAX`] characters (as
/// JSON Schema's `maxLength` and the CRD count them), not blank.
pub fn check_id(field: &str, v: &str) -> Result<(), RuleError> {
    // The usual id without counting: at most that many bytes is at most that many
    // characters, and one that starts with a visible ASCII character is not blank.
    if v.len() <= ID_CHARS_MAX && v.as_bytes().first().is_some_and(u8::is_ascii_graphic) {
        return Ok(());
    }
    let chars = v.chars().count();
    if chars == 0 || chars > ID_CHARS_MAX || v.trim().is_empty() {
        return Err(broken(
            field,
            format!("must be 1 to {ID_CHARS_MAX} characters, not blank (got {chars})"),
        ));
    }
    Ok(())
}

impl SaleConfig {
    /// Every rule a sale must keep on its own (what depends on the orders already taken,
    /// such as stock never below what is sold, the engine checks against its state).
    pub fn check(&self) -> Result<(), RuleError> {
        check_id("name", &self.name)?;
        if self.items.is_empty() || self.items.len() > ITEMS_MAX {
            return Err(broken(
                "items",
                format!(
                    "must list 1 to {ITEMS_MAX} items (got {})",
                    self.items.len()
                ),
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            check_sku(&format!("items[{i}].sku"), &item.sku)?;
            if self.items[..i].iter().any(|o| o.sku == item.sku) {
                return Err(broken(
                    format!("items[{i}].sku"),
                    format!("`{}` is listed twice", item.sku),
                ));
            }
            if item.stock > STOCK_MAX {
                return Err(broken(
                    format!("items[{i}].stock"),
                    format!("must be 0 to {STOCK_MAX}"),
                ));
            }
            if item.per_customer_limit > PER_CUSTOMER_LIMIT_MAX {
                return Err(broken(
                    format!("items[{i}].perCustomerLimit"),
                    format!("must be 0 (no limit) to {PER_CUSTOMER_LIMIT_MAX}"),
                ));
            }
        }
        if let (Some(s), Some(e)) = (self.starts_at_ms, self.ends_at_ms)
            && e <= s
        {
            return Err(broken("endsAtMs", "must be after startsAtMs"));
        }
        if !(RESERVATION_TTL_MS_MIN..=RESERVATION_TTL_MS_MAX).contains(&self.reservation_ttl_ms) {
            return Err(broken(
                "reservationTtlMs",
                format!(
                    "must be {RESERVATION_TTL_MS_MIN} to {RESERVATION_TTL_MS_MAX} (1 s to 24 h)"
                ),
            ));
        }
        Ok(())
    }
}

impl PurchaseRequest {
    /// What can be said of a purchase without the sale: well-formed ids. (Quantity
    /// depends on the item's limit; the engine checks it.)
    pub fn check(&self) -> Result<(), RuleError> {
        check_sku("sku", &self.sku)?;
        check_id("customer", &self.customer)?;
        check_id("idempotencyKey", &self.idempotency_key)
    }
}

impl RoleAssignment {
    /// An epoch a node can be fenced past, and a primary URL that is one (`http(s)://`
    /// with a host), which a secondary must have.
    pub fn check(&self) -> Result<(), RuleError> {
        if self.epoch == 0 || self.epoch > EPOCH_MAX {
            return Err(broken(
                "epoch",
                format!("must be 1 to {EPOCH_MAX} (got {})", self.epoch),
            ));
        }
        match (&self.primary_url, self.role) {
            (None, Role::Secondary) => {
                return Err(broken(
                    "primaryUrl",
                    "a secondary needs the primary's URL to follow",
                ));
            }
            (Some(u), _) => check_url("primaryUrl", u)?,
            (None, _) => {}
        }
        Ok(())
    }
}

/// What a node URL (`primaryUrl`) is: `http://` or `https://`, a host that is a DNS
/// name (its last label starting with a letter) or a dotted IPv4 address, an optional
/// port 1–65535, an optional path of visible ASCII. No IPv6 literals, user info or
/// international names: the operator names pods by IP or Service name. The OpenAPI
/// document states this same pattern.
pub const URL_PATTERN: &str = concat!(
    r"^https?://",
    r"(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r"|([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)",
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(/[!-~]*)?$"
);

/// A node URL ([`URL_PATTERN`]), at most [`URL_BYTES_MAX`] bytes.
pub fn check_url(field: &str, v: &str) -> Result<(), RuleError> {
    static URL: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    if v.len() > URL_BYTES_MAX {
        return Err(broken(
            field,
            format!("must be at most {URL_BYTES_MAX} bytes"),
        ));
    }
    let url = URL.get_or_init(|| regex::Regex::new(URL_PATTERN).expect("URL_PATTERN compiles"));
    if url.is_match(v) {
        Ok(())
    } else {
        Err(broken(
            field,
            format!(
                "`{v}` is not a node URL: http(s)://, a DNS name or an IPv4 address, an optional port, an optional path"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ItemSpec;

    fn sale() -> SaleConfig {
        SaleConfig {
            name: "s".into(),
            items: vec![ItemSpec {
                sku: "a".into(),
                stock: 1,
                per_customer_limit: 0,
            }],
            starts_at_ms: None,
            ends_at_ms: None,
            reservation_ttl_ms: 60_000,
            durability: Default::default(),
        }
    }

    #[test]
    fn the_pattern_says_what_sku_is_valid_checks() {
        let max = "a".repeat(SKU_BYTES_MAX);
        let over = "a".repeat(SKU_BYTES_MAX + 1);
        for (sku, ok) in [
            ("a", true),
            ("A.b_c-9", true),
            (max.as_str(), true),
            (over.as_str(), false),
            ("", false),
            ("-a", false),
            ("a b", false),
            ("é", false),
            ("aé", false),
            ("a/b", false),
        ] {
            assert_eq!(sku_is_valid(sku), ok, "{sku:?}");
        }
        assert!(SKU_PATTERN.contains(&format!("{{0,{}}}", SKU_BYTES_MAX - 1)));
    }

    proptest::proptest! {
        /// The short cut for the usual id says what the whole rule says.
        #[test]
        fn an_id_is_checked_as_the_rule_says(v in "[ \t\u{3000}a-zé😀\u{0}]{0,140}") {
            let chars = v.chars().count();
            let ok = (1..=ID_CHARS_MAX).contains(&chars) && !v.trim().is_empty();
            proptest::prop_assert_eq!(check_id("f", &v).is_ok(), ok);
        }
    }

    #[test]
    fn ids_at_and_past_the_limit() {
        for (v, ok) in [
            ("a".repeat(ID_CHARS_MAX), true),
            ("a".repeat(ID_CHARS_MAX + 1), false),
            ("é".repeat(ID_CHARS_MAX), true),
            ("é".repeat(ID_CHARS_MAX + 1), false),
            (String::new(), false),
            (" \t".into(), false),
            ("\u{3000}".into(), false),
            (" a".into(), true),
        ] {
            assert_eq!(check_id("f", &v).is_ok(), ok, "{v:?}");
        }
    }

    #[test]
    fn each_limit_is_refused_one_past_it_naming_the_field() {
        let mut c = sale();
        assert_eq!(c.check(), Ok(()));
        c.items[0].stock = STOCK_MAX;
        c.items[0].per_customer_limit = PER_CUSTOMER_LIMIT_MAX;
        assert_eq!(c.check(), Ok(()));
        c.items[0].stock = STOCK_MAX + 1;
        assert_eq!(c.check().unwrap_err().field, "items[0].stock");
        c.items[0].stock = 1;
        c.items[0].per_customer_limit = PER_CUSTOMER_LIMIT_MAX + 1;
        assert_eq!(c.check().unwrap_err().field, "items[0].perCustomerLimit");
        let mut c = sale();
        c.reservation_ttl_ms = RESERVATION_TTL_MS_MIN - 1;
        assert_eq!(c.check().unwrap_err().field, "reservationTtlMs");
        c.reservation_ttl_ms = RESERVATION_TTL_MS_MAX + 1;
        assert_eq!(c.check().unwrap_err().field, "reservationTtlMs");
        let mut c = sale();
        c.items = (0..=ITEMS_MAX)
            .map(|i| ItemSpec {
                sku: format!("i{i}"),
                stock: 1,
                per_customer_limit: 0,
            })
            .collect();
        assert_eq!(c.check().unwrap_err().field, "items");
        c.items.pop();
        assert_eq!(c.check(), Ok(()));
        let mut c = sale();
        c.items.push(c.items[0].clone());
        assert_eq!(c.check().unwrap_err().field, "items[1].sku");
        c.name = "x".repeat(ID_CHARS_MAX + 1);
        assert_eq!(c.check().unwrap_err().field, "name");
    }

    #[test]
    fn a_purchase_needs_well_formed_ids() {
        let ok = PurchaseRequest {
            sku: "a".into(),
            quantity: 1,
            customer: "c".repeat(ID_CHARS_MAX),
            idempotency_key: "k".into(),
        };
        assert_eq!(ok.check(), Ok(()));
        let mut r = ok.clone();
        r.customer.push('c');
        assert_eq!(r.check().unwrap_err().field, "customer");
        let mut r = ok.clone();
        r.idempotency_key = " ".into();
        assert_eq!(r.check().unwrap_err().field, "idempotencyKey");
        let mut r = ok;
        r.sku = "no such sku!".into();
        assert_eq!(r.check().unwrap_err().field, "sku");
    }

    #[test]
    fn a_role_assignment_names_what_is_wrong() {
        let a = |role, epoch, url: Option<&str>| RoleAssignment {
            role,
            epoch,
            primary_url: url.map(str::to_owned),
        };
        assert!(a(Role::Primary, 1, None).check().is_ok());
        assert!(
            a(Role::Secondary, 2, Some("http://10.0.0.7:8080"))
                .check()
                .is_ok()
        );
        assert!(a(Role::Standby, EPOCH_MAX, None).check().is_ok());
        for (bad, field) in [
            (a(Role::Primary, 0, None), "epoch"),
            (a(Role::Primary, u64::MAX, None), "epoch"),
            (a(Role::Primary, EPOCH_MAX + 1, None), "epoch"),
            (a(Role::Secondary, 2, None), "primaryUrl"),
            (a(Role::Secondary, 2, Some("not a url")), "primaryUrl"),
            (a(Role::Secondary, 2, Some("ftp://h/")), "primaryUrl"),
            (a(Role::Secondary, 2, Some("http://")), "primaryUrl"),
            (a(Role::Primary, 2, Some("x")), "primaryUrl"),
        ] {
            assert_eq!(bad.check().unwrap_err().field, field, "{bad:?}");
        }
    }
}
