//! One client's session: what each packet it sends means (contract §2–§8).
//! Every handler has the same shape: validate the packet, apply it to the
//! shard, queue the reply on the connection.

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::config::UpdateMode;
use crate::metadata::{
    ClientIdx, MetaValue, Metadata, UpdateError, estimated_entry_size, estimated_size, parse_update,
};
use crate::metrics::Limit;
use crate::protocol::{self, Encoding, InboundPacket, errors, op};
use crate::query::Query;
use crate::queue;
use crate::routing::pipeline::Pipeline;
use crate::routing::router::{self, NoRoute, OneSend};
use crate::shard::{ConnHandle, ConnId, ConnRef, Dispatch, NewClient, Shard, now_ms};

/// Who the client said it is, once identify succeeded.
struct Identity {
    idx: ClientIdx,
    app_id: String,
    client_id: String,
    restricted: bool,
    conn_ref: ConnRef,
}

pub struct Session {
    shard: Rc<Shard>,
    conn: Rc<ConnHandle>,
    peer: SocketAddr,
    identity: Option<Identity>,
    /// SENDs and BROADCASTs being routed; made on the first one, so idle
    /// connections do not pay for it.
    pipeline: OnceCell<Rc<Pipeline>>,
}

impl Session {
    pub fn new(shard: Rc<Shard>, encoding: Encoding, peer: SocketAddr) -> Session {
        let conn = shard.open_conn(encoding, peer.ip());
        Session {
            shard,
            conn,
            peer,
            identity: None,
            pipeline: OnceCell::new(),
        }
    }

    pub fn conn(&self) -> &Rc<ConnHandle> {
        &self.conn
    }

    pub fn shard(&self) -> &Rc<Shard> {
        &self.shard
    }

    /// The first packet on every connection.
    pub fn hello(&self) {
        let interval = self.shard.config.heartbeat_interval.as_millis() as u64;
        self.conn
            .send_packet(op::HELLO, None, &protocol::payload::hello(interval));
    }

    /// Handles one websocket data message.
    pub async fn handle_frame(&mut self, data: &[u8], is_text: bool) {
        let encoding = self.conn.encoding;
        let packet = protocol::check_frame_type(encoding, !is_text)
            .and_then(|()| protocol::decode(encoding, data));
        let packet = match packet {
            Ok(packet) => packet,
            // An opcode outside 0..=255 (or not a number) is an unknown op
            // rather than an undecodable frame.
            Err(protocol::DecodeError::InvalidOp) if self.identity.is_some() => {
                self.conn.invalid(errors::INVALID_OP, Value::Null);
                return;
            }
            Err(e) => {
                if self.identity.is_none() {
                    self.conn.fail(errors::CANNOT_DECODE, json!(e.to_string()));
                } else {
                    self.conn
                        .invalid(errors::CANNOT_DECODE, json!(e.to_string()));
                }
                return;
            }
        };
        self.shard.metrics.packet_in(packet.op);
        match (packet.op, self.identity.is_some()) {
            // Rare and large futures are boxed so they do not set the size of
            // every idle connection's task.
            (op::IDENTIFY, false) => Box::pin(self.identify(packet.d)).await,
            (op::IDENTIFY, true) => self.conn.invalid(errors::ALREADY_IDENTIFIED, Value::Null),
            (_, false) => self.conn.fail(errors::NOT_IDENTIFIED, Value::Null),
            (op::HEARTBEAT, true) => {
                // Its ack follows every earlier packet's outcome.
                if let Some(pipeline) = self.pipeline.get() {
                    pipeline.drained().await;
                }
                self.heartbeat()
            }
            (op::DISPATCH, true) => self.dispatch(packet).await,
            (_, true) => self.conn.invalid(errors::INVALID_OP, json!(packet.op)),
        }
        glommio::yield_if_needed().await;
    }

    async fn identify(&mut self, d: Value) {
        match self.try_identify(d).await {
            Ok(identity) => {
                self.conn.send_packet(
                    op::READY,
                    None,
                    &protocol::payload::ready(&identity.client_id, identity.restricted),
                );
                self.shard
                    .announce("CLIENT_CONNECTED", &identity.app_id, &identity.client_id);
                self.identity = Some(identity);
            }
            Err((error, extra)) => self.conn.fail(&error, extra),
        }
    }

    async fn try_identify(&mut self, d: Value) -> Result<Identity, (String, Value)> {
        let fail = |e: &str| (e.to_string(), Value::Null);
        let Value::Object(d) = d else {
            return Err(fail(errors::INVALID_CLIENT_ID));
        };
        let client_id =
            name_field(&d, "client_id").ok_or_else(|| fail(errors::INVALID_CLIENT_ID))?;
        let app_id =
            name_field(&d, "application_id").ok_or_else(|| fail(errors::INVALID_APPLICATION_ID))?;
        let auth = optional_string(&d, "auth").map_err(|()| fail("invalid auth"))?;
        let ip = optional_string(&d, "ip").map_err(|()| fail("invalid ip"))?;
        let namespace = optional_string(&d, "namespace").map_err(|()| fail("invalid namespace"))?;
        let wants_updates = match d.get("receive_client_updates") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(fail("invalid receive_client_updates")),
        };
        let restricted = match &self.shard.config.auth {
            None => false,
            Some(password) => {
                !auth.is_some_and(|a| bool::from(a.as_bytes().ct_eq(password.as_bytes())))
            }
        };
        if restricted && self.conn.encoding == Encoding::Etf {
            return Err(fail(errors::RESTRICTED_ETF));
        }

        let mut metadata = Metadata::new();
        match d.get("metadata") {
            None | Some(Value::Null) => {}
            Some(update) => {
                let values = parse_update(update).map_err(|e| {
                    (
                        errors::INITIAL_METADATA_INVALID.to_string(),
                        update_error_info(e),
                    )
                })?;
                for (key, value) in values {
                    metadata.insert(&key, value);
                }
            }
        }
        let ip = if restricted {
            Value::Null
        } else {
            Value::String(ip.unwrap_or_else(|| self.peer.ip().to_string()))
        };
        let wants_updates = wants_updates && !restricted;
        let reserved = [
            ("last_heartbeat_time", json!(now_ms())),
            ("restricted", json!(restricted)),
            ("encoding", json!(self.conn.encoding.name())),
            ("ip", ip),
            ("namespace", namespace.map_or(Value::Null, Value::String)),
            ("receive_client_updates", json!(wants_updates)),
        ];
        for (key, value) in reserved {
            metadata.insert(key, MetaValue::plain(value));
        }
        if estimated_size(&metadata) > self.shard.config.max_metadata_size {
            return Err((
                errors::INITIAL_METADATA_INVALID.to_string(),
                json!(errors::METADATA_TOO_LARGE),
            ));
        }

        // The name is claimed first, for this connection; only once it is
        // ours does the client enter the store, in the same step that makes
        // its connection reachable. Entering the store before the claim
        // (which may wait on another shard) would let a pick choose a client
        // that has no connection to deliver to yet.
        let owner = ConnId {
            shard: self.shard.id,
            conn: self.conn.id,
        };
        if !self.shard.claim_name(&app_id, &client_id, owner).await {
            return Err(fail(&errors::already_registered(&client_id, &app_id)));
        }
        // Then across the cluster, at the name's home node.
        if !crate::node::claims::claim(&self.shard, &app_id, &client_id, owner).await {
            self.shard.release_name(&app_id, &client_id, owner);
            return Err(fail(&errors::already_registered(&client_id, &app_id)));
        }
        if self.conn.is_closing() {
            // Closed (shutdown, reaper) while the claim was in flight.
            self.shard.release_name(&app_id, &client_id, owner);
            crate::node::claims::release(&self.shard, &app_id, &client_id, owner);
            return Err(fail(errors::SHUTDOWN));
        }
        let idx = self.shard.join_client(
            &self.conn,
            NewClient {
                app_id: app_id.clone(),
                client_id: client_id.clone(),
                restricted,
                metadata,
                subscribe: wants_updates,
            },
        );
        let conn_ref = ConnRef {
            shard: self.shard.id,
            client: idx,
            conn: self.conn.id,
        };
        Ok(Identity {
            idx,
            app_id,
            client_id,
            restricted,
            conn_ref,
        })
    }

    /// Whether the client's store slot is still its own: a closing
    /// connection is taken out of routing, and its slot may then hold a
    /// newer client.
    fn routable(&self, identity: &Identity) -> bool {
        self.conn.client() == Some(identity.idx)
    }

    fn heartbeat(&self) {
        let Some(identity) = &self.identity else {
            return;
        };
        self.conn.heartbeat(Instant::now());
        if self.routable(identity) {
            self.shard.store.borrow_mut().set_reserved(
                identity.idx,
                "last_heartbeat_time",
                MetaValue::plain(json!(now_ms())),
            );
        }
        self.conn.send_packet(
            op::HEARTBEAT_ACK,
            None,
            &protocol::payload::heartbeat_ack(&identity.client_id),
        );
    }

    async fn dispatch(&self, packet: InboundPacket) {
        let Some(identity) = &self.identity else {
            return;
        };
        let t = packet.t.as_deref().unwrap_or("");
        if identity.restricted && t != "UPDATE_METADATA" {
            self.conn
                .invalid(&errors::restricted_dispatch(t), Value::Null);
            return;
        }
        match t {
            "UPDATE_METADATA" => self.update_metadata(identity, &packet.d),
            "SEND" | "BROADCAST" => self.route(packet).await,
            "QUERY_NODES" => Box::pin(self.query_nodes(&packet.d)).await,
            "QUEUE" | "QUEUE_REQUEST" | "QUEUE_REQUEST_CANCEL" | "QUEUE_ACK" => {
                if let Err((error, extra)) = self.queue(identity, t, &packet.d) {
                    self.conn.invalid(&error, extra);
                }
            }
            _ => self.conn.invalid(
                errors::INVALID_DISPATCH_PAYLOAD,
                json!(format!("unknown dispatch type {t:?}")),
            ),
        }
    }

    fn update_metadata(&self, identity: &Identity, d: &Value) {
        let values = match parse_update(d) {
            Ok(values) => values,
            Err(e) => {
                self.conn
                    .invalid(errors::INVALID_METADATA, update_error_info(e));
                return;
            }
        };
        if !self.routable(identity) {
            return;
        }
        let mut store = self.shard.store.borrow_mut();
        let Some(entry) = store.get(identity.idx) else {
            return;
        };
        // Price what the metadata would become before applying anything,
        // so a rejected update changes nothing.
        let mode = self.shard.config.metadata_update_mode;
        let kept = |key: &str| match mode {
            UpdateMode::Merge => !values.iter().any(|(k, _)| k == key),
            UpdateMode::Replace => crate::metadata::RESERVED_KEYS.contains(&key),
        };
        let size: usize = entry
            .metadata
            .iter()
            .filter(|(key, _)| kept(key))
            .map(|(key, value)| estimated_entry_size(key, value))
            .chain(
                values
                    .iter()
                    .map(|(key, value)| estimated_entry_size(key, value)),
            )
            .sum();
        if size > self.shard.config.max_metadata_size {
            self.conn.invalid(errors::METADATA_TOO_LARGE, Value::Null);
            return;
        }
        match mode {
            UpdateMode::Merge => store.merge(identity.idx, values),
            UpdateMode::Replace => store.replace(identity.idx, values),
        }
        drop(store);
        crate::routing::locate::publish(&self.shard);
        queue::owner::client_updated(&self.shard, identity.conn_ref);
    }

    /// QUEUE, QUEUE_REQUEST, QUEUE_REQUEST_CANCEL, QUEUE_ACK: checked here,
    /// applied by the queue's owner shard.
    fn queue(&self, identity: &Identity, t: &str, d: &Value) -> Result<(), (String, Value)> {
        let bad = |detail: &str| (errors::INVALID_DISPATCH_PAYLOAD.to_string(), json!(detail));
        let Value::Object(d) = d else {
            return Err(bad("d must be an object with a queue"));
        };
        let name: Arc<str> = match d.get("queue") {
            Some(Value::String(s)) if !s.is_empty() => {
                // Checked here, before the name travels anywhere: the log,
                // metrics and API all carry it.
                let max = self.shard.config.max_queue_name_length;
                if s.len() > max {
                    self.shard.metrics.limit_refused(Limit::QueueNameLength);
                    return Err((
                        queue::errors::QUEUE_NAME_TOO_LONG.into(),
                        json!({"length": s.len(), "max_queue_name_length": max}),
                    ));
                }
                s.as_str().into()
            }
            _ => return Err(bad("queue must be a non-empty string")),
        };
        let me = identity.conn_ref;
        match t {
            "QUEUE" => {
                let target = d.get("target").ok_or_else(|| bad("missing target"))?;
                let query = Query::parse(target)
                    .map_err(|e| (errors::invalid_query(&e.to_string()), Value::Null))?;
                let nonce = d.get("nonce").cloned().unwrap_or(Value::Null);
                let payload = d.get("payload").cloned().unwrap_or(Value::Null);
                queue::owner::client_push(
                    &self.shard,
                    me,
                    name,
                    query,
                    target.clone(),
                    nonce,
                    payload,
                )
            }
            "QUEUE_REQUEST" => queue::owner::client_request(&self.shard, me, name),
            "QUEUE_REQUEST_CANCEL" => {
                queue::owner::client_cancel(&self.shard, me, name);
                Ok(())
            }
            _ => {
                let id = match d.get("id") {
                    Some(Value::String(s)) => s.parse().ok(),
                    Some(Value::Number(n)) => n.as_u64(),
                    _ => return Err(bad("id must be a message id from a QUEUE dispatch")),
                };
                // An id this server never made is as unknown as an acked one.
                let Some(id) = id else {
                    return Err((
                        queue::errors::UNKNOWN_MESSAGE.into(),
                        json!({"queue": &*name, "id": d.get("id")}),
                    ));
                };
                queue::owner::client_ack(&self.shard, me, name, id);
                Ok(())
            }
        }
    }

    /// SEND and BROADCAST. The packet is taken apart, not copied: its
    /// nonce and payload move into the dispatch the recipients get.
    async fn route(&self, packet: InboundPacket) {
        let t = packet.t.unwrap_or_default();
        let routed = match Routed::parse(packet.d) {
            Ok(routed) => routed,
            Err((error, extra)) => {
                self.conn.invalid(&error, extra);
                return;
            }
        };
        let Some(identity) = &self.identity else {
            return;
        };
        let query = Arc::new(routed.query);
        let started = Instant::now();
        let kind = if t == "SEND" { "SEND" } else { "BROADCAST" };
        let dispatch = Arc::new(Dispatch {
            t: kind,
            d: routed.d,
        });
        // Whom to answer if nothing matches, and with what: the router
        // answers, possibly from the shard of a client that left meanwhile.
        let no_route = (!query.droppable).then_some(NoRoute {
            sender: identity.conn_ref,
            kind,
            target: routed.target,
            had_nonce: routed.had_nonce,
            had_payload: routed.had_payload,
        });
        // Routed in a task of its own, so that the next packet is read while
        // this one waits for other shards (see `routing::pipeline`); waits
        // here only while the connection has as many in flight as allowed.
        let pipeline = self
            .pipeline
            .get_or_init(|| Pipeline::new(self.shard.config.max_in_flight));
        let slot = pipeline.enter().await;
        if slot.ahead > 0 {
            self.shard.metrics.routing_overlapped();
        }
        let shard = self.shard.clone();
        let mut routing = Box::pin(async move {
            let metrics = &shard.metrics;
            if kind == "SEND" {
                let job = Box::new(OneSend::new(query, dispatch, no_route));
                let delivered = router::send(&shard, job, Some(&slot)).await;
                metrics.routed_send(delivered, started.elapsed());
            } else {
                let reached =
                    router::broadcast(&shard, query, dispatch, no_route, Some(&slot)).await;
                metrics.routed_broadcast(reached, started.elapsed());
            }
            drop(slot);
        });
        // Most routings on one shard finish without waiting: no task then.
        if futures_lite::future::poll_once(routing.as_mut())
            .await
            .is_none()
        {
            glommio::spawn_local(routing).detach();
        }
    }

    async fn query_nodes(&self, d: &Value) {
        let query = match Query::parse(d) {
            Ok(query) => query,
            Err(e) => {
                self.conn
                    .invalid(&errors::invalid_query(&e.to_string()), Value::Null);
                return;
            }
        };
        let found = router::nodes(&self.shard, Arc::new(query)).await;
        // Answers within the cap keep the contract's shape exactly; a cut
        // one says so, and how many matched.
        let d = if found.truncated() {
            json!({"nodes": found.nodes, "truncated": true, "total": found.matched})
        } else {
            json!({"nodes": found.nodes})
        };
        self.conn.send_packet(op::DISPATCH, Some("QUERY_NODES"), &d);
    }

    /// Cleans up after the connection ends: the client leaves the store and
    /// the registry (this node's, and its name's home's in a cluster), and
    /// subscribers hear of it.
    pub fn end(self) {
        self.shard.close_conn(&self.conn);
        if let Some(identity) = self.identity {
            queue::owner::client_gone(&self.shard, identity.conn_ref);
            self.shard.release_name(
                &identity.app_id,
                &identity.client_id,
                identity.conn_ref.into(),
            );
            crate::node::claims::release(
                &self.shard,
                &identity.app_id,
                &identity.client_id,
                identity.conn_ref.into(),
            );
            self.shard
                .announce("CLIENT_DISCONNECTED", &identity.app_id, &identity.client_id);
        }
    }
}

/// `client_id` / `application_id`: a non-empty string without whitespace.
fn name_field(d: &Map<String, Value>, key: &str) -> Option<String> {
    match d.get(key) {
        Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_whitespace) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// An optional string field: absent or null is `None`; another type is an
/// error.
fn optional_string(d: &Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

fn update_error_info(e: UpdateError) -> Value {
    match e {
        UpdateError::Keys(keys) => json!(keys),
        other => json!(other.to_string()),
    }
}

/// The `d` of SEND / BROADCAST, taken apart.
struct Routed {
    query: Query,
    /// The target as sent (for a `no_route` reply).
    target: Value,
    /// The dispatch `d` recipients get: `{"nonce", "payload"}`.
    d: Value,
    had_nonce: bool,
    had_payload: bool,
}

impl Routed {
    fn parse(d: Value) -> Result<Routed, (String, Value)> {
        let bad = |detail: &str| (errors::INVALID_DISPATCH_PAYLOAD.to_string(), json!(detail));
        let Value::Object(mut d) = d else {
            return Err(bad("d must be an object with target, nonce and payload"));
        };
        let target = d.remove("target").ok_or_else(|| bad("missing target"))?;
        let query = Query::parse(&target)
            .map_err(|e| (errors::invalid_query(&e.to_string()), Value::Null))?;
        let nonce = d.remove("nonce");
        let payload = d.remove("payload");
        Ok(Routed {
            query,
            target,
            had_nonce: nonce.is_some(),
            had_payload: payload.is_some(),
            d: json!({
                "nonce": nonce.unwrap_or(Value::Null),
                "payload": payload.unwrap_or(Value::Null),
            }),
        })
    }
}
