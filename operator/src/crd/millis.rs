//! Failover timestamps to the millisecond. `metav1.Time` writes whole seconds, which
//! would round every step of a failover that takes a few seconds; these fields are
//! still RFC 3339 `date-time` strings (`2026-11-30T02:17:21.374Z`), which `kubectl`
//! and the CRD schema read like any other.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Deserializer, Serializer};

fn format(t: &Time) -> String {
    t.0.round(jiff::Unit::Millisecond)
        .unwrap_or(t.0)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn serialize<S: Serializer>(t: &Time, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
    Time::deserialize(d)
}

/// The same for an `Option<Time>`.
pub mod opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Time>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
        Option::<Time>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(with = "super")]
        at: Time,
    }

    #[test]
    fn a_time_keeps_its_milliseconds_through_a_round_trip() {
        let at = Time("2026-11-30T02:17:21.374912Z".parse().unwrap());
        let json = serde_json::to_string(&T { at }).unwrap();
        assert_eq!(json, r#"{"at":"2026-11-30T02:17:21.375Z"}"#);
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(back.at.0.as_millisecond() % 1000, 375);
        let whole: T = serde_json::from_str(r#"{"at":"2026-11-30T02:17:21Z"}"#).unwrap();
        assert_eq!(whole.at.0.as_millisecond() % 1000, 0);
    }
}
