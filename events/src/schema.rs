//! JSON Schemas of every event, generated from the Rust types. `schemas/` holds the committed
//! copies; the `schemas_on_disk_match_the_rust_types` test fails when they drift, and
//! `UPDATE_SCHEMAS=1 cargo test -p copilot-events` rewrites them.

use schemars::{JsonSchema, schema_for};

use crate::{
    Envelope, EventPayload, SignalReceived, TenantCreated, WebhookTokenIssued, WebhookTokenRevoked,
};

fn payload<P: EventPayload>() -> (String, String) {
    let schema = schema_for!(P);
    (
        format!("{}.v{}.json", P::TYPE, P::VERSION),
        pretty(&serde_json::to_value(schema).expect("schema serializes")),
    )
}

fn named<T: JsonSchema>(name: &str) -> (String, String) {
    let schema = schema_for!(T);
    (
        name.to_owned(),
        pretty(&serde_json::to_value(schema).expect("schema serializes")),
    )
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("json serializes");
    text.push('\n');
    text
}

/// Every schema file: (file name, contents).
pub fn all() -> Vec<(String, String)> {
    vec![
        named::<Envelope>("Envelope.json"),
        payload::<SignalReceived>(),
        payload::<TenantCreated>(),
        payload::<WebhookTokenIssued>(),
        payload::<WebhookTokenRevoked>(),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn schemas_on_disk_match_the_rust_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        if update {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut stale = Vec::new();
        for (name, contents) in super::all() {
            let path = dir.join(&name);
            if update {
                std::fs::write(&path, &contents).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(contents.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "schemas/events is stale for {stale:?}; run `UPDATE_SCHEMAS=1 cargo test -p copilot-events` and commit the result"
        );
    }
}
