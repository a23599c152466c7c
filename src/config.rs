//! How configurations are named and resolved — one rule for tokenizer presets, generator sizes
//! and training recipes, on every command: a spec is a **preset name or a file** (JSON, or TOML
//! for `.toml`); a file may name the preset it starts from (`preset = "tiny"`); then
//! `key=value` overrides merge into it, **nested tables included** (`encoder.heads = 8` keeps the
//! encoder's width). Every field with a default may be omitted, unknown fields are errors (usually
//! typos), at any depth. Names have one spelling, lower case with `-` (`rectok-b`, `ditdh-s`,
//! `tiny-stage2`); spellings with `_` are accepted as aliases.
//!
//! Option tables ([`options!`]: fields with their defaults) and their range checks live here too,
//! so that every command names a bad option, its rule and its value the same way.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::Path;

/// The one spelling of a preset or recipe name: lower case, words joined by `-`.
pub fn canonical_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// The entry of `presets` named `name` (in any accepted spelling).
pub fn find<'a, T>(name: &str, presets: &'a [(&str, T)]) -> Option<&'a T> {
    let name = canonical_name(name);
    presets.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
}

/// The names of `presets`, for messages.
pub fn names<T>(presets: &[(&str, T)]) -> String {
    presets.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Reads a configuration file as an object: TOML for `.toml`, else JSON.
pub fn read_object(path: &Path, what: &str) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read ({e})", path.display()))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| format!("{}: invalid TOML: {}", path.display(), e.to_string().trim().replace('\n', " ")))?;
        match serde_json::to_value(table) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(format!("{}: a {what} configuration is a table", path.display())),
        }
    } else {
        object(&text, what).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Parses `text` as a JSON object.
pub fn object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))? {
        Value::Object(m) => Ok(m),
        _ => Err(format!("a {what} configuration is a JSON object")),
    }
}

/// A required unsigned integer field.
pub fn required_usize(obj: &Map<String, Value>, key: &str) -> Result<usize, String> {
    match obj.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(v) => v.as_u64().map(|v| v as usize).ok_or(format!("`{key}` must be a whole number ≥ 0, got {v}")),
    }
}

/// `base` with the fields of `user` written over it, except those in `skip` (already used to
/// build `base`). Objects merge field by field at any depth (`{"encoder": {"heads": 2}}` changes
/// the heads and keeps the width); unknown fields are errors at any depth.
pub fn merge<T: Serialize + DeserializeOwned>(base: &T, user: &Map<String, Value>, skip: &[&str]) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let target = merged.as_object_mut().ok_or("configuration is not an object")?;
    let user: Map<String, Value> = user
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()) || !target.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merge_into(target, &user, "")?;
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

/// Writes `user` over `target`, recursing where both sides are objects.
pub fn merge_into(target: &mut Map<String, Value>, user: &Map<String, Value>, path: &str) -> Result<(), String> {
    for (k, v) in user {
        let Some(slot) = target.get_mut(k) else {
            return Err(format!(
                "unknown field `{path}{k}` (known: {})",
                target.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        match (slot, v) {
            (Value::Object(t), Value::Object(u)) => merge_into(t, u, &format!("{path}{k}."))?,
            (slot, v) => *slot = v.clone(),
        }
    }
    Ok(())
}

/// Applies one `dotted.key=value` override. A table value merges into an existing table (its
/// other keys stay); any other value replaces what was there.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--set `{assignment}`: expected section.key=value"))?;
    let key = key.trim();
    let value = value.trim();
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        anyhow::bail!("--set `{assignment}`: empty key segment");
    }
    let mut cursor = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cursor.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let shown = entry.to_string();
        cursor = entry.as_table_mut().ok_or_else(|| {
            anyhow::anyhow!(
                "--set `{assignment}`: `{}` holds the value {shown}, not a section (given by the recipe or an earlier \
                --set)",
                parts[..=i].join(".")
            )
        })?;
    }
    let last = parts[parts.len() - 1].to_string();
    match (cursor.get_mut(&last), parsed) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => merge_tables(existing, new),
        // A section may be replaced by a name (`model.encoder=small`), never by a number or list.
        (Some(toml::Value::Table(_)), v) if !v.is_str() => {
            anyhow::bail!("--set `{assignment}`: `{key}` is a section of options; set one of them (`{key}.NAME=VALUE`)")
        }
        (_, v) => {
            cursor.insert(last, v);
        }
    }
    Ok(())
}

fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Option tables and their range checks (messages name the option, the rule and the value)
// ---------------------------------------------------------------------------------------------

/// Declares an options table: a struct whose fields carry their defaults (`pub name: Type =
/// default`), its `Default` built from them; serde fills missing keys with the defaults and
/// refuses unknown ones.
macro_rules! options {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$doc:meta])* pub $field:ident: $ty:ty = $default:expr,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }
    };
}
pub(crate) use options;

/// `name` must be `what` (which `ok` says it is): the message names the option, the rule and the
/// value.
pub fn ensure(ok: bool, name: &str, what: impl std::fmt::Display, v: impl std::fmt::Display) -> Result<(), String> {
    if ok { Ok(()) } else { Err(format!("{name} must be {what}, got {v}")) }
}

/// `name` must lie in `lo..=hi`.
pub fn between<T: PartialOrd + std::fmt::Display>(name: &str, v: T, lo: T, hi: T) -> Result<(), String> {
    ensure(lo <= v && v <= hi, name, format!("between {lo} and {hi}"), v)
}

/// `name` must be finite and ≥ 0.
pub fn non_negative(name: &str, v: f64) -> Result<(), String> {
    ensure(v.is_finite() && v >= 0.0, name, "a finite number ≥ 0", v)
}

/// `name` must be finite and > 0.
pub fn positive(name: &str, v: f64) -> Result<(), String> {
    ensure(v.is_finite() && v > 0.0, name, "a finite number > 0", v)
}

/// `name` must lie in `[lo, hi)`.
pub fn in_unit_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    ensure(v >= lo && v < hi, name, format!("in [{lo}, {hi})"), v)
}

/// `name` must be at least `min`.
pub fn count_at_least(name: &str, v: usize, min: usize) -> Result<(), String> {
    ensure(v >= min, name, format!("at least {min}"), v)
}
