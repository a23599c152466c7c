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
/// build `base`). Objects merge field by field at any depth (`{"encoder": {"heads": 2}}` changes
/// the heads and keeps the width); unknown fields are errors at any depth.
pub fn merge<T: Serialize + DeserializeOwned>(base: &T, user: &Map<String, Value>, skip: &[&str]) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let target = merged.as_object_mut().ok_or("configuration is not an object")?;
    let user: Map<String, Value> = user.iter().filter(|(k, _)| !skip.contains(&k.as_str()) || !target.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    merge_into(target, &user, "")?;
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

/// Writes `user` over `target`, recursing where both sides are objects.
pub fn merge_into(target: &mut Map<String, Value>, user: &Map<String, Value>, path: &str) -> Result<(), String> {
    for (k, v) in user {
        let Some(slot) = target.get_mut(k) else {
            return Err(format!("unknown field `{path}{k}` (known: {})", target.keys().cloned().collect::<Vec<_>>().join(", ")));
        };
        match (slot, v) {
            (Value::Object(t), Value::Object(u)) => merge_into(t, u, &format!("{path}{k}."))?,
            (slot, v) => *slot = v.clone(),
        }
    }
    Ok(())
}
