//! Reading method params: an absent, null or empty string is "not given"; any other type is a
//! clear `INVALID_REQUEST` naming the field.

use crate::error::RpcError;
use crate::ids::{AgentId, SessionKey};
use serde_json::Value;

/// An optional string param.
pub fn string(p: &Value, key: &str) -> Result<Option<String>, RpcError> {
    match p.get(key) {
        Some(Value::Number(_)) => Err(not_a_string(key)),
        _ => address(p, key),
    }
}

/// An optional address param (`to`, `threadId`, `accountId`): a string, or a number, as chat ids
/// and thread ids arrive from some channels.
pub fn address(p: &Value, key: &str) -> Result<Option<String>, RpcError> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(not_a_string(key)),
    }
}

/// A string param that must be given.
pub fn required(p: &Value, key: &str) -> Result<String, RpcError> {
    string(p, key)?.ok_or_else(|| missing(key))
}

/// An address param that must be given.
pub fn required_address(p: &Value, key: &str) -> Result<String, RpcError> {
    address(p, key)?.ok_or_else(|| missing(key))
}

/// An optional agent id param, normalized as OpenClaw does (`ids::AgentId`); one that
/// normalizes to nothing is refused naming the field.
pub fn agent_id(p: &Value, key: &str) -> Result<Option<AgentId>, RpcError> {
    string(p, key)?
        .map(|raw| {
            AgentId::normalize(&raw)
                .map_err(|e| RpcError::invalid(format!("invalid params: {key}: {e}")))
        })
        .transpose()
}

/// An optional session key param (`ids::SessionKey`): its agent part normalized, a key that
/// names no agent given to `default_agent`, a malformed `agent:` key refused naming the field.
pub fn session_key(
    p: &Value,
    key: &str,
    default_agent: &AgentId,
) -> Result<Option<SessionKey>, RpcError> {
    string(p, key)?
        .map(|raw| {
            SessionKey::parse(&raw, default_agent)
                .map_err(|e| RpcError::invalid(format!("invalid params: {key} {e}")))
        })
        .transpose()
}

/// A session key param that must be given.
pub fn required_session_key(
    p: &Value,
    key: &str,
    default_agent: &AgentId,
) -> Result<SessionKey, RpcError> {
    session_key(p, key, default_agent)?.ok_or_else(|| missing(key))
}

fn not_a_string(key: &str) -> RpcError {
    RpcError::invalid(format!("invalid params: {key} must be a string"))
}

fn missing(key: &str) -> RpcError {
    RpcError::invalid(format!("invalid params: {key} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_addresses_and_errors() {
        let p = json!({"s": "x", "e": "", "n": 42, "o": {}, "z": null});
        assert_eq!(string(&p, "s").unwrap().as_deref(), Some("x"));
        for absent in ["e", "z", "missing"] {
            assert_eq!(string(&p, absent).unwrap(), None);
            assert_eq!(address(&p, absent).unwrap(), None);
        }
        assert!(
            string(&p, "n")
                .unwrap_err()
                .message
                .contains("n must be a string")
        );
        assert_eq!(address(&p, "n").unwrap().as_deref(), Some("42"));
        assert!(address(&p, "o").is_err());
        assert!(
            required(&p, "e")
                .unwrap_err()
                .message
                .contains("e is required")
        );
        assert_eq!(required_address(&p, "n").unwrap(), "42");
    }

    #[test]
    fn agent_ids_and_session_keys_are_checked_naming_the_field() {
        let main = AgentId::main();
        let p =
            json!({"a": "/tmp/X", "bad": "///", "k": "agent:../../x:s", "m": "agent:x", "n": 3});
        assert_eq!(agent_id(&p, "a").unwrap().unwrap(), "tmp-x");
        let e = agent_id(&p, "bad").unwrap_err();
        assert_eq!(e.code, crate::error::Code::InvalidRequest);
        assert!(
            e.message.contains("agentId") || e.message.contains("bad"),
            "{}",
            e.message
        );
        assert_eq!(agent_id(&p, "missing").unwrap(), None);
        assert!(agent_id(&p, "n").is_err());
        let k = required_session_key(&p, "k", &main).unwrap();
        assert_eq!((k.key.as_str(), k.agent.as_str()), ("agent:x:s", "x"));
        let e = required_session_key(&p, "m", &main).unwrap_err();
        assert!(e.message.contains("invalid params: m "), "{}", e.message);
        assert!(required_session_key(&p, "missing", &main).is_err());
    }
}
