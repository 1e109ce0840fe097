//! The `d` of the packets the server sends (contract §2, §6). Each takes
//! its parts by value so building a payload never clones client data.

use serde_json::{Map, Value};

/// Hello (op 0): `{"heartbeat_interval": <ms>}`.
pub fn hello(heartbeat_interval_ms: u64) -> Value {
    object([("heartbeat_interval", Value::from(heartbeat_interval_ms))])
}

/// Ready (op 2): `{"client_id", "restricted"}`.
pub fn ready(client_id: &str, restricted: bool) -> Value {
    object([
        ("client_id", Value::from(client_id)),
        ("restricted", Value::Bool(restricted)),
    ])
}

/// Invalid (op 3) and error (op 8): `{"error", "extra_info"}`; pass
/// `Value::Null` when there is no extra info.
pub fn error(error: impl Into<String>, extra_info: Value) -> Value {
    object([
        ("error", Value::String(error.into())),
        ("extra_info", extra_info),
    ])
}

/// Goodbye (op 7): `{"reason"}`.
pub fn goodbye(reason: &str) -> Value {
    object([("reason", Value::from(reason))])
}

/// Heartbeat ack (op 6): `{"client_id"}`.
pub fn heartbeat_ack(client_id: &str) -> Value {
    object([("client_id", Value::from(client_id))])
}

/// A dispatch delivered to a client (op 4): `{"nonce", "payload"}`.
pub fn dispatch(nonce: Value, payload: Value) -> Value {
    object([("nonce", nonce), ("payload", payload)])
}

fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let mut map = Map::new();
    for (k, v) in entries {
        map.insert(k.to_owned(), v);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_have_the_contract_shapes() {
        assert_eq!(hello(45000), json!({"heartbeat_interval": 45000}));
        assert_eq!(
            ready("c1", true),
            json!({"client_id": "c1", "restricted": true})
        );
        assert_eq!(
            error("no_route", json!({"op": 4})),
            json!({"error": "no_route", "extra_info": {"op": 4}})
        );
        assert_eq!(
            error(String::from("invalid op"), Value::Null),
            json!({"error": "invalid op", "extra_info": null})
        );
        assert_eq!(goodbye("shutdown"), json!({"reason": "shutdown"}));
        assert_eq!(heartbeat_ack("c1"), json!({"client_id": "c1"}));
        assert_eq!(
            dispatch(Value::Null, json!([1, 2])),
            json!({"nonce": null, "payload": [1, 2]})
        );
    }
}
