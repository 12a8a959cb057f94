//! JSON Schemas of the advisories, generated from their types (`schemas/*.json`).
//!
//! `schemars` describes the fields; this module adds what a derive cannot say: the advisory's
//! `type` constant, its `$id`, title and description, that no object takes unknown fields, and
//! the few rules that tie fields together (a resolved finding is never a renotification; a
//! growth finding carries a projection).

use chrono::{DateTime, Utc};
use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::TYPE_PREFIX;

/// Where the schema of advisory `name` says it lives.
pub fn schema_id(name: &str) -> String {
    format!("https://connwatch.io/schemas/advisory/v1/{name}.json")
}

/// The schema document of advisory `name`, whose body (after `type`) is `T`.
pub fn document<T: JsonSchema>(name: &str, description: &str) -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    let root = schema.as_object_mut().expect("an advisory is an object");
    root.insert("$id".into(), schema_id(name).into());
    root.insert(
        "title".into(),
        format!("connwatch advisory: {}", name.replace('_', " ")).into(),
    );
    root.insert("description".into(), description.into());
    let properties = root
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .expect("an advisory has properties");
    properties.insert(
        "type".into(),
        json!({"const": format!("{TYPE_PREFIX}{name}"), "description": "The advisory type."}),
    );
    if properties.contains_key("state") {
        // A resolution is announced once: it is never a renotification.
        root.insert(
            "if".into(),
            json!({"properties": {"state": {"const": "resolved"}}}),
        );
        root.insert(
            "then".into(),
            json!({"properties": {"renotify": {"const": false}}}),
        );
    }
    refine(name, root);
    let required = root
        .entry("required")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("required is a list");
    required.insert(0, "type".into());
    tidy(&mut schema);
    schema
}

/// What only the advisory type says about its fields.
fn refine(name: &str, root: &mut Map<String, Value>) {
    let properties = root["properties"].as_object_mut().expect("properties");
    match name {
        "excessive_user_connections" => {
            properties["over_threshold"]["const"] = true.into();
        }
        "user_connection_growth" => {
            properties["over_threshold"]["const"] = false.into();
            properties["growth"] = json!({
                "$ref": "#/$defs/Growth",
                "description": "The trend that makes this user a finding: at least one of the two projections is known.",
                "anyOf": [
                    {"properties": {"threshold_in_secs": {"type": "integer"}}},
                    {"properties": {"account_limit_in_secs": {"type": "integer"}}}
                ]
            });
            root["required"]
                .as_array_mut()
                .expect("required is a list")
                .push("growth".into());
        }
        _ => {}
    }
}

/// Every object takes no undeclared properties; a property that serde leaves out when empty is
/// never `null` when present; descriptions are one paragraph (doc comments wrap lines).
fn tidy(schema: &mut Value) {
    match schema {
        Value::Object(obj) => {
            if let Some(Value::String(d)) = obj.get_mut("description") {
                *d = d
                    .replace("\n\n", "\u{0}")
                    .replace('\n', " ")
                    .replace('\u{0}', "\n\n");
            }
            if obj.get("type") == Some(&Value::from("object")) {
                let required: Vec<Value> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if let Some(Value::Object(properties)) = obj.get_mut("properties") {
                    for (key, property) in properties.iter_mut() {
                        if !required.contains(&Value::from(key.as_str())) {
                            not_null(property);
                        }
                    }
                }
                obj.entry("additionalProperties").or_insert(false.into());
            }
            for v in obj.values_mut() {
                tidy(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// Drops `null` from a property's types (`"type": [T, "null"]` or `"anyOf": [T, null]`).
fn not_null(property: &mut Value) {
    let null = json!({"type": "null"});
    if let Some(Value::Array(types)) = property.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            property["type"] = types[0].clone();
        }
    }
    let Some(obj) = property.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(any)) = obj.get_mut("anyOf") {
        any.retain(|s| *s != null);
        if any.len() == 1 {
            let only = any.pop().expect("one schema");
            obj.remove("anyOf");
            for (k, v) in only.as_object().into_iter().flatten() {
                obj.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

/// A `Duration` written by `humantime_serde`: `6m 2s`, `1day 3h`.
pub fn humantime(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A humantime duration (e.g. `6m 2s`, `1day 3h`).",
        "type": "string",
        "pattern": "^(0s|[1-9][0-9]*(years?|months?|days?|h|ms|m|s|us|ns)( [1-9][0-9]*(years?|months?|days?|h|ms|m|s|us|ns))*)$"
    })
}

/// A time written by [`millis`]: RFC 3339 in UTC with milliseconds.
pub fn instant_millis(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$"
    })
}

/// A NUID: 22 letters and digits.
pub fn nuid(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": "^[0-9A-Za-z]{22}$"})
}

/// Serde for the advisory times: written in UTC with milliseconds, read as any RFC 3339 time.
pub mod millis {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `2026-11-25T20:31:09.123Z`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    /// Reads any RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}
