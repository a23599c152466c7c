//! Reading configurations written by hand: every field with a default may be omitted, unknown
//! fields are errors (usually typos). burn's `Config` serialisation alone requires every field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parses `text` as a JSON object.
pub fn object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(format!("a {what} configuration is a JSON object")),
    }
}

/// A required unsigned integer field.
pub fn required_usize(obj: &Map<String, Value>, key: &str) -> Result<usize, String> {
    obj.get(key).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or(format!("missing or invalid field `{key}`"))
}

/// `base` with the fields of `user` written over it, except those in `skip` (already used to
/// build `base`).
pub fn merge<T: Serialize + DeserializeOwned>(base: &T, user: &Map<String, Value>, skip: &[&str]) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let target = merged.as_object_mut().ok_or("configuration is not an object")?;
    for (k, v) in user {
        if !target.contains_key(k) {
            return Err(format!("unknown field `{k}` (known: {})", target.keys().cloned().collect::<Vec<_>>().join(", ")));
        }
        if !skip.contains(&k.as_str()) {
            target.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}
