//! What one targeted SEND costs in messages between shards (issue 14,
//! point 4): a deterministic count, read from
//! `singyeong_cross_shard_messages_total`, at 1, 2, 4 and 8 shards.
//!
//! The routing directory bounds a SEND to a unique indexed id by three
//! messages (one once the answer is remembered) and an app-wide SEND by
//! one, whatever the shard count; a range query asks only the shards
//! holding clients of its application.

mod common;

use common::*;
use std::collections::BTreeMap;

const SENDS: u64 = 40;

/// Cross-shard messages sent so far, by kind, summed over shards.
fn cross_shard(server: &Server) -> BTreeMap<String, u64> {
    let text = server.http("GET", "/metrics", &[], None).text();
    let mut kinds = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("singyeong_cross_shard_messages_total{") else {
            continue;
        };
        let kind = rest
            .split("kind=\"")
            .nth(1)
            .and_then(|k| k.split('"').next());
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(kind), Some(value)) = (kind, value) {
            *kinds.entry(kind.to_string()).or_default() += value as u64;
        }
    }
    kinds
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Waits until no directory message is on its way: connects publish
/// application counts in batches a few milliseconds later, and those must
/// not be counted against the SENDs.
fn settle(server: &Server) {
    let directory = |kinds: BTreeMap<String, u64>| {
        kinds
            .into_iter()
            .filter(|(k, _)| k.starts_with("directory_"))
            .collect::<BTreeMap<_, _>>()
    };
    let mut last = directory(cross_shard(server));
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = directory(cross_shard(server));
        if now == last {
            return;
        }
        last = now;
    }
}

/// Checks what `SENDS` SENDs cost at `shards` shards: to a unique indexed
/// id, app-wide, and by a range, wherever sender and recipients sit.
fn per_send(shards: usize) {
    let server = Server::start(&["--shards", &shards.to_string()]);
    let mut observer = Client::ready(&server, Json, "o", "observer");
    let mut members = spread(&server, &mut observer, "r", 2, &[Json], json!({}));
    // Shards holding clients of "r": what a range query must still ask.
    let holding_r = shard_set(&members).len() as u64;
    let mut sender = members.pop().unwrap();
    let mut recipient = members.pop().unwrap();
    recipient
        .client
        .set_metadata(json!({"user_id": {"type": "integer", "value": 123}}));
    // An application of its own for the app-wide SEND, on several shards.
    let mut workers = spread(&server, &mut observer, "w", 3, &[Json], json!({}));
    let others = shards as u64 - 1;
    // The scrape itself asks every other shard once, and the sync is a
    // heartbeat (no message between shards).
    let scrape = || {
        let mut want = BTreeMap::new();
        if others > 0 {
            want.insert("metrics".to_string(), others);
            want.insert("reply_metrics".to_string(), others);
        }
        want
    };
    let remote = sender.shard != recipient.shard;

    // A unique indexed id: the value's home is asked (unless the sender's
    // shard is the home), then the packet goes to the one shard holding
    // the id: at most three messages, whatever the shard count. (The SENDs
    // are pipelined: those routed before the first answer came back ask
    // too, the rest use the answer remembered.)
    let unique = json!({"application": "r", "ops": [{"path": "/user_id", "op": "$eq", "to": {"value": 123}}]});
    let got = measure(&server, &mut sender, &unique, || {
        for _ in 0..SENDS {
            recipient.client.expect_dispatch("SEND");
        }
    });
    let mut want = scrape();
    if let Some(&asked) = got.get("locate") {
        assert!((1..=SENDS).contains(&asked), "{got:?}");
        want.insert("locate".to_string(), asked);
        want.insert("reply_located".to_string(), asked);
    }
    if remote {
        want.insert("pick_send".to_string(), SENDS);
    }
    assert_eq!(got, want, "{shards} shards, unique id");
    let per = got.get("locate").copied().unwrap_or(0) * 2 / SENDS + u64::from(remote);
    assert!(per <= 3, "{per} messages per SEND");
    let home_elsewhere = got.contains_key("locate");

    // The sender's shard remembers the home's answer: the same SENDs again
    // cost the packet alone, one message at most.
    let got = measure(&server, &mut sender, &unique, || {
        for _ in 0..SENDS {
            recipient.client.expect_dispatch("SEND");
        }
    });
    let mut want = scrape();
    if remote {
        want.insert("pick_send".to_string(), SENDS);
    }
    assert_eq!(got, want, "{shards} shards, unique id remembered");
    let remembered = metric_sum(&server, "singyeong_directory_remembered", "") as u64;
    assert_eq!(remembered, u64::from(home_elsewhere), "{shards} shards");

    // App-wide: the sender draws the shard from its copy of the counts and
    // sends it the packet: one message at most.
    let app_wide = json!({"application": "w"});
    let got = measure(&server, &mut sender, &app_wide, || {
        let mut clients: Vec<&mut Client> = workers.iter_mut().map(|m| &mut m.client).collect();
        collect(&mut clients, SENDS as usize);
    });
    let mut want = scrape();
    let handed = got.get("pick_send").copied().unwrap_or(0);
    assert!(handed <= SENDS, "{got:?}");
    if handed > 0 {
        want.insert("pick_send".to_string(), handed);
    }
    assert_eq!(got, want, "{shards} shards, app-wide");
    if shards > 1 && shard_set(&workers).len() > 1 {
        assert!(handed > 0, "the draw never chose another shard: {got:?}");
    }

    // A range cannot be narrowed by an index: every shard holding clients
    // of the application is asked (not the others), then the packet goes
    // to the chosen client's shard.
    let range = json!({"application": "r", "ops": [{"path": "/user_id", "op": "$gt", "to": {"value": 100}}]});
    let got = measure(&server, &mut sender, &range, || {
        for _ in 0..SENDS {
            recipient.client.expect_dispatch("SEND");
        }
    });
    let mut want = scrape();
    // The sender is a client of "r": its own shard is one of the holders.
    if holding_r > 1 {
        want.insert("pick".to_string(), SENDS * (holding_r - 1));
        want.insert("reply_pick".to_string(), SENDS * (holding_r - 1));
    }
    if remote {
        want.insert("send_one".to_string(), SENDS);
    }
    assert_eq!(got, want, "{shards} shards, range");

    // The directory's size is in /metrics: with one shard there is none;
    // otherwise every app is known to the shards not holding all of it,
    // and each indexed value (user_id 123 among them) has one home entry.
    let (apps, values) = directory_sizes(&server);
    if shards == 1 {
        assert_eq!((apps, values), (0, 0));
    } else {
        assert!(apps > 0 && values > 0, "{apps} apps, {values} values");
    }
}

/// The sums over shards of `singyeong_directory_apps` and
/// `singyeong_directory_values`.
fn directory_sizes(server: &Server) -> (u64, u64) {
    let sum = |family| metric_sum(server, family, "") as u64;
    (
        sum("singyeong_directory_apps"),
        sum("singyeong_directory_values"),
    )
}

/// The cross-shard messages `SENDS` SENDs to `target` cause, once the
/// directory is quiet; `receive` takes the deliveries.
fn measure(
    server: &Server,
    sender: &mut Member,
    target: &Value,
    receive: impl FnOnce(),
) -> BTreeMap<String, u64> {
    sender.client.sync();
    settle(server);
    let before = cross_shard(server);
    for i in 0..SENDS {
        sender.client.send_to(target.clone(), json!(i), json!("p"));
    }
    sender.client.sync();
    receive();
    delta(&before, &cross_shard(server))
}

#[test]
fn one_shard() {
    per_send(1);
}

#[test]
fn two_shards() {
    per_send(2);
}

#[test]
fn four_shards() {
    per_send(4);
}

#[test]
fn eight_shards() {
    per_send(8);
}
