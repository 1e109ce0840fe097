//! The HTTP API on the gateway's port (contract §9, without the proxy):
//! version, query, auth, redirect, 404, and malformed requests.

mod common;

use common::*;
use std::collections::BTreeSet;

fn assert_json_content_type(r: &HttpResponse) {
    let ct = r.header("Content-Type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
}

#[test]
fn version_needs_no_auth() {
    for args in [vec![], vec!["--auth", "pw"]] {
        let server = Server::start(&args);
        let r = server.http("GET", "/api/version", &[], None);
        assert_eq!(r.status, 200, "{args:?}: {}", r.text());
        assert_json_content_type(&r);
        assert_eq!(
            r.json(),
            json!({"api": "v1", "singyeong": env!("CARGO_PKG_VERSION")})
        );
    }
}

#[test]
fn query_returns_client_objects() {
    let server = Server::start(&["--shards", "3"]);
    let mut obs = Client::ready(&server, Json, "obs", "obs");
    let mut workers = spread(
        &server,
        &mut obs,
        "workers",
        3,
        &ALL_ENCODINGS,
        json!({"metadata": {"port": {"type": "integer", "value": 80}}}),
    );
    let all: BTreeSet<String> = workers.iter().map(|w| w.id.clone()).collect();
    let r = server.http_query(&query("workers"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_content_type(&r);
    let body = r.json();
    let nodes = body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"));
    for n in nodes {
        check_client_object(n);
        assert_eq!(n["app_id"], json!("workers"));
        assert_eq!(n["metadata"]["port"], json!(80));
        assert_eq!(n["queues"], json!([]));
    }
    assert_eq!(ids(nodes), all);
    assert_eq!(nodes.len(), all.len());
    // The same objects QUERY_NODES gives (last_heartbeat_time aside).
    let mut ws_nodes = obs.query_nodes(query("workers"));
    let mut http_nodes = nodes.clone();
    for n in ws_nodes.iter_mut().chain(http_nodes.iter_mut()) {
        n["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("last_heartbeat_time");
    }
    ws_nodes.sort_by_key(|n| n["client_id"].to_string());
    http_nodes.sort_by_key(|n| n["client_id"].to_string());
    assert_eq!(ws_nodes, http_nodes);

    // Ops, and an update that is immediately visible.
    let target = &mut workers[0];
    target
        .client
        .set_metadata(json!({"port": {"type": "integer", "value": 8080}}));
    let r = server.http_query(
        &query_ops("workers", json!([op("/port", "$eq", json!(8080))])),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(ids(r.json().as_array().unwrap()), set(&[&target.id]));
    // No match: an empty list.
    let r = server.http_query(&query("nobody"), None);
    assert_eq!((r.status, r.json()), (200, json!([])));
}

#[test]
fn query_applies_the_selector() {
    let server = Server::start(&[]);
    let _workers: Vec<Client> = [80, 8080, 443]
        .into_iter()
        .enumerate()
        .map(|(i, port)| {
            Client::ready_with(
                &server,
                Json,
                "workers",
                &format!("w{i}"),
                json!({"metadata": {"port": {"type": "integer", "value": port}}}),
            )
        })
        .collect();
    let r = server.http_query(
        &with(query("workers"), "selector", json!({"$max": "port"})),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(ids(r.json().as_array().unwrap()), set(&["w1"]));
    let r = server.http_query(
        &with(query("workers"), "selector", json!({"$min": "port"})),
        None,
    );
    assert_eq!(ids(r.json().as_array().unwrap()), set(&["w0"]));
}

#[test]
fn query_needs_the_password_when_one_is_set() {
    let server = Server::start(&["--auth", "s3cret"]);
    let _free = Client::ready_with(&server, Json, "app", "free", json!({"auth": "s3cret"}));
    let _locked = Client::ready(&server, Json, "app", "locked");
    for auth in [
        None,
        Some("wrong"),
        Some(""),
        Some("s3cre"),
        Some("s3cret!"),
        Some("S3CRET"),
    ] {
        let r = server.http_query(&query("app"), auth);
        assert_eq!(r.status, 401, "auth {auth:?}");
        assert_eq!(
            r.json(),
            json!({"status": "error", "error": "not authorized"}),
            "auth {auth:?}"
        );
    }
    let r = server.http_query(&query("app"), Some("s3cret"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(r.json().as_array().unwrap()), set(&["free"]));
    let r = server.http_query(
        &with(query("app"), "restricted", json!(true)),
        Some("s3cret"),
    );
    assert_eq!(ids(r.json().as_array().unwrap()), set(&["free", "locked"]));
}

#[test]
fn a_malformed_query_is_a_client_error() {
    let server = Server::start(&[]);
    let _c = Client::ready(&server, Json, "app", "c");
    let bodies = [
        "not json".to_string(),
        "[1, 2]".to_string(),
        json!({"application": "app", "ops": [{"path": "/a", "op": "$foo", "to": {"value": 1}}]})
            .to_string(),
        json!({"application": "app", "selector": {"$median": "a"}}).to_string(),
    ];
    for b in &bodies {
        let r = server.http(
            "POST",
            "/api/v1/query",
            &[("Content-Type", "application/json")],
            Some(b),
        );
        assert_eq!(r.status, 400, "{b}: {} {}", r.status, r.text());
    }
    let r = server.http_query(&query("app"), None);
    assert_eq!(r.status, 200);
}

#[test]
fn root_redirects_to_the_gateway() {
    let server = Server::start(&[]);
    let r = server.http("GET", "/", &[], None);
    assert!(
        matches!(r.status, 301 | 302 | 303 | 307 | 308),
        "status {}",
        r.status
    );
    let loc = r
        .header("Location")
        .unwrap_or_else(|| panic!("no Location: {r:?}"));
    assert!(
        loc == "/gateway/websocket" || loc.ends_with("/gateway/websocket"),
        "Location {loc:?}"
    );
}

#[test]
fn other_paths_are_404_with_a_json_body() {
    let server = Server::start(&[]);
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/v2/query"),
        ("GET", "/api/version/extra"),
        ("POST", "/api/v1/nothing"),
        ("GET", "/gateway"),
    ] {
        let r = server.http(method, path, &[], None);
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.json(),
            json!({"code": 404, "error": "not found"}),
            "{method} {path}"
        );
    }
}

#[test]
fn malformed_http_is_400_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let mut c = Client::ready(&server, Json, "app", "c");
    let raws: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"POST /api/v1/query HTTP/1.1\r\nContent-Length: nope\r\n\r\n{}",
    ];
    for raw in raws {
        let r = server.http_raw(raw);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
    }
    let r = server.http("GET", "/api/version", &[], None);
    assert_eq!(r.status, 200);
    c.heartbeat();
    let mut d = Client::ready(&server, Msgpack, "app", "d");
    d.heartbeat();
}

#[test]
fn a_gateway_request_without_upgrade_is_refused_without_harm() {
    let server = Server::start(&[]);
    let r = server.http("GET", "/gateway/websocket", &[], None);
    assert!((400..500).contains(&r.status), "status {}", r.status);
    let mut c = Client::ready(&server, Json, "app", "c");
    c.heartbeat();
}
