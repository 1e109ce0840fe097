//! `POST /api/v1/proxy` (contract §9), black-box: real upstream HTTP
//! servers (see `proxy/upstream.rs`) behind websocket clients identified
//! with their addresses, and the real server between the test and them.

mod common;
#[path = "proxy/upstream.rs"]
mod upstream;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use upstream::{Upstream, echoed_header, pattern_body};

/// A client of `app` whose proxy address is `up`.
fn behind(server: &Server, app: &str, id: &str, up: &Upstream, metadata: Value) -> Client {
    Client::ready_with(
        server,
        Json,
        app,
        id,
        json!({"ip": up.ip(), "metadata": metadata}),
    )
}

fn proxy(server: &Server, body: &Value) -> HttpResponse {
    proxy_auth(server, body, None)
}

fn proxy_auth(server: &Server, body: &Value, auth: Option<&str>) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    server.http("POST", "/api/v1/proxy", &headers, Some(&body.to_string()))
}

fn get(app: &str, route: &str) -> Value {
    json!({"method": "GET", "route": route, "query": query(app)})
}

/// The error messages of a `{"errors": [...]}` answer, joined.
fn errors(r: &HttpResponse) -> String {
    let body = r.json();
    let list = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list: {body}"));
    assert!(!list.is_empty(), "{body}");
    list.iter()
        .map(|e| e.as_str().expect("error text").to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn expect_error(r: &HttpResponse, status: u16, words: &[&str]) {
    assert_eq!(r.status, status, "{}", r.text());
    let text = errors(r);
    for w in words {
        assert!(text.contains(w), "{text:?} lacks {w:?}");
    }
}

/// Writes raw bytes to the server and reads until it closes (bounded).
fn raw_exchange(server: &Server, request: &[u8]) -> Vec<u8> {
    raw_exchange_at(server.addr(), request)
}

fn raw_exchange_at(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + STEP * 2;
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    out
}

fn proxy_raw(server: &Server, body: &Value) -> Vec<u8> {
    raw_exchange(server, &proxy_request(body))
}

/// A whole `POST /api/v1/proxy` request with `Connection: close`.
fn proxy_request(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST /api/v1/proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn forwards_route_query_string_and_headers_both_ways() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    let r = proxy(
        &server,
        &json!({"method": "GET", "route": "/items/7?x=1&y=two%20words", "query": query("app"),
            "headers": {"X-Custom": "v", "x-list": ["1", "2"], "Connection": "X-Drop",
                "X-Drop": "d", "Keep-Alive": "timeout=1", "TE": "trailers",
                "Proxy-Authorization": "Basic x", "Upgrade": "websocket"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["upstream"], json!("a"));
    assert_eq!(echo["method"], json!("GET"));
    assert_eq!(echo["target"], json!("/items/7?x=1&y=two%20words"));
    assert_eq!(echoed_header(&echo, "x-custom"), ["v"]);
    assert_eq!(echoed_header(&echo, "x-list"), ["1", "2"]);
    assert_eq!(echoed_header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed_header(&echo, "host"), [up.ip().as_str()]);
    for hop in [
        "x-drop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            echoed_header(&echo, hop).is_empty(),
            "{hop} forwarded: {echo}"
        );
    }
    assert!(
        echoed_header(&echo, "connection")
            .iter()
            .all(|v| !v.contains("X-Drop"))
    );
    assert!(
        echoed_header(&echo, "content-type").is_empty(),
        "GET got a content-type"
    );
    // The upstream's headers come back, its hop-by-hop ones do not.
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-multi"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    for hop in ["keep-alive", "x-hop", "proxy-authenticate", "upgrade"] {
        assert_eq!(r.header(hop), None, "{hop} relayed: {:?}", r.headers);
    }
    // An X-Forwarded-For given by the caller is extended, and a Host kept.
    let r = proxy(
        &server,
        &json!({"method": "GET", "route": "plain", "query": query("app"),
            "headers": {"X-Forwarded-For": "10.9.8.7", "Host": "virtual.example"}}),
    );
    let echo = r.json();
    assert_eq!(echo["target"], json!("/plain"));
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        ["10.9.8.7, 127.0.0.1"]
    );
    assert_eq!(echoed_header(&echo, "host"), ["virtual.example"]);
}

#[test]
fn every_method_and_body_rule() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        // A string is sent as is, with no content type added.
        let r = proxy(
            &server,
            &json!({"method": method, "route": "/m", "query": query("app"), "body": "raw {text"}),
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let echo = r.json();
        assert_eq!(echo["method"], json!(method));
        assert_eq!(echo["body"], json!("raw {text"));
        assert_eq!(echoed_header(&echo, "content-length"), ["9"]);
        assert!(echoed_header(&echo, "content-type").is_empty(), "{echo}");
        // Anything else is JSON-encoded, typed JSON unless the caller says.
        let r = proxy(
            &server,
            &json!({"method": method, "route": "/m", "query": query("app"),
                "body": {"n": [1, 2]}}),
        );
        let echo = r.json();
        assert_eq!(echo["body"], json!(r#"{"n":[1,2]}"#));
        assert_eq!(echoed_header(&echo, "content-type"), ["application/json"]);
        let r = proxy(
            &server,
            &json!({"method": method, "route": "/m", "query": query("app"), "body": 12,
                "headers": {"Content-Type": "text/x-number"}}),
        );
        let echo = r.json();
        assert_eq!(echo["body"], json!("12"));
        assert_eq!(echoed_header(&echo, "content-type"), ["text/x-number"]);
        // Without a body (or with null): 400.
        for body in [json!({}), json!({"body": null})] {
            let mut req = json!({"method": method, "route": "/m", "query": query("app")});
            req.as_object_mut()
                .unwrap()
                .extend(body.as_object().unwrap().clone());
            expect_error(&proxy(&server, &req), 400, &[method, "needs a body"]);
        }
    }
    // GET and HEAD: no body allowed.
    for method in ["GET", "HEAD"] {
        expect_error(
            &proxy(
                &server,
                &json!({"method": method, "route": "/m", "query": query("app"), "body": "x"}),
            ),
            400,
            &[method, "must not have a body"],
        );
    }
    let r = proxy(
        &server,
        &json!({"method": "HEAD", "route": "/m", "query": query("app")}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert!(r.body.is_empty());
    // Lower-case method names are accepted.
    let r = proxy(
        &server,
        &json!({"method": "get", "route": "/m", "query": query("app")}),
    );
    assert_eq!(r.json()["method"], json!("GET"));
    // Refused methods.
    for method in ["CONNECT", "OPTIONS", "TRACE", "FETCH"] {
        expect_error(
            &proxy(
                &server,
                &json!({"method": method, "route": "/", "query": query("app")}),
            ),
            400,
            &[method, "not allowed"],
        );
    }
    expect_error(
        &proxy(
            &server,
            &json!({"method": 3, "route": "/", "query": query("app")}),
        ),
        400,
        &["method"],
    );
    // Missing fields: each one named.
    expect_error(
        &proxy(&server, &json!({})),
        400,
        &[
            "missing field method",
            "missing field route",
            "missing field query",
        ],
    );
    expect_error(
        &proxy(&server, &json!({"method": "GET", "query": query("app")})),
        400,
        &["route"],
    );
    expect_error(
        &proxy(&server, &json!({"method": "GET", "route": "/"})),
        400,
        &["query"],
    );
    let r = server.http("POST", "/api/v1/proxy", &[], Some("{not json"));
    expect_error(&r, 400, &["JSON"]);
    expect_error(
        &proxy(
            &server,
            &json!({"method": "GET", "route": "/a b", "query": query("app")}),
        ),
        400,
        &["route"],
    );
    expect_error(
        &proxy(
            &server,
            &json!({"method": "GET", "route": "/", "query": {"ops": [{"path": "x"}]}}),
        ),
        400,
        &["invalid query"],
    );
    expect_error(
        &proxy(
            &server,
            &json!({"method": "GET", "route": "/", "query": query("app"), "headers": ["x"]}),
        ),
        400,
        &["headers"],
    );
    // No matching client.
    expect_error(
        &proxy(&server, &get("nobody", "/")),
        400,
        &["no matching client"],
    );
    // Other methods on the route: 405.
    assert_eq!(server.http("GET", "/api/v1/proxy", &[], None).status, 405);
    assert_eq!(
        up.requests(),
        4 * 3 + 2,
        "refused requests must not reach the upstream"
    );
}

#[test]
fn upstream_statuses_are_relayed_as_they_are() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    for status in [201u16, 204, 302, 404, 500, 503] {
        let r = proxy(&server, &get("app", &format!("/status/{status}")));
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header("x-upstream"), Some("a"));
        if status != 204 {
            assert_eq!(r.text(), format!("status {status}"));
        }
    }
}

#[test]
fn large_and_chunked_bodies_both_ways() {
    let server = Server::start(&["--max-http-body", "4194304"]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    // Upstream → caller: with a length, and chunked.
    for route in [
        "/big/3000000",
        "/chunked/3000000",
        "/big/100",
        "/chunked/100",
    ] {
        let r = proxy(&server, &get("app", route));
        assert_eq!(r.status, 200, "{route}");
        let n: usize = route.rsplit('/').next().unwrap().parse().unwrap();
        assert!(
            r.body == pattern_body(n),
            "{route}: {} bytes back",
            r.body.len()
        );
    }
    // Caller → upstream: a large body, sent to the API chunked.
    let text: String = String::from_utf8(pattern_body(2_000_000)).unwrap();
    let body =
        json!({"method": "PUT", "route": "/raw", "query": query("app"), "body": text}).to_string();
    let mut req = b"POST /api/v1/proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.as_bytes().chunks(65_000) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let raw = raw_exchange(&server, &req);
    let head_end = find(&raw, b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 2000000"), "{head}");
    assert!(raw[head_end + 4..] == *text.as_bytes(), "body differs");
}

#[test]
fn large_bodies_are_streamed_not_buffered() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    // The upstream sends 500 kB, waits a second, sends the rest: the caller
    // has the head and the first half well before the upstream is done.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let start = Instant::now();
    s.write_all(&proxy_request(&get("app", "/slow/1000000")))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    while got.len() < 400_000 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    let early = start.elapsed();
    assert!(
        early < Duration::from_millis(800),
        "first half after {early:?}"
    );
    let head_end = find(&got, b"\r\n\r\n").expect("head");
    assert!(String::from_utf8_lossy(&got[..head_end]).contains("content-length: 1000000"));
    while got.len() < head_end + 4 + 1_000_000 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(got[head_end + 4..] == pattern_body(1_000_000));
}

#[test]
fn response_body_cap() {
    let server = Server::start(&["--proxy-max-body", "100000"]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    assert_eq!(proxy(&server, &get("app", "/big/100000")).status, 200);
    // Declared too large, or found too large before anything was sent: 502.
    expect_error(
        &proxy(&server, &get("app", "/big/100001")),
        502,
        &["larger than 100000 bytes"],
    );
    let server2 = Server::start(&["--proxy-max-body", "30000"]);
    let _c2 = behind(&server2, "app", "c", &up, json!({}));
    expect_error(
        &proxy(&server2, &get("app", "/chunked/40000")),
        502,
        &["larger than 30000 bytes"],
    );
    // Found too large while streaming: the caller's response is cut short
    // (a chunked body without its last chunk, then a close).
    let raw = proxy_raw(&server, &get("app", "/chunked/300000"));
    let head_end = find(&raw, b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "a cut body must not look complete"
    );
    assert!(raw.len() < 300_000);
    // The server is fine afterwards.
    assert_eq!(proxy(&server, &get("app", "/x")).status, 200);
}

#[test]
fn upstream_down_is_502() {
    let server = Server::start(&[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _c = Client::ready_with(
        &server,
        Json,
        "app",
        "c",
        json!({"ip": format!("127.0.0.1:{port}")}),
    );
    let r = proxy(&server, &get("app", "/"));
    expect_error(&r, 502, &["unreachable", &port.to_string()]);
    // An address that is not one.
    let _d = Client::ready_with(&server, Json, "bad", "d", json!({"ip": "ftp://h"}));
    expect_error(
        &proxy(&server, &get("bad", "/")),
        502,
        &["no usable address"],
    );
}

#[test]
fn upstream_that_hangs_is_504() {
    let server = Server::start(&["--proxy-timeout", "700"]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    let start = Instant::now();
    let r = proxy(&server, &get("app", "/hang"));
    expect_error(&r, 504, &["timed out"]);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < STEP,
        "{took:?}"
    );
    // The next request to the same upstream is not stuck behind it.
    assert_eq!(proxy(&server, &get("app", "/x")).status, 200);
}

#[test]
fn upstream_that_closes_mid_response_is_502() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    expect_error(&proxy(&server, &get("app", "/cut")), 502, &["failed"]);
    // Past the first 64 KiB the response is already on its way: the caller
    // sees the head, then fewer bytes than announced and a close.
    let raw = proxy_raw(&server, &get("app", "/cutbig/1000000"));
    let head_end = find(&raw, b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(head.contains("content-length: 1000000"), "{head}");
    assert!(raw.len() - head_end - 4 < 1_000_000);
    assert_eq!(proxy(&server, &get("app", "/x")).status, 200);
}

#[test]
fn routes_by_metadata_to_the_right_upstream() {
    let server = Server::start(&["--shards", "3"]);
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let _clients: Vec<Client> = ups
        .iter()
        .enumerate()
        .map(|(i, up)| {
            behind(
                &server,
                "svc",
                &up.name,
                up,
                json!({"region": meta("string", json!(up.name)), "load": meta("integer", json!(i))}),
            )
        })
        .collect();
    for name in ["a", "b", "c", "b", "a"] {
        let q = query_ops("svc", json!([op("/region", "$eq", json!(name))]));
        let r = proxy(&server, &json!({"method": "GET", "route": "/", "query": q}));
        assert_eq!(r.json()["upstream"], json!(name));
    }
    let q = with(query("svc"), "selector", json!({"$max": "load"}));
    let r = proxy(&server, &json!({"method": "GET", "route": "/", "query": q}));
    assert_eq!(r.json()["upstream"], json!("c"));
    // Without a key, every upstream gets some of 60 requests.
    for _ in 0..60 {
        assert_eq!(proxy(&server, &get("svc", "/")).status, 200);
    }
    for up in &ups {
        assert!(up.requests() > 3, "{} got {}", up.name, up.requests());
    }
}

#[test]
fn key_is_sticky_and_matches_send() {
    let server = Server::start(&["--shards", "3"]);
    let ups: Vec<Upstream> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let mut clients: Vec<Client> = ups
        .iter()
        .map(|up| behind(&server, "svc", &up.name, up, json!({})))
        .collect();
    let mut sender = Client::ready(&server, Json, "other", "sender");
    for key in ["user-1", "user-2", "user-3"] {
        let q = with(query("svc"), "key", json!(key));
        let first =
            proxy(&server, &json!({"method": "GET", "route": "/", "query": q})).json()["upstream"]
                .clone();
        for _ in 0..5 {
            let r = proxy(&server, &json!({"method": "GET", "route": "/", "query": q}));
            assert_eq!(r.json()["upstream"], first, "key {key}");
        }
        // A SEND with the same query reaches the client of that upstream.
        sender.send_to(q.clone(), json!(key), json!("hi"));
        let i = ups.iter().position(|u| json!(u.name) == first).unwrap();
        clients[i].expect_message("SEND", &json!(key), &json!("hi"));
    }
}

#[test]
fn restricted_clients_are_never_targets_and_auth_is_required() {
    let server = Server::start(&["--auth", "pw"]);
    let up = Upstream::start("a");
    let _locked = Client::ready_with(&server, Json, "app", "locked", json!({"ip": up.ip()}));
    let q =
        json!({"method": "GET", "route": "/", "query": {"application": "app", "restricted": true}});
    expect_error(
        &proxy_auth(&server, &q, Some("pw")),
        400,
        &["no matching client"],
    );
    let _free = Client::ready_with(
        &server,
        Json,
        "app",
        "free",
        json!({"ip": up.ip(), "auth": "pw"}),
    );
    for _ in 0..10 {
        assert_eq!(proxy_auth(&server, &q, Some("pw")).status, 200);
    }
    for auth in [None, Some("wrong")] {
        let r = proxy_auth(&server, &q, auth);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json(),
            json!({"status": "error", "error": "not authorized"})
        );
    }
    assert_eq!(up.requests(), 10);
}

#[test]
fn address_forms_and_pooled_connections() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    // An http:// base with a path: the path prefixes every route.
    let _base = Client::ready_with(
        &server,
        Json,
        "base",
        "c",
        json!({"ip": format!("http://{}/prefix/", up.ip())}),
    );
    let r = proxy(&server, &get("base", "/x?y=1"));
    assert_eq!(r.json()["target"], json!("/prefix/x?y=1"));
    // A host name, resolved off the shard's thread.
    let _named = Client::ready_with(
        &server,
        Json,
        "named",
        "c",
        json!({"ip": format!("localhost:{}", up.addr.port())}),
    );
    let r = proxy(&server, &get("named", "/n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], json!("/n"));
    // Sequential requests reuse one upstream connection per shard.
    let before = up.connections();
    for _ in 0..10 {
        assert_eq!(proxy(&server, &get("base", "/again")).status, 200);
    }
    assert!(
        up.connections() - before <= 1,
        "{} new connections for 10 requests",
        up.connections() - before
    );
    // Without a pool, one connection per request.
    let server = Server::start(&["--proxy-pool-size", "0"]);
    let _c = behind(&server, "app", "c", &up, json!({}));
    let before = up.connections();
    for _ in 0..5 {
        assert_eq!(proxy(&server, &get("app", "/")).status, 200);
    }
    assert_eq!(up.connections() - before, 5);
}

#[test]
fn proxying_while_websocket_traffic_continues() {
    let server = Server::start(&["--shards", "2"]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    let mut a = Client::ready(&server, Json, "chat", "a");
    let mut b = Client::ready(&server, Json, "chat", "b");
    let addr = server.addr();
    let proxied = std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut ok = 0;
            for i in 0..40 {
                let raw = raw_exchange_at(addr, &proxy_request(&get("app", &format!("/p/{i}"))));
                let head_end = find(&raw, b"\r\n\r\n").expect("a response head");
                assert!(
                    raw.starts_with(b"HTTP/1.1 200 "),
                    "{}",
                    String::from_utf8_lossy(&raw)
                );
                let echo: Value = serde_json::from_slice(&raw[head_end + 4..]).unwrap();
                assert_eq!(echo["target"], json!(format!("/p/{i}")));
                ok += 1;
            }
            ok
        });
        for i in 0..200 {
            a.send_to(
                query_ops("chat", json!([op("/ip", "$eq", json!("127.0.0.1"))])),
                json!(i),
                json!("m"),
            );
            // a or b receives it; drain both.
            let mut got = false;
            let deadline = Instant::now() + STEP;
            while !got && Instant::now() < deadline {
                for c in [&mut a, &mut b] {
                    if let Event::Packet(p) = c.next_event(Duration::from_millis(2)) {
                        assert_eq!(p["d"]["nonce"], json!(i));
                        got = true;
                    }
                }
            }
            assert!(got, "SEND {i} never arrived");
        }
        worker.join().unwrap()
    });
    assert_eq!(proxied, 40);
}

#[test]
fn upstream_that_never_accepts_is_504() {
    // A listener whose accept queue is full (backlog 0, one connection
    // already waiting): Linux drops further SYNs, so connecting hangs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid listening socket; listen may be called again to
        // change its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    }
    let _fill: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    let server = Server::start(&["--proxy-connect-timeout", "400"]);
    let _c = Client::ready_with(&server, Json, "app", "c", json!({"ip": addr.to_string()}));
    let start = Instant::now();
    let r = proxy(&server, &get("app", "/"));
    expect_error(&r, 504, &["timed out", "no connection within"]);
    assert!(start.elapsed() < STEP, "{:?}", start.elapsed());
}

#[test]
fn http10_callers_get_a_close_delimited_body_instead_of_chunks() {
    let server = Server::start(&[]);
    let up = Upstream::start("a");
    let _c = behind(&server, "app", "c", &up, json!({}));
    // Unknown length and larger than the read-ahead: streamed.
    let body = get("app", "/chunked/300000").to_string();
    let request = format!(
        "POST /api/v1/proxy HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_exchange(&server, request.as_bytes());
    let end = find(&raw, b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        raw[end + 4..] == pattern_body(300_000)[..],
        "{} bytes",
        raw.len() - end - 4
    );
}
