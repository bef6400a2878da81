//! The two files each account directory shows: `account.json` and `keys`.
//!
//! `account.json` follows the ARM `Microsoft.Batch/batchAccounts` GET body, but holds only what
//! is actually known: a field the config does not give is left out, never guessed, and no
//! secret ever goes in it. `keys` has the shape `listKeys` returns.

use serde_json::{Map, Value, json};

use crate::accounts::config::AccountConfig;

pub fn account_json(a: &AccountConfig) -> Vec<u8> {
    if let Some(body) = &a.arm_body {
        return pretty(body);
    }
    let mut root = Map::new();
    if let (Some(sub), Some(rg)) = (&a.subscription_id, &a.resource_group) {
        root.insert(
            "id".into(),
            json!(format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Batch/batchAccounts/{}",
                a.name
            )),
        );
    }
    root.insert("name".into(), json!(a.name));
    root.insert("type".into(), json!("Microsoft.Batch/batchAccounts"));
    if let Some(loc) = &a.location {
        root.insert("location".into(), json!(loc));
    }
    if let Some(tags) = &a.tags {
        root.insert("tags".into(), json!(tags));
    }
    let mut props = Map::new();
    if let Some(ep) = &a.endpoint {
        props.insert("accountEndpoint".into(), json!(ep));
    }
    if let Some(id) = a.storage.as_ref().and_then(|s| s.resource_id.as_ref()) {
        props.insert("autoStorage".into(), json!({ "storageAccountId": id }));
    }
    if !props.is_empty() {
        root.insert("properties".into(), Value::Object(props));
    }
    pretty(&Value::Object(root))
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `None` when no key is configured: the file is then absent.
pub fn keys_json(a: &AccountConfig) -> Option<Vec<u8>> {
    if a.primary_key.is_none() && a.secondary_key.is_none() {
        return None;
    }
    let mut m = Map::new();
    m.insert("accountName".into(), json!(a.name));
    if let Some(k) = &a.primary_key {
        m.insert("primary".into(), json!(k.expose()));
    }
    if let Some(k) = &a.secondary_key {
        m.insert("secondary".into(), json!(k.expose()));
    }
    Some(pretty(&Value::Object(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::config::parse;
    use std::path::Path;

    #[test]
    fn only_known_fields_and_no_secrets() {
        let c = parse(
            Path::new("t.toml"),
            "[[account]]\nname = \"abc\"\nlocation = \"westeurope\"\nprimary_key = \"SECRET1\"\n\
             [account.storage]\naccount = \"sto\"\nsas = \"sig=SECRET2\"\n",
        )
        .unwrap();
        let a = &c.accounts[0];
        let v: Value = serde_json::from_slice(&account_json(a)).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["name", "type", "location"], "ARM order");
        let text = String::from_utf8(account_json(a)).unwrap();
        assert!(!text.contains("SECRET"));
        let k: Value = serde_json::from_slice(&keys_json(a).unwrap()).unwrap();
        assert_eq!(k, json!({"accountName": "abc", "primary": "SECRET1"}));
    }
}
