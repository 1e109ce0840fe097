//! Configuration sources (the server's CLI): every setting comes from a flag,
//! an env var or a TOML file, with flags over env over file over defaults.
//! Observed through settings a client can see: the hello's heartbeat interval,
//! auth, and the metadata update mode.

mod common;

use common::*;
use std::io::Write;

fn config_file(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("singyeong-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}.toml", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    path
}

fn hello_interval(server: &Server) -> Value {
    Client::connect(server, Json).hello["d"]["heartbeat_interval"].clone()
}

#[test]
fn heartbeat_interval_precedence_is_flag_env_file_default() {
    let file = config_file("hb", "heartbeat_interval = 1111\n");
    let f = file.to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], u64);
    let cases: [Case; 5] = [
        (&[], &[], 45000),
        (&["--config", f], &[], 1111),
        (&["--config", f], &[("HEARTBEAT_INTERVAL", "2222")], 2222),
        (
            &["--config", f, "--heartbeat-interval", "3333"],
            &[("HEARTBEAT_INTERVAL", "2222")],
            3333,
        ),
        (
            &["--heartbeat-interval", "3333"],
            &[("HEARTBEAT_INTERVAL", "2222")],
            3333,
        ),
    ];
    for (args, env, want) in cases {
        let server = Server::start_with_env(args, env);
        assert_eq!(hello_interval(&server), json!(want), "{args:?} {env:?}");
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn the_config_file_holds_the_other_settings_too() {
    let file = config_file(
        "all",
        "auth = \"file-pw\"\nmetadata_update_mode = \"replace\"\nshards = 2\nmax_frame_size = 4096\n",
    );
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    let mut c = Client::connect(&server, Json);
    assert_eq!(
        c.identify("app", "c", json!({"auth": "file-pw"}))["restricted"],
        json!(false)
    );
    let mut r = Client::connect(&server, Json);
    assert_eq!(r.identify("app", "r", json!({}))["restricted"], json!(true));
    c.set_metadata(json!({"a": meta("integer", json!(1))}));
    c.set_metadata(json!({"b": meta("integer", json!(2))}));
    let nodes = c.query_nodes(query("app"));
    let m = &node_of(&nodes, "c")["metadata"];
    assert!(
        m.get("a").is_none() && m["b"] == json!(2),
        "replace mode from the file: {m}"
    );
    c.send_to(query("app"), json!(1), json!("x".repeat(8000)));
    c.expect_error_close(texts::FRAME_TOO_LARGE);
    let _ = std::fs::remove_file(file);
}
