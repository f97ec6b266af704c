//! Reading method params: one reader, [`parse`], into a `#[derive(Deserialize)]` struct per
//! method (or per group of params several methods share), and the field helpers those structs
//! name in `#[serde(default, deserialize_with = "…")]`. What every method's params share:
//! - a string param that is absent, `null` or empty is "not given" ([`string`]);
//! - an address param (`to`, `threadId`, `accountId`) takes a number as well as a string, as
//!   chat and thread ids arrive from some channels ([`address`]);
//! - a count takes a non-negative integer, also written as an integral float (`5.0`), and is
//!   refused above its maximum ([`count`], [`count_max`]);
//! - an agent id is normalized as OpenClaw does ([`agent_id`]); a session key, which needs the
//!   configured default agent, is read as a string and made an `ids::SessionKey` by
//!   [`session_key`];
//! - a param of any other type is `INVALID_REQUEST` naming the field (`invalid params: limit
//!   must be an integer in 0..=1000`), and a missing required one says so (`invalid params:
//!   message is required`);
//! - params the struct does not name are ignored: OpenClaw's clients send some keel does not
//!   read.

use crate::error::RpcError;
use crate::ids::{AgentId, SessionKey};
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Reads a method's params into `T`. Any error names the field it is about.
pub fn parse<T: DeserializeOwned>(p: &Value) -> Result<T, RpcError> {
    if !p.is_object() {
        return Err(RpcError::invalid("invalid params: expected an object"));
    }
    serde_path_to_error::deserialize(p).map_err(|e| {
        let path = e.path().to_string();
        RpcError::invalid(describe(&path, &e.into_inner().to_string()))
    })
}

/// The message for an error at `path`. The helpers below say what a field must be as a
/// predicate (`must be a string`, `is required`), which follows the field's name; serde's own
/// messages (`invalid type: …`, an agent id's error) follow a colon. A required field that is
/// absent is reported by serde at the struct (path `.`) as "missing field `x`".
fn describe(path: &str, inner: &str) -> String {
    if path == "." {
        return match inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(field) => format!("invalid params: {field} is required"),
            None => format!("invalid params: {inner}"),
        };
    }
    if inner.starts_with("must ") || inner.starts_with("is ") {
        format!("invalid params: {path} {inner}")
    } else {
        format!("invalid params: {path}: {inner}")
    }
}

/// A required param that was not given (for a param required only in some cases).
pub fn missing(field: &str) -> RpcError {
    RpcError::invalid(format!("invalid params: {field} is required"))
}

/// A session key param (`ids::SessionKey`): its agent part normalized, a key that names no
/// agent given to `default_agent`, a malformed `agent:` key refused naming the field.
pub fn session_key(
    field: &str,
    raw: &str,
    default_agent: &AgentId,
) -> Result<SessionKey, RpcError> {
    SessionKey::parse(raw, default_agent)
        .map_err(|e| RpcError::invalid(format!("invalid params: {field} {e}")))
}

/// A JSON value as the helpers see it. Arrays and objects are read through and dropped.
enum Raw {
    Absent,
    Str(String),
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Other,
}

impl Raw {
    /// A number's text, as JSON writes it (`42`, `-1`, `1.5`).
    fn number_text(&self) -> Option<String> {
        match *self {
            Raw::Uint(n) => Some(n.to_string()),
            Raw::Int(n) => Some(n.to_string()),
            Raw::Float(f) => serde_json::Number::from_f64(f).map(|n| n.to_string()),
            _ => None,
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Absent)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }

    fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
        Ok(Raw::Str(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Raw, E> {
        Ok(Raw::Str(s))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Raw, E> {
        Ok(Raw::Uint(n))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Raw, E> {
        Ok(Raw::Int(n))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Raw, E> {
        Ok(Raw::Float(f))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(b))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Other)
    }
}

fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
    d.deserialize_any(RawVisitor)
}

/// An optional string param.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match raw(d)? {
        Raw::Absent => Ok(None),
        Raw::Str(s) => Ok((!s.is_empty()).then_some(s)),
        _ => Err(de::Error::custom("must be a string")),
    }
}

/// A string param that must be given (absent, `null` and `""` are refused).
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string(d)?.ok_or_else(|| de::Error::custom("is required"))
}

/// An optional address param (`to`, `threadId`, `accountId`): a string, or a number.
pub fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match raw(d)? {
        Raw::Absent => Ok(None),
        Raw::Str(s) => Ok((!s.is_empty()).then_some(s)),
        n => n
            .number_text()
            .map(Some)
            .ok_or_else(|| de::Error::custom("must be a string or a number")),
    }
}

/// An address param that must be given.
pub fn required_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    address(d)?.ok_or_else(|| de::Error::custom("is required"))
}

/// A non-negative integer, also written as an integral float (`5.0`, as some JSON encoders
/// write numbers).
fn whole(r: &Raw) -> Option<u64> {
    match *r {
        Raw::Uint(n) => Some(n),
        Raw::Float(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Some(f as u64),
        _ => None,
    }
}

/// An optional count, without a maximum of its own (the caller clamps it, and says so).
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match raw(d)? {
        Raw::Absent => Ok(None),
        r => whole(&r)
            .map(Some)
            .ok_or_else(|| de::Error::custom("must be a non-negative integer")),
    }
}

/// An optional count of at most `MAX`; a larger one is refused.
pub fn count_max<'de, const MAX: u64, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match raw(d)? {
        Raw::Absent => Ok(None),
        r => match whole(&r) {
            Some(n) if n <= MAX => Ok(Some(n)),
            _ => Err(de::Error::custom(format!(
                "must be an integer in 0..={MAX}"
            ))),
        },
    }
}

/// An optional boolean param.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match raw(d)? {
        Raw::Absent => Ok(None),
        Raw::Bool(b) => Ok(Some(b)),
        _ => Err(de::Error::custom("must be a boolean")),
    }
}

/// An optional agent id param, normalized as OpenClaw does (`ids::AgentId`); one that
/// normalizes to nothing is refused naming the field.
pub fn agent_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AgentId>, D::Error> {
    string(d)?
        .map(|raw| AgentId::normalize(&raw).map_err(de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        #[serde(deserialize_with = "required")]
        message: String,
        #[serde(default, deserialize_with = "string")]
        label: Option<String>,
        #[serde(default, deserialize_with = "address")]
        to: Option<String>,
        #[serde(default, deserialize_with = "count_max::<1000, _>")]
        limit: Option<u64>,
        #[serde(default, deserialize_with = "count")]
        days: Option<u64>,
        #[serde(default, deserialize_with = "flag")]
        deliver: Option<bool>,
        #[serde(default, deserialize_with = "agent_id")]
        agent_id: Option<AgentId>,
    }

    fn err(p: Value) -> String {
        let e = parse::<P>(&p).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest, "{p}");
        e.message
    }

    #[test]
    fn a_wrong_type_is_refused_naming_the_field() {
        let ok = |extra: Value| {
            let mut p = json!({"message": "m"});
            p.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            p
        };
        for (p, want) in [
            (
                json!({"message": 5}),
                "invalid params: message must be a string",
            ),
            (
                ok(json!({"label": true})),
                "invalid params: label must be a string",
            ),
            (
                ok(json!({"label": ["x"]})),
                "invalid params: label must be a string",
            ),
            (
                ok(json!({"to": {"id": 1}})),
                "invalid params: to must be a string or a number",
            ),
            (
                ok(json!({"limit": "5"})),
                "invalid params: limit must be an integer in 0..=1000",
            ),
            (
                ok(json!({"limit": 1001})),
                "invalid params: limit must be an integer in 0..=1000",
            ),
            (
                ok(json!({"limit": 2.5})),
                "invalid params: limit must be an integer in 0..=1000",
            ),
            (
                ok(json!({"days": -1})),
                "invalid params: days must be a non-negative integer",
            ),
            (
                ok(json!({"deliver": "yes"})),
                "invalid params: deliver must be a boolean",
            ),
            (
                ok(json!({"deliver": 1})),
                "invalid params: deliver must be a boolean",
            ),
        ] {
            assert_eq!(err(p.clone()), want, "{p}");
        }
        let m = err(ok(json!({"agentId": "///"})));
        assert!(m.starts_with("invalid params: agentId: "), "{m}");
        assert!(m.contains("is not an agent id"), "{m}");
        let m = err(ok(json!({"agentId": 3})));
        assert_eq!(m, "invalid params: agentId must be a string");
    }

    #[test]
    fn absent_null_and_empty_are_not_given() {
        let p: P = parse(&json!({"message": "m", "label": "", "to": null, "limit": null})).unwrap();
        assert_eq!(
            (p.label, p.to, p.limit, p.days, p.deliver, p.agent_id),
            (None, None, None, None, None, None)
        );
        for p in [json!({}), json!({"message": ""}), json!({"message": null})] {
            assert_eq!(err(p.clone()), "invalid params: message is required", "{p}");
        }
        assert_eq!(
            parse::<P>(&json!("x")).unwrap_err().message,
            "invalid params: expected an object"
        );
    }

    #[test]
    fn numbers_addresses_ids_and_unknown_fields() {
        let p: P = parse(&json!({
            "message": "m", "to": 42, "limit": 5.0, "days": 3660, "deliver": false,
            "agentId": "/tmp/X", "somethingElse": {"a": [1, 2]}, "timeoutMs": "ignored"
        }))
        .unwrap();
        assert_eq!(p.message, "m");
        assert_eq!(p.to.as_deref(), Some("42"));
        assert_eq!(
            (p.limit, p.days, p.deliver),
            (Some(5), Some(3660), Some(false))
        );
        assert_eq!(p.agent_id.unwrap(), "tmp-x");
        let p: P = parse(&json!({"message": "m", "to": -7, "label": "l"})).unwrap();
        assert_eq!(
            (p.to.as_deref(), p.label.as_deref()),
            (Some("-7"), Some("l"))
        );
        let p: P = parse(&json!({"message": "m", "to": "@chan", "limit": 1000})).unwrap();
        assert_eq!((p.to.as_deref(), p.limit), (Some("@chan"), Some(1000)));
    }

    #[test]
    fn session_keys_are_checked_naming_the_field() {
        let main = AgentId::main();
        let k = session_key("k", "agent:../../x:s", &main).unwrap();
        assert_eq!((k.key.as_str(), k.agent.as_str()), ("agent:x:s", "x"));
        let e = session_key("sessionKey", "agent:x", &main).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest);
        assert!(
            e.message.starts_with("invalid params: sessionKey "),
            "{}",
            e.message
        );
        let k = session_key("sessionKey", "plain", &main).unwrap();
        assert_eq!((k.key.as_str(), k.agent.as_str()), ("plain", "main"));
    }
}
