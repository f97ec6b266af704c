//! Reading method params: an absent, null or empty string is "not given"; any other type is a
//! clear `INVALID_REQUEST` naming the field.

use crate::error::RpcError;
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
}
