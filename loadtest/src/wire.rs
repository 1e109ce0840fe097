//! The packets this tool exchanges with the server (contract §2, §3, §6),
//! and nothing else: encoding what it sends, decoding what it receives.
//!
//! Hot-path packets (SEND/BROADCAST out, deliveries in) are written by hand
//! into a `String` and read with borrowed serde structs, because the load
//! generator shares one core with nothing but itself and every allocation it
//! saves is throughput it can offer the server.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub const OP_HELLO: u8 = 0;
pub const OP_IDENTIFY: u8 = 1;
pub const OP_READY: u8 = 2;
pub const OP_INVALID: u8 = 3;
pub const OP_DISPATCH: u8 = 4;
pub const OP_HEARTBEAT: u8 = 5;
pub const OP_HEARTBEAT_ACK: u8 = 6;
pub const OP_GOODBYE: u8 = 7;
pub const OP_ERROR: u8 = 8;

/// `op 1`: identify with generated metadata (already a JSON object of typed
/// values, see [`crate::identity`]), the server's password when it has one
/// (without it a client is restricted and may not send), and the `ip` the
/// proxy scenario's receivers name as their HTTP upstream.
pub fn identify(
    client_id: &str,
    application_id: &str,
    auth: Option<&str>,
    ip: Option<&str>,
    metadata: Value,
) -> String {
    let mut d = json!({
        "client_id": client_id,
        "application_id": application_id,
        "metadata": metadata,
    });
    if let Some(auth) = auth {
        d["auth"] = json!(auth);
    }
    if let Some(ip) = ip {
        d["ip"] = json!(ip);
    }
    json!({"op": OP_IDENTIFY, "d": d}).to_string()
}

/// `op 5`.
pub fn heartbeat(client_id: &str) -> String {
    json!({"op": OP_HEARTBEAT, "d": {"client_id": client_id}}).to_string()
}

/// What every generated payload carries so the receiver can time it and
/// check it reached the right client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Send time, [`crate::clock::now_ns`].
    pub t: u64,
    /// Index of the sending connection.
    pub s: u32,
    /// Index of the application the message was addressed to.
    pub a: u32,
    /// The receiver `id` it was addressed to, or -1 when any receiver of
    /// application `a` may get it.
    pub r: i64,
    /// The `group` it was addressed to (group SEND), or -1.
    #[serde(default = "minus_one")]
    pub g: i64,
}

fn minus_one() -> i64 {
    -1
}

impl Stamp {
    /// Whether receiver `id` of application `app` in group `group` may get it.
    pub fn is_for(&self, id: u64, app: u32, group: u64) -> bool {
        self.a == app
            && (self.r < 0 || self.r as u64 == id)
            && (self.g < 0 || self.g as u64 == group)
    }

    /// Writes the payload object: `{"t":..,"s":..,"a":..,"r":..[,"g":..],"p":"<pad>"}`.
    pub fn write_payload(&self, out: &mut String, pad: &str) {
        let _ = write!(
            out,
            r#"{{"t":{},"s":{},"a":{},"r":{}"#,
            self.t, self.s, self.a, self.r
        );
        if self.g >= 0 {
            let _ = write!(out, r#","g":{}"#, self.g);
        }
        let _ = write!(out, r#","p":"{pad}"}}"#);
    }
}

/// How a dispatch selects its receivers, written as a query (contract §5).
pub enum Target<'a> {
    /// Every client of the application (already JSON-escaped, with quotes).
    App { app_json: &'a str },
    /// The one client of the application whose `/id` equals `id`.
    Id { app_json: &'a str, id: u64 },
    /// The clients of the application whose `/group` equals `group` (SEND
    /// picks one of them).
    Group { app_json: &'a str, group: u64 },
}

/// Writes `{"op":4,"t":EVENT,"d":{"target":..,"nonce":null,"payload":{stamp, "p": pad}}}`.
pub fn write_dispatch(
    out: &mut String,
    event: &str,
    target: &Target<'_>,
    stamp: &Stamp,
    pad: &str,
) {
    out.clear();
    let _ = write!(out, r#"{{"op":4,"t":"{event}","d":{{"target":"#);
    match target {
        Target::App { app_json } => {
            let _ = write!(out, r#"{{"application":{app_json}}}"#);
        }
        Target::Id { app_json, id } => {
            let _ = write!(
                out,
                r#"{{"application":{app_json},"ops":[{{"path":"/id","op":"$eq","to":{{"value":{id}}}}}]}}"#
            );
        }
        Target::Group { app_json, group } => {
            let _ = write!(
                out,
                r#"{{"application":{app_json},"ops":[{{"path":"/group","op":"$eq","to":{{"value":{group}}}}}]}}"#
            );
        }
    }
    out.push_str(r#","nonce":null,"payload":"#);
    stamp.write_payload(out, pad);
    out.push_str("}}");
}

/// The padding string: `bytes` ASCII characters, so no escaping is needed.
pub fn padding(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// Any packet from the server, with `d` left unparsed until `op` says what it is.
#[derive(Debug, Deserialize)]
pub struct Inbound<'a> {
    pub op: u8,
    #[serde(borrow, default)]
    pub t: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub d: Option<&'a RawValue>,
}

/// The stamp of a SEND or BROADCAST delivery, read in one pass; `None` for
/// any other packet, or a delivery whose payload is not a stamp (the
/// caller then reads it with [`Inbound`] and tells which).
pub fn delivery(text: &str) -> Option<Stamp> {
    #[derive(Deserialize)]
    struct Delivery<'a> {
        op: u8,
        #[serde(borrow)]
        t: Cow<'a, str>,
        d: Payload,
    }
    #[derive(Deserialize)]
    struct Payload {
        payload: Stamp,
    }
    let packet: Delivery = serde_json::from_str(text).ok()?;
    (packet.op == OP_DISPATCH && matches!(&*packet.t, "SEND" | "BROADCAST"))
        .then_some(packet.d.payload)
}

impl<'a> Inbound<'a> {
    pub fn parse(text: &'a str) -> Result<Inbound<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `heartbeat_interval` of a hello, in ms.
    pub fn heartbeat_interval(&self) -> Option<u64> {
        #[derive(Deserialize)]
        struct Hello {
            heartbeat_interval: u64,
        }
        let d = self.d?;
        serde_json::from_str::<Hello>(d.get())
            .ok()
            .map(|h| h.heartbeat_interval)
    }

    /// The stamp of a SEND/BROADCAST delivery.
    pub fn stamp(&self) -> Option<Stamp> {
        #[derive(Deserialize)]
        struct Delivery {
            payload: Stamp,
        }
        let d = self.d?;
        serde_json::from_str::<Delivery>(d.get())
            .ok()
            .map(|d| d.payload)
    }

    /// `error` of an invalid (op 3) or error (op 8) packet, `reason` of a
    /// goodbye, or the raw `d` when it has neither.
    pub fn error_text(&self) -> String {
        #[derive(Deserialize)]
        struct Body<'b> {
            #[serde(borrow, default)]
            error: Option<Cow<'b, str>>,
            #[serde(borrow, default)]
            reason: Option<Cow<'b, str>>,
        }
        let Some(d) = self.d else {
            return String::from("(no d)");
        };
        match serde_json::from_str::<Body>(d.get()) {
            Ok(Body { error: Some(e), .. })
            | Ok(Body {
                reason: Some(e), ..
            }) => e.into_owned(),
            _ => d.get().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_read_in_one_pass_and_nothing_else_is() {
        let stamp = r#"{"t":5,"s":1,"a":0,"r":3,"pad":"xx"}"#;
        let packet = |op: u8, t: &str, payload: &str| {
            format!(r#"{{"op":{op},"t":"{t}","d":{{"nonce":null,"payload":{payload}}},"ts":1}}"#)
        };
        let want = Stamp {
            t: 5,
            s: 1,
            a: 0,
            r: 3,
            g: -1,
        };
        assert_eq!(delivery(&packet(4, "SEND", stamp)), Some(want));
        assert_eq!(delivery(&packet(4, "BROADCAST", stamp)), Some(want));
        assert_eq!(delivery(&packet(4, "QUERY_NODES", stamp)), None);
        assert_eq!(delivery(&packet(3, "SEND", stamp)), None);
        assert_eq!(delivery(&packet(4, "SEND", r#"{"t":"late"}"#)), None);
        assert_eq!(
            delivery(r#"{"op":0,"d":{"heartbeat_interval":45000}}"#),
            None
        );
    }

    #[test]
    fn dispatch_round_trips_through_a_delivery() {
        let stamp = Stamp {
            t: 123,
            s: 2,
            a: 1,
            r: 77,
            g: -1,
        };
        let mut out = String::new();
        let app = serde_json::to_string("loadtest-1").unwrap();
        write_dispatch(
            &mut out,
            "SEND",
            &Target::Id {
                app_json: &app,
                id: 77,
            },
            &stamp,
            &padding(5),
        );
        let sent: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            sent,
            json!({"op":4,"t":"SEND","d":{
                "target":{"application":"loadtest-1","ops":[{"path":"/id","op":"$eq","to":{"value":77}}]},
                "nonce":null,
                "payload":{"t":123,"s":2,"a":1,"r":77,"p":"xxxxx"}}})
        );
        // What the server delivers (contract §6).
        let delivered =
            json!({"op":4,"t":"SEND","ts":1,"d":{"nonce":null,"payload":sent["d"]["payload"]}})
                .to_string();
        let inbound = Inbound::parse(&delivered).unwrap();
        assert_eq!(inbound.op, OP_DISPATCH);
        assert_eq!(inbound.t.as_deref(), Some("SEND"));
        assert_eq!(inbound.stamp(), Some(stamp));
    }

    #[test]
    fn broadcast_target_is_the_app() {
        let mut out = String::new();
        let stamp = Stamp {
            t: 1,
            s: 0,
            a: 0,
            r: -1,
            g: -1,
        };
        write_dispatch(
            &mut out,
            "BROADCAST",
            &Target::App { app_json: "\"a\"" },
            &stamp,
            "",
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["d"]["target"], json!({"application":"a"}));
        assert_eq!(v["d"]["payload"]["r"], json!(-1));
    }

    #[test]
    fn group_target_and_stamp() {
        let mut out = String::new();
        let stamp = Stamp {
            t: 1,
            s: 0,
            a: 0,
            r: -1,
            g: 3,
        };
        write_dispatch(
            &mut out,
            "SEND",
            &Target::Group {
                app_json: "\"a\"",
                group: 3,
            },
            &stamp,
            "",
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["d"]["target"]["ops"],
            json!([{"path":"/group","op":"$eq","to":{"value":3}}])
        );
        let back: Stamp = serde_json::from_value(v["d"]["payload"].clone()).unwrap();
        assert_eq!(back, stamp);
        assert!(back.is_for(13, 0, 3));
        assert!(!back.is_for(14, 0, 4));
        assert!(!back.is_for(13, 1, 3));
    }

    #[test]
    fn error_texts() {
        let p = r#"{"op":3,"t":null,"ts":1,"d":{"error":"no_route","extra_info":{}}}"#;
        assert_eq!(Inbound::parse(p).unwrap().error_text(), "no_route");
        let p = r#"{"op":7,"t":null,"ts":1,"d":{"reason":"shutting down"}}"#;
        assert_eq!(Inbound::parse(p).unwrap().error_text(), "shutting down");
        let p = r#"{"op":0,"t":null,"ts":1,"d":{"heartbeat_interval":45000}}"#;
        assert_eq!(Inbound::parse(p).unwrap().heartbeat_interval(), Some(45000));
    }
}
