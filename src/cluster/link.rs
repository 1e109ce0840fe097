//! Links between nodes: each shard owns one QUIC endpoint (quinn-proto,
//! sans-IO) on a UDP socket of its own, and talks to its counterpart
//! shards on the other nodes (see [`counterparts`]).
//!
//! The driver is small because quinn-proto does the protocol: a datagram
//! in, a timer due, or a frame to send each change one connection's
//! state, after which `Endpoint::pump` carries out what the connection
//! asks for, synchronously: events handled, frames read, datagrams sent
//! (a non-blocking `sendto` each; a full socket buffer drops the datagram,
//! which QUIC retransmits). Only two things wait: the receive loop and the
//! timer loop.
//!
//! A link is of no use until the peer proves it holds the cluster secret
//! (see [`super::tls`]): each side's first frame is a [`Hello`] with that
//! proof, checked before any other frame is read. A link that fails it,
//! sends anything else first, sends a frame that does not decode, or stays
//! silent past [`HELLO_DEADLINE`] is closed, and the reason is logged and
//! counted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, IdleTimeout,
    ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};

use super::frame::{self, Frame, FrameReader, Hello, Request, Response};
use super::node::{ClusterView, MemberState, NodeId};
use super::tls::{self, Side};

/// Longest a new link may take to prove the secret.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Largest frame a peer may send.
pub const MAX_FRAME: usize = 16 << 20;
/// Bytes queued on one link beyond what QUIC has taken: past it, sends to
/// that peer fail at once instead of growing memory behind a slow peer.
pub const MAX_QUEUED: usize = 32 << 20;
/// How soon a lost link to a live peer is dialed again.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// Links open at once, verified or not: bounds what strangers who can
/// reach the port can make a shard hold.
const MAX_LINKS: usize = 1024;

/// Shards of a node with `peer_shards` shards that shard `shard` of a node
/// with `shards` shards has a link with: its own number modulo theirs, and
/// each of theirs whose number modulo ours is it. Symmetric: shard i here
/// links to shard j there exactly when j there links to i here.
pub fn counterparts(shard: usize, shards: usize, peer_shards: usize) -> Vec<usize> {
    let mut out = vec![shard % peer_shards];
    out.extend((0..peer_shards).filter(|j| j % shards == shard && *j != shard % peer_shards));
    out
}

/// How many links two nodes with these shard counts have between them.
pub fn link_count(shards: usize, peer_shards: usize) -> usize {
    if shards == 0 || peer_shards == 0 {
        return 0;
    }
    (0..shards)
        .map(|i| counterparts(i, shards, peer_shards).len())
        .sum()
}

/// Of two nodes, the one that dials: the lower identity, so each link is
/// made once.
pub fn dials(me: &NodeId, peer: &NodeId) -> bool {
    (me.addr, me.boot) < (peer.addr, peer.boot)
}

/// The far end of a link: a shard of one run of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerShard {
    pub addr: SocketAddr,
    pub boot: u64,
    pub shard: u16,
}

impl PeerShard {
    /// The shard of `node` that shard `shard` of this node links to.
    pub fn of(node: &NodeId, shard: usize) -> PeerShard {
        PeerShard {
            addr: node.addr,
            boot: node.boot,
            shard: (shard % node.links.len().max(1)) as u16,
        }
    }
}

/// Why a link was closed by this side; the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// A frame that did not decode or was too large.
    BadFrame,
    /// A first frame that was not a valid Hello (version, schema, proof).
    BadHello,
    /// No Hello within the deadline.
    HelloTimeout,
    /// The connection failed (timeout, reset, TLS).
    Lost,
}

impl LinkError {
    pub const ALL: [LinkError; 4] = [
        LinkError::BadFrame,
        LinkError::BadHello,
        LinkError::HelloTimeout,
        LinkError::Lost,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LinkError::BadFrame => "bad_frame",
            LinkError::BadHello => "bad_hello",
            LinkError::HelloTimeout => "hello_timeout",
            LinkError::Lost => "lost",
        }
    }
}

/// Why a frame could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No verified link to that peer shard.
    NotConnected,
    /// Too much already waiting for that peer ([`MAX_QUEUED`]).
    Congested,
}

/// Why a request to another node got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteError {
    /// No verified link to that node's shard.
    NotConnected,
    /// Too much already waiting for it.
    Congested,
    /// The link closed before the answer came.
    Lost,
    /// No answer within the deadline.
    TimedOut,
}

impl From<SendError> for RemoteError {
    fn from(e: SendError) -> RemoteError {
        match e {
            SendError::NotConnected => RemoteError::NotConnected,
            SendError::Congested => RemoteError::Congested,
        }
    }
}

/// Frames and bytes exchanged with one peer node, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerTraffic {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Counters of one shard's links, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: [u64; LinkError::ALL.len()],
    /// Requests this shard sent to other nodes, and answered for them.
    pub requests_out: u64,
    pub requests_in: u64,
    /// Requests sent that got no answer: timed out, or their link failed
    /// (not connected, congested or lost).
    pub request_timeouts: u64,
    pub request_failures: u64,
}

/// A request sent, waiting for its answer.
struct Waiting {
    peer: PeerShard,
    answer: Option<Result<Response, RemoteError>>,
    waker: Option<std::task::Waker>,
}

/// What the layer above does with a request from another node: answer it,
/// eventually, with [`Endpoint::respond`].
pub type OnRequest = Rc<dyn Fn(PeerShard, u64, Request)>;

/// What the layer above does with the one-way frames of another node
/// ([`Frame::Apps`], [`Frame::ClientEvent`], [`Frame::Release`],
/// [`Frame::Values`], [`Frame::Queue`]).
pub type OnNotice = Rc<dyn Fn(PeerShard, Frame)>;

/// One verified link, as `/api/v1/cluster` shows it.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub peer: PeerShard,
    /// The last Ping's round trip (QUIC's estimate until one is answered).
    pub rtt: Duration,
    /// Bytes of frames QUIC has not taken yet (bounded by [`MAX_QUEUED`]).
    pub queued: usize,
    /// QUIC's congestion window, and the packets it has counted lost.
    pub cwnd: u64,
    pub lost_packets: u64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Binds a link socket: before the shards start, so that gossip can
/// advertise every shard's port.
///
/// Its buffers are asked to be [`SOCKET_BUFFER`] (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): at the default ~200 KiB a busy link's
/// bursts overflowed the receive buffer on loopback, and every datagram
/// lost costs QUIC a retransmission and a smaller congestion window.
pub fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still works, only with more losses.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The buffer size each link socket asks for, each way.
const SOCKET_BUFFER: usize = 4 << 20;

/// Who this shard is, for its Hellos.
#[derive(Debug, Clone)]
pub struct Me {
    pub name: String,
    /// The node's gossip address.
    pub addr: SocketAddr,
    pub boot: u64,
    pub shard: u16,
    pub shards: u16,
}

struct Link {
    conn: quinn_proto::Connection,
    side: Side,
    /// The peer as dialed; the peer as proven once its Hello is checked.
    dialed: Option<PeerShard>,
    peer: Option<PeerShard>,
    opened: Instant,
    out: Option<StreamId>,
    /// Encoded frames QUIC has not taken yet.
    queued: Vec<u8>,
    reader: FrameReader,
    hello_sent: bool,
    closing: bool,
    /// Round trip of the last Ping answered, through both shards.
    rtt: Option<Duration>,
}

/// One shard's QUIC endpoint and its links.
pub struct Endpoint {
    socket: glommio::net::UdpSocket,
    sender: socket2::Socket,
    local: SocketAddr,
    secret: Vec<u8>,
    me: RefCell<Me>,
    quic: RefCell<quinn_proto::Endpoint>,
    client: ClientConfig,
    links: RefCell<HashMap<ConnectionHandle, Link>>,
    /// Verified links by peer.
    by_peer: RefCell<HashMap<PeerShard, ConnectionHandle>>,
    /// Peers dialed recently and when, so a failing dial is not repeated
    /// every reconcile.
    dialed_at: RefCell<HashMap<PeerShard, Instant>>,
    /// Wakes the timer loop when a deadline moved earlier.
    timer_changed: RefCell<Option<std::task::Waker>>,
    next_timeout: Cell<Option<Instant>>,
    stats: Cell<LinkStats>,
    /// Frames and bytes by peer node (its gossip address), over every
    /// run of it.
    traffic: RefCell<BTreeMap<SocketAddr, PeerTraffic>>,
    /// Set when a deadline moved earlier, for the timer loop.
    kicked: Cell<bool>,
    pending: RefCell<HashMap<u64, Waiting>>,
    next_request: Cell<u64>,
    on_request: RefCell<Option<OnRequest>>,
    on_notice: RefCell<Option<OnNotice>>,
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_uni_streams(VarInt::from_u32(2));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(10_000))));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // glommio's UDP sockets have no GSO/GRO or ECN; start at QUIC's floor.
    t.mtu_discovery_config(None);
    t.enable_segmentation_offload(false);
    Arc::new(t)
}

impl Endpoint {
    /// The endpoint on `socket`, bound beforehand (see [`bind_socket`]);
    /// on the shard's own thread.
    pub fn new(
        socket: std::net::UdpSocket,
        secret: Vec<u8>,
        me: Me,
        tls: &tls::LinkTls,
    ) -> io::Result<Endpoint> {
        let std_socket = socket;
        let local = std_socket.local_addr()?;
        let socket = socket2::Socket::from(std_socket);
        let sender = socket.try_clone()?;
        let server_crypto = tls.server_crypto().map_err(io::Error::other)?;
        let server_crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(server_crypto)
            .map_err(io::Error::other)?;
        let mut server = ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport());
        server.max_incoming(MAX_LINKS);
        let client_crypto = tls.client_crypto().map_err(io::Error::other)?;
        let client_crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(client_crypto)
            .map_err(io::Error::other)?;
        let mut client = ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport());
        let quic = quinn_proto::Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(server)),
            false,
            None,
        );
        Ok(Endpoint {
            socket: glommio::net::UdpSocket::from(socket),
            sender,
            local,
            secret,
            me: RefCell::new(me),
            quic: RefCell::new(quic),
            client,
            links: RefCell::default(),
            by_peer: RefCell::default(),
            dialed_at: RefCell::default(),
            timer_changed: RefCell::new(None),
            next_timeout: Cell::new(None),
            stats: Cell::default(),
            traffic: RefCell::default(),
            kicked: Cell::new(false),
            pending: RefCell::default(),
            next_request: Cell::new(0),
            on_request: RefCell::new(None),
            on_notice: RefCell::new(None),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Who answers requests from other nodes.
    pub fn on_request(&self, handler: OnRequest) {
        *self.on_request.borrow_mut() = Some(handler);
    }

    /// Who takes other nodes' one-way frames.
    pub fn on_notice(&self, handler: OnNotice) {
        *self.on_notice.borrow_mut() = Some(handler);
    }

    /// Says goodbye on every link and closes it (shutdown): the peers
    /// stop sending at once instead of waiting for QUIC's idle timeout.
    pub fn goodbye(&self, reason: &str) {
        let now = Instant::now();
        let frame = Frame::Goodbye {
            reason: reason.to_string(),
        };
        for peer in self.peers() {
            let _ = self.send_frame(&peer, &frame);
        }
        let open: Vec<ConnectionHandle> = self.links.borrow().keys().copied().collect();
        for ch in open {
            self.close(ch, reason.as_bytes(), now);
        }
    }

    /// The peers this shard has a verified link to.
    pub fn peers(&self) -> Vec<PeerShard> {
        self.by_peer.borrow().keys().cloned().collect()
    }

    /// Asks `peer` and waits at most `deadline` for its answer.
    pub async fn request(
        &self,
        peer: &PeerShard,
        body: Request,
        deadline: Duration,
    ) -> Result<Response, RemoteError> {
        self.request_then(peer, body, deadline, || {}).await
    }

    /// [`Endpoint::request`], calling `sent` once the request is on the
    /// link (or failed to get there), before waiting for the answer.
    pub async fn request_then(
        &self,
        peer: &PeerShard,
        body: Request,
        deadline: Duration,
        sent: impl FnOnce(),
    ) -> Result<Response, RemoteError> {
        let id = self.next_request.get();
        self.next_request.set(id + 1);
        self.pending.borrow_mut().insert(
            id,
            Waiting {
                peer: peer.clone(),
                answer: None,
                waker: None,
            },
        );
        // Whatever happens below, the entry goes with this future.
        struct Forget<'a>(&'a Endpoint, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(self, id);
        self.count(|s| s.requests_out += 1);
        let on_link = self.send_frame(peer, &Frame::Request { id, body });
        sent();
        let result = match on_link {
            Err(e) => Err(RemoteError::from(e)),
            Ok(()) => {
                let answer = std::future::poll_fn(|cx| {
                    let mut pending = self.pending.borrow_mut();
                    let Some(waiting) = pending.get_mut(&id) else {
                        return std::task::Poll::Ready(Err(RemoteError::Lost));
                    };
                    match waiting.answer.take() {
                        Some(answer) => std::task::Poll::Ready(answer),
                        None => {
                            waiting.waker = Some(cx.waker().clone());
                            std::task::Poll::Pending
                        }
                    }
                });
                let late = async {
                    glommio::timer::sleep(deadline).await;
                    Err(RemoteError::TimedOut)
                };
                futures_lite::future::or(answer, late).await
            }
        };
        match result {
            Err(RemoteError::TimedOut) => self.count(|s| s.request_timeouts += 1),
            Err(_) => self.count(|s| s.request_failures += 1),
            Ok(_) => {}
        }
        result
    }

    /// Answers request `id` from `peer`.
    pub fn respond(&self, peer: &PeerShard, id: u64, body: Response) {
        // A peer whose link is gone has stopped waiting.
        let _ = self.send_frame(peer, &Frame::Response { id, body });
    }

    fn answered(&self, peer: &PeerShard, id: u64, answer: Result<Response, RemoteError>) {
        let mut pending = self.pending.borrow_mut();
        if let Some(waiting) = pending.get_mut(&id)
            && waiting.peer == *peer
        {
            waiting.answer = Some(answer);
            if let Some(waker) = waiting.waker.take() {
                waker.wake();
            }
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats.get()
    }

    /// Frames and bytes by peer node, by address.
    pub fn traffic(&self) -> Vec<(SocketAddr, PeerTraffic)> {
        self.traffic
            .borrow()
            .iter()
            .map(|(addr, t)| (*addr, *t))
            .collect()
    }

    /// This shard's run id changed (the node renewed its identity).
    pub fn set_boot(&self, boot: u64) {
        self.me.borrow_mut().boot = boot;
    }

    /// Verified links, with their round-trip times.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.links
            .borrow()
            .values()
            .filter(|l| !l.closing)
            .filter_map(|l| {
                let stats = l.conn.stats();
                Some(LinkInfo {
                    peer: l.peer.clone()?,
                    rtt: l.rtt.unwrap_or_else(|| l.conn.rtt()),
                    queued: l.queued.len(),
                    cwnd: stats.path.cwnd,
                    lost_packets: stats.path.lost_packets,
                })
            })
            .collect()
    }

    /// Runs the endpoint until the task is cancelled.
    pub async fn run(self: Rc<Self>) {
        let timers = glommio::spawn_local({
            let me = self.clone();
            async move { me.timer_loop().await }
        })
        .detach();
        self.receive_loop().await;
        timers.cancel();
    }

    async fn receive_loop(self: &Rc<Self>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, from) = super::next_datagram(&self.socket, &mut buf, "link").await;
            self.on_datagram(Instant::now(), from, &buf[..len]);
        }
    }

    async fn timer_loop(self: &Rc<Self>) {
        loop {
            let wait = std::future::poll_fn(|cx| {
                if self.kicked.replace(false) {
                    return std::task::Poll::Ready(());
                }
                *self.timer_changed.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            });
            match self.next_timeout.get() {
                Some(at) => {
                    let sleep = glommio::timer::sleep(at.saturating_duration_since(Instant::now()));
                    futures_lite::future::or(sleep, wait).await;
                }
                None => wait.await,
            }
            self.on_timers(Instant::now());
        }
    }

    fn on_datagram(&self, now: Instant, from: SocketAddr, data: &[u8]) {
        let mut out = Vec::new();
        let event =
            self.quic
                .borrow_mut()
                .handle(now, from, None, None, BytesMut::from(data), &mut out);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(link) = self.links.borrow_mut().get_mut(&ch) {
                    link.conn.handle_event(event);
                }
                self.pump(ch, now);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.links.borrow().len() >= MAX_LINKS {
                    let transmit = self.quic.borrow_mut().refuse(incoming, &mut out);
                    self.send(&out[..transmit.size], transmit.destination);
                    return;
                }
                let accepted = self.quic.borrow_mut().accept(incoming, now, &mut out, None);
                match accepted {
                    Ok((ch, conn)) => {
                        self.links
                            .borrow_mut()
                            .insert(ch, Link::new(conn, Side::Acceptor, None, now));
                        self.pump(ch, now);
                    }
                    Err(e) => {
                        if let Some(transmit) = e.response {
                            self.send(&out[..transmit.size], transmit.destination);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.send(&out[..transmit.size], transmit.destination)
            }
            None => {}
        }
    }

    fn on_timers(&self, now: Instant) {
        let due: Vec<ConnectionHandle> = self
            .links
            .borrow_mut()
            .iter_mut()
            .filter_map(|(ch, link)| {
                let at = link.conn.poll_timeout()?;
                (at <= now).then(|| {
                    link.conn.handle_timeout(now);
                    *ch
                })
            })
            .collect();
        for ch in due {
            self.pump(ch, now);
        }
        self.schedule_timer();
    }

    /// Dials the links this shard should have with the live members of
    /// `view`, and closes those with members that are gone or down.
    /// Called on every view change and every second.
    pub fn reconcile(&self, view: &ClusterView) {
        let now = Instant::now();
        let me = self.me.borrow().clone();
        let Some(this) = &view.this else { return };
        let mut wanted = Vec::new();
        for member in &view.members {
            if member.state == MemberState::Down || !dials(this, &member.id) {
                continue;
            }
            let ports = &member.id.links;
            if ports.is_empty() {
                continue;
            }
            for shard in counterparts(me.shard as usize, me.shards as usize, ports.len()) {
                let Some(&port) = ports.get(shard) else {
                    continue;
                };
                wanted.push((
                    PeerShard {
                        addr: member.id.addr,
                        boot: member.id.boot,
                        shard: shard as u16,
                    },
                    SocketAddr::new(member.id.addr.ip(), port),
                ));
            }
        }
        // Close links whose peer is no longer a live member (in any state
        // but down; a suspect may still answer).
        let live = |p: &PeerShard| view.live_member((p.addr, p.boot)).is_some();
        let stale: Vec<ConnectionHandle> = self
            .links
            .borrow()
            .iter()
            .filter(|(_, l)| {
                l.peer
                    .as_ref()
                    .or(l.dialed.as_ref())
                    .is_some_and(|p| !live(p))
            })
            .map(|(ch, _)| *ch)
            .collect();
        for ch in stale {
            self.close(ch, b"peer left the cluster", now);
        }
        // Links that never proved the secret.
        let silent: Vec<ConnectionHandle> = self
            .links
            .borrow()
            .iter()
            .filter(|(_, l)| l.peer.is_none() && now.duration_since(l.opened) > HELLO_DEADLINE)
            .map(|(ch, _)| *ch)
            .collect();
        for ch in silent {
            self.fail(ch, LinkError::HelloTimeout, now);
        }
        for (peer, remote) in wanted {
            let pending = self.links.borrow().values().any(|l| {
                !l.closing && (l.dialed.as_ref() == Some(&peer) || l.peer.as_ref() == Some(&peer))
            });
            let recent = self
                .dialed_at
                .borrow()
                .get(&peer)
                .is_some_and(|at| now.duration_since(*at) < REDIAL_AFTER);
            if pending || recent {
                continue;
            }
            self.dialed_at.borrow_mut().insert(peer.clone(), now);
            self.dial(peer, remote, now);
        }
        self.dialed_at
            .borrow_mut()
            .retain(|_, at| now.duration_since(*at) < REDIAL_AFTER * 10);
        // Measure each link's round trip through both shards.
        let peers: Vec<PeerShard> = self.by_peer.borrow().keys().cloned().collect();
        for (seq, peer) in peers.iter().enumerate() {
            let ping = Frame::Ping {
                seq: seq as u64,
                sent_us: now_us(),
            };
            let _ = self.send_frame(peer, &ping);
        }
    }

    fn dial(&self, peer: PeerShard, remote: SocketAddr, now: Instant) {
        let connected =
            self.quic
                .borrow_mut()
                .connect(now, self.client.clone(), remote, tls::SERVER_NAME);
        match connected {
            Ok((ch, conn)) => {
                tracing::debug!(peer = %peer.addr, shard = peer.shard, %remote, "cluster: dialing a link");
                self.links
                    .borrow_mut()
                    .insert(ch, Link::new(conn, Side::Dialer, Some(peer), now));
                self.pump(ch, now);
            }
            Err(e) => tracing::warn!(%remote, error = %e, "cluster: cannot dial a link"),
        }
    }

    /// Queues `frame` for `peer`; fails at once when there is no verified
    /// link or too much is already waiting for it.
    pub fn send_frame(&self, peer: &PeerShard, frame: &Frame) -> Result<(), SendError> {
        let ch = *self
            .by_peer
            .borrow()
            .get(peer)
            .ok_or(SendError::NotConnected)?;
        {
            let mut links = self.links.borrow_mut();
            let link = links.get_mut(&ch).ok_or(SendError::NotConnected)?;
            if link.queued.len() > MAX_QUEUED {
                return Err(SendError::Congested);
            }
            let before = link.queued.len();
            frame::encode(frame, &mut link.queued);
            let bytes = (link.queued.len() - before) as u64;
            self.count(|s| {
                s.frames_out += 1;
                s.bytes_out += bytes;
            });
            self.count_peer(Some(peer.addr), |t| {
                t.frames_out += 1;
                t.bytes_out += bytes;
            });
        }
        self.pump(ch, Instant::now());
        Ok(())
    }

    /// Queues raw bytes on the link to `peer`, as a hostile or broken
    /// peer would send them.
    #[cfg(test)]
    fn send_raw(&self, peer: &PeerShard, bytes: &[u8]) {
        let ch = self.by_peer.borrow()[peer];
        if let Some(link) = self.links.borrow_mut().get_mut(&ch) {
            link.queued.extend_from_slice(bytes);
        }
        self.pump(ch, Instant::now());
    }

    /// Carries out everything connection `ch` asks for after a change.
    fn pump(&self, ch: ConnectionHandle, now: Instant) {
        let mut frames = Vec::new();
        let mut failure = None;
        let mut transmits = Vec::new();
        let drained = {
            let mut links = self.links.borrow_mut();
            let Some(link) = links.get_mut(&ch) else {
                return;
            };
            let mut quic = self.quic.borrow_mut();
            while let Some(event) = link.conn.poll_endpoint_events() {
                if let Some(event) = quic.handle_event(ch, event) {
                    link.conn.handle_event(event);
                }
            }
            drop(quic);
            while let Some(event) = link.conn.poll() {
                match event {
                    Event::Connected => {
                        if let Err(e) = link.send_hello(&self.secret, &self.me.borrow()) {
                            failure = Some((Some(LinkError::BadHello), e));
                        }
                    }
                    Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                        // What came with the opening is read now: no
                        // Readable event follows for it.
                        while let Some(id) = link.conn.streams().accept(Dir::Uni) {
                            let read = link.read(id, &mut frames) as u64;
                            self.count(|s| s.bytes_in += read);
                            self.count_peer(link.peer_addr(), |t| t.bytes_in += read);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        let read = link.read(id, &mut frames) as u64;
                        self.count(|s| s.bytes_in += read);
                        self.count_peer(link.peer_addr(), |t| t.bytes_in += read);
                    }
                    Event::ConnectionLost { reason } if !link.closing => {
                        link.closing = true;
                        // The peer closing on purpose (a goodbye, its
                        // shutdown) is no failure.
                        let on_purpose =
                            matches!(reason, quinn_proto::ConnectionError::ApplicationClosed(_));
                        failure =
                            Some(((!on_purpose).then_some(LinkError::Lost), reason.to_string()));
                    }
                    _ => {}
                }
            }
            link.write_queued();
            let mut buf = Vec::new();
            while let Some(t) = link.conn.poll_transmit(now, 1, &mut buf) {
                transmits.push((buf[..t.size].to_vec(), t.destination));
                buf.clear();
            }
            link.conn.is_drained()
        };
        for (datagram, to) in transmits {
            self.send(&datagram, to);
        }
        for frame in frames {
            match frame {
                Ok(frame) => self.on_link_frame(ch, frame, now),
                Err(e) => {
                    self.fail(ch, LinkError::BadFrame, now);
                    tracing::warn!(error = %e, "cluster: closed a link after a bad frame");
                    break;
                }
            }
        }
        if let Some((why, detail)) = failure {
            self.unregister(ch);
            match why {
                Some(why) => {
                    self.count(|s| s.errors[why as usize] += 1);
                    tracing::info!(reason = why.label(), %detail, "cluster: link lost");
                }
                None => tracing::debug!(%detail, "cluster: the peer closed a link"),
            }
        }
        if drained {
            self.forget(ch);
        }
        self.schedule_timer();
    }

    fn on_link_frame(&self, ch: ConnectionHandle, frame: Frame, now: Instant) {
        self.count(|s| s.frames_in += 1);
        let verified = self.links.borrow().get(&ch).and_then(|l| l.peer.clone());
        self.count_peer(verified.as_ref().map(|p| p.addr), |t| t.frames_in += 1);
        match (verified, frame) {
            (None, Frame::Hello(hello)) => match self.check_hello(ch, &hello) {
                Ok(peer) => {
                    tracing::info!(node = %hello.name, shard = hello.shard, "cluster: link up");
                    if let Some(old) = self.by_peer.borrow_mut().insert(peer.clone(), ch)
                        && old != ch
                    {
                        // A second link to the same peer shard (a redial
                        // raced an accept): keep the newer.
                        self.close(old, b"replaced", now);
                    }
                    if let Some(link) = self.links.borrow_mut().get_mut(&ch) {
                        link.peer = Some(peer);
                    }
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "cluster: refused a link");
                    self.fail(ch, LinkError::BadHello, now);
                }
            },
            (None, _) => {
                tracing::warn!("cluster: a link sent a frame before its hello");
                self.fail(ch, LinkError::BadHello, now);
            }
            (Some(_), Frame::Hello(_)) => {
                tracing::warn!("cluster: a link sent a second hello");
                self.fail(ch, LinkError::BadFrame, now);
            }
            (Some(peer), Frame::Ping { seq, sent_us }) => {
                let _ = self.send_frame(&peer, &Frame::Pong { seq, sent_us });
            }
            (Some(_), Frame::Pong { sent_us, .. }) => {
                if let Some(link) = self.links.borrow_mut().get_mut(&ch) {
                    link.rtt = Some(Duration::from_micros(now_us().saturating_sub(sent_us)));
                }
            }
            (Some(_), Frame::Goodbye { reason }) => {
                tracing::info!(%reason, "cluster: a peer closed a link");
                self.close(ch, b"goodbye", now);
            }
            (Some(peer), Frame::Request { id, body }) => {
                self.count(|s| s.requests_in += 1);
                let handler = self.on_request.borrow().clone();
                match handler {
                    Some(handler) => handler(peer, id, body),
                    None => self.respond(&peer, id, Response::Refused("not ready".into())),
                }
            }
            (Some(peer), Frame::Response { id, body }) => self.answered(&peer, id, Ok(body)),
            (
                Some(peer),
                notice @ (Frame::Apps { .. }
                | Frame::ClientEvent { .. }
                | Frame::Queue(_)
                | Frame::Release { .. }
                | Frame::Values { .. }),
            ) => {
                let handler = self.on_notice.borrow().clone();
                if let Some(handler) = handler {
                    handler(peer, notice);
                }
            }
        }
    }

    /// The peer a Hello proves, or why it proves nothing.
    fn check_hello(&self, ch: ConnectionHandle, hello: &Hello) -> Result<PeerShard, String> {
        let links = self.links.borrow();
        let link = links.get(&ch).ok_or("link gone")?;
        if hello.version != frame::LINK_VERSION || hello.schema != frame::SCHEMA {
            return Err(format!(
                "link version {} schema {:#x}, this node speaks {} {:#x}",
                hello.version,
                hello.schema,
                frame::LINK_VERSION,
                frame::SCHEMA
            ));
        }
        let exported = tls::exported(link.conn.crypto_session()).ok_or("no TLS session")?;
        let theirs = match link.side {
            Side::Dialer => Side::Acceptor,
            Side::Acceptor => Side::Dialer,
        };
        let expected = tls::proof(&self.secret, &exported, theirs);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &expected[..],
            &hello.proof[..],
        )) {
            return Err("wrong proof of the cluster secret".into());
        }
        let addr = match &link.dialed {
            Some(dialed) if dialed.boot != hello.boot || dialed.shard != hello.shard => {
                return Err(format!(
                    "dialed boot {} shard {}, answered by boot {} shard {}",
                    dialed.boot, dialed.shard, hello.boot, hello.shard
                ));
            }
            Some(dialed) => dialed.addr,
            None => hello
                .addr
                .parse()
                .map_err(|_| format!("no gossip address in the hello: {:?}", hello.addr))?,
        };
        Ok(PeerShard {
            addr,
            boot: hello.boot,
            shard: hello.shard,
        })
    }

    /// Closes a link for a protocol failure: counted and logged by the
    /// caller's reason.
    fn fail(&self, ch: ConnectionHandle, why: LinkError, now: Instant) {
        self.count(|s| s.errors[why as usize] += 1);
        self.close(ch, why.label().as_bytes(), now);
    }

    fn close(&self, ch: ConnectionHandle, reason: &[u8], now: Instant) {
        if let Some(link) = self.links.borrow_mut().get_mut(&ch) {
            if link.closing {
                return;
            }
            link.closing = true;
            link.conn.close(
                now,
                VarInt::from_u32(1),
                bytes::Bytes::copy_from_slice(reason),
            );
        } else {
            return;
        }
        self.unregister(ch);
        self.pump(ch, now);
    }

    /// Takes the link out of use: no more sends, and whoever waits for an
    /// answer over it hears at once that none is coming.
    fn unregister(&self, ch: ConnectionHandle) {
        let mut gone = Vec::new();
        self.by_peer.borrow_mut().retain(|peer, c| {
            if *c == ch {
                gone.push(peer.clone());
            }
            *c != ch
        });
        let waiting: Vec<(u64, PeerShard)> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, w)| gone.contains(&w.peer))
            .map(|(id, w)| (*id, w.peer.clone()))
            .collect();
        for (id, peer) in waiting {
            self.answered(&peer, id, Err(RemoteError::Lost));
        }
    }

    fn forget(&self, ch: ConnectionHandle) {
        self.unregister(ch);
        self.links.borrow_mut().remove(&ch);
    }

    fn schedule_timer(&self) {
        let next = self
            .links
            .borrow_mut()
            .values_mut()
            .filter_map(|l| l.conn.poll_timeout())
            .min();
        let earlier = match (next, self.next_timeout.get()) {
            (Some(n), Some(c)) => n < c,
            (Some(_), None) => true,
            _ => false,
        };
        self.next_timeout.set(next);
        if earlier {
            self.kicked.set(true);
            if let Some(waker) = self.timer_changed.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        // Non-blocking: a full socket buffer drops the datagram, and QUIC's
        // loss recovery sends it again.
        let sent = self.sender.send_to_with_flags(
            datagram,
            &socket2::SockAddr::from(to),
            libc::MSG_DONTWAIT,
        );
        if let Err(e) = sent {
            tracing::trace!(%to, error = %e, "cluster: link datagram not sent");
        }
    }

    fn count(&self, f: impl FnOnce(&mut LinkStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Counts traffic with node `addr` (`None`: a link not yet proven, whose
    /// bytes count in the shard's totals only).
    fn count_peer(&self, addr: Option<SocketAddr>, f: impl FnOnce(&mut PeerTraffic)) {
        if let Some(addr) = addr {
            f(self.traffic.borrow_mut().entry(addr).or_default());
        }
    }
}

impl Link {
    /// The peer's gossip address: as proven, or as dialed before that.
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().or(self.dialed.as_ref()).map(|p| p.addr)
    }

    fn new(
        conn: quinn_proto::Connection,
        side: Side,
        dialed: Option<PeerShard>,
        now: Instant,
    ) -> Link {
        Link {
            conn,
            side,
            dialed,
            peer: None,
            opened: now,
            out: None,
            queued: Vec::new(),
            reader: FrameReader::new(MAX_FRAME),
            hello_sent: false,
            closing: false,
            rtt: None,
        }
    }

    /// Opens this side's stream and puts the Hello first on it.
    fn send_hello(&mut self, secret: &[u8], me: &Me) -> Result<(), String> {
        if self.hello_sent {
            return Ok(());
        }
        let exported =
            tls::exported(self.conn.crypto_session()).ok_or("no TLS session to prove on")?;
        let id = self
            .conn
            .streams()
            .open(Dir::Uni)
            .ok_or("the peer allows no stream")?;
        self.out = Some(id);
        let hello = Hello {
            version: frame::LINK_VERSION,
            schema: frame::SCHEMA,
            name: me.name.clone(),
            addr: me.addr.to_string(),
            boot: me.boot,
            shard: me.shard,
            shards: me.shards,
            proof: tls::proof(secret, &exported, self.side),
        };
        // The Hello goes before anything queued meanwhile.
        let mut first = Vec::new();
        frame::encode(&Frame::Hello(hello), &mut first);
        first.append(&mut self.queued);
        self.queued = first;
        self.hello_sent = true;
        Ok(())
    }

    /// Hands QUIC as much of the queue as its flow control takes.
    fn write_queued(&mut self) {
        let Some(id) = self.out else { return };
        if self.queued.is_empty() {
            return;
        }
        match self.conn.send_stream(id).write(&self.queued) {
            Ok(n) => {
                self.queued.drain(..n);
            }
            Err(quinn_proto::WriteError::Blocked) => {}
            Err(_) => self.queued.clear(),
        }
    }

    /// Reads what stream `id` has into the frame reader; returns the bytes
    /// read and appends the frames now complete.
    fn read(&mut self, id: StreamId, frames: &mut Vec<Result<Frame, frame::FrameError>>) -> usize {
        let mut read = 0;
        let mut stream = self.conn.recv_stream(id);
        if let Ok(mut chunks) = stream.read(true) {
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                read += chunk.bytes.len();
                self.reader.push(&chunk.bytes);
            }
            let _ = chunks.finalize();
        }
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => frames.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => {
                    frames.push(Err(e));
                    break;
                }
            }
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn counterparts_are_symmetric_and_cover_every_shard(a in 1usize..12, b in 1usize..12) {
            for i in 0..a {
                let theirs = counterparts(i, a, b);
                let mut unique = theirs.clone();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(unique.len(), theirs.len(), "no link twice");
                for j in 0..b {
                    prop_assert_eq!(theirs.contains(&j), counterparts(j, b, a).contains(&i));
                }
            }
            // Every shard of either node has at least one link.
            for j in 0..b {
                prop_assert!(!counterparts(j, b, a).is_empty());
            }
            prop_assert_eq!(link_count(a, b), link_count(b, a));
            prop_assert!(link_count(a, b) >= a.max(b));
        }
    }

    #[test]
    fn equal_shard_counts_pair_shards_one_to_one() {
        for i in 0..4 {
            assert_eq!(counterparts(i, 4, 4), vec![i]);
        }
        assert_eq!(link_count(4, 4), 4);
        assert_eq!(counterparts(0, 2, 4), vec![0, 2]);
        assert_eq!(counterparts(3, 4, 2), vec![1]);
        assert_eq!(link_count(2, 4), 4);
    }

    /// Two endpoints on one executor: `a` (lower, so it dials) and `b`,
    /// each knowing the other as an alive member.
    struct Pair {
        a: Rc<Endpoint>,
        b: Rc<Endpoint>,
        view_a: ClusterView,
        view_b: ClusterView,
    }

    fn node_id(port: u16, link: u16) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot: 7,
            name: format!("n{port}"),
            shards: 1,
            links: vec![link],
        }
    }

    fn endpoint(gossip_port: u16, secret: &[u8]) -> Rc<Endpoint> {
        endpoint_with(gossip_port, secret, &tls::LinkTls::generated().unwrap())
    }

    fn endpoint_with(gossip_port: u16, secret: &[u8], tls: &tls::LinkTls) -> Rc<Endpoint> {
        let (endpoint, task) = endpoint_task(gossip_port, secret, tls);
        task.detach();
        endpoint
    }

    /// An endpoint and the task running it (cancelling it stops the
    /// endpoint reading, as a hung process would).
    fn endpoint_task(
        gossip_port: u16,
        secret: &[u8],
        tls: &tls::LinkTls,
    ) -> (Rc<Endpoint>, glommio::Task<()>) {
        let socket = bind_socket(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let me = Me {
            name: format!("n{gossip_port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], gossip_port)),
            boot: 7,
            shard: 0,
            shards: 1,
        };
        let endpoint = Rc::new(Endpoint::new(socket, secret.to_vec(), me, tls).unwrap());
        let task = glommio::spawn_local(endpoint.clone().run());
        (endpoint, task)
    }

    fn pair(secret_a: &[u8], secret_b: &[u8]) -> Pair {
        pair_of(endpoint(1, secret_a), endpoint(2, secret_b))
    }

    fn pair_of(a: Rc<Endpoint>, b: Rc<Endpoint>) -> Pair {
        let (ia, ib) = (
            node_id(1, a.local_addr().port()),
            node_id(2, b.local_addr().port()),
        );
        let view = |this: &NodeId, other: &NodeId| ClusterView {
            this: Some(this.clone()),
            members: vec![super::super::node::Member {
                id: other.clone(),
                state: MemberState::Alive,
                since_ms: 0,
            }],
        };
        Pair {
            view_a: view(&ia, &ib),
            view_b: view(&ib, &ia),
            a,
            b,
        }
    }

    /// Polls `done` every 10 ms for up to 5 s.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done() {
                return true;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    fn on_executor<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f().await })
            .unwrap()
            .join()
            .unwrap()
    }

    fn b_as_seen_by_a() -> PeerShard {
        PeerShard {
            addr: SocketAddr::from(([127, 0, 0, 1], 2)),
            boot: 7,
            shard: 0,
        }
    }

    #[test]
    fn a_link_comes_up_proves_the_secret_and_measures_its_round_trip() {
        on_executor(async || {
            let p = pair(b"the same secret!", b"the same secret!");
            p.b.reconcile(&p.view_b);
            assert!(p.b.links().is_empty(), "the higher node does not dial");
            p.a.reconcile(&p.view_a);
            assert!(eventually(|| p.a.links().len() == 1 && p.b.links().len() == 1).await);
            assert_eq!(p.a.links()[0].peer, b_as_seen_by_a());
            assert_eq!(
                p.b.links()[0].peer.addr,
                SocketAddr::from(([127, 0, 0, 1], 1))
            );
            // A reconcile pings; the pong gives the round trip.
            p.a.reconcile(&p.view_a);
            assert!(
                eventually(|| p.a.stats().frames_in >= 2).await,
                "hello and pong"
            );
            assert!(p.a.links()[0].rtt > Duration::ZERO);
            assert_eq!(p.a.stats().errors, [0; 4]);
            assert_eq!(p.b.stats().errors, [0; 4]);
            // A second reconcile does not dial again.
            p.a.reconcile(&p.view_a);
            assert_eq!(p.a.links.borrow().len(), 1);
        });
    }

    #[test]
    fn with_a_cluster_ca_only_nodes_it_signed_link_up() {
        on_executor(async || {
            let secret = b"the same secret!";
            let ca = tls::test_pki::ca();
            let signed = |port| {
                endpoint_with(
                    port,
                    secret,
                    &tls::test_pki::link_tls(&ca, tls::SERVER_NAME, &ca),
                )
            };
            let p = pair_of(signed(1), signed(2));
            p.b.reconcile(&p.view_b);
            p.a.reconcile(&p.view_a);
            assert!(eventually(|| p.a.links().len() == 1 && p.b.links().len() == 1).await);

            // Signed by another CA (the secret is right): no link, either way.
            let stranger = tls::test_pki::ca();
            for (a, b) in [
                (
                    signed(1),
                    endpoint_with(
                        2,
                        secret,
                        &tls::test_pki::link_tls(&stranger, tls::SERVER_NAME, &ca),
                    ),
                ),
                (
                    endpoint_with(
                        1,
                        secret,
                        &tls::test_pki::link_tls(&stranger, tls::SERVER_NAME, &ca),
                    ),
                    signed(2),
                ),
            ] {
                let p = pair_of(a, b);
                p.b.reconcile(&p.view_b);
                p.a.reconcile(&p.view_a);
                // The handshake fails: the dialer counts its link lost.
                let lost = LinkError::Lost as usize;
                assert!(eventually(|| p.a.stats().errors[lost] > 0).await);
                assert!(p.a.links().is_empty() && p.b.links().is_empty());
            }
        });
    }

    #[test]
    fn a_hung_peer_holds_a_bounded_backlog_and_requests_to_it_fail_fast() {
        on_executor(async || {
            let secret = b"the same secret!";
            let generated = tls::LinkTls::generated().unwrap();
            let a = endpoint_with(1, secret, &generated);
            let (b, b_task) = endpoint_task(2, secret, &generated);
            let p = pair_of(a, b);
            p.b.reconcile(&p.view_b);
            p.a.reconcile(&p.view_a);
            assert!(eventually(|| p.a.links().len() == 1 && p.b.links().len() == 1).await);
            // b stops reading: a's frames pile up past QUIC's windows until
            // the link's backlog is full.
            b_task.cancel().await;
            let frame = Frame::Goodbye {
                reason: "x".repeat(1 << 20),
            };
            let mut sent = 0;
            let congested = loop {
                match p.a.send_frame(&b_as_seen_by_a(), &frame) {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(sent < 200, "no backpressure after {sent} MiB");
            };
            assert_eq!(congested, SendError::Congested);
            assert!(
                sent >= MAX_QUEUED >> 20,
                "only {sent} MiB taken before congestion"
            );
            let backlog: usize = p.a.links.borrow().values().map(|l| l.queued.len()).sum();
            assert!(backlog <= MAX_QUEUED + (2 << 20), "{backlog}");
            // A request fails at once rather than waiting for its deadline.
            let started = Instant::now();
            let answer =
                p.a.request(
                    &b_as_seen_by_a(),
                    Request::Pick {
                        query: Vec::new(),
                        avg: None,
                    },
                    Duration::from_secs(5),
                )
                .await;
            assert_eq!(answer, Err(RemoteError::Congested));
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(p.a.stats().request_failures, 1);
        });
    }

    #[test]
    fn a_peer_with_another_secret_is_refused_on_both_sides() {
        on_executor(async || {
            let p = pair(b"the one secret!!", b"another secret!!");
            p.b.reconcile(&p.view_b);
            p.a.reconcile(&p.view_a);
            let bad_hello = LinkError::BadHello as usize;
            assert!(
                eventually(
                    || p.a.stats().errors[bad_hello] == 1 && p.b.stats().errors[bad_hello] == 1
                )
                .await
            );
            assert!(p.a.links().is_empty() && p.b.links().is_empty());
            assert_eq!(
                p.a.send_frame(&b_as_seen_by_a(), &Frame::Ping { seq: 0, sent_us: 0 }),
                Err(SendError::NotConnected)
            );
        });
    }

    #[test]
    fn an_oversized_or_corrupt_frame_closes_the_link_and_is_counted() {
        on_executor(async || {
            let bad_frame = LinkError::BadFrame as usize;
            for hostile in [
                // A length prefix far past the limit: refused before any body.
                (u32::MAX).to_le_bytes().to_vec(),
                // A frame whose body is not an archive of a Frame.
                [8u32.to_le_bytes().to_vec(), vec![0xff; 8]].concat(),
            ] {
                let p = pair(b"the same secret!", b"the same secret!");
                p.b.reconcile(&p.view_b);
                p.a.reconcile(&p.view_a);
                assert!(eventually(|| p.b.links().len() == 1).await);
                p.a.send_raw(&b_as_seen_by_a(), &hostile);
                assert!(eventually(|| p.b.stats().errors[bad_frame] == 1).await);
                assert!(p.b.links().is_empty());
                // The sender learns the link is gone.
                assert!(eventually(|| p.a.links().is_empty()).await);
            }
        });
    }

    #[test]
    fn the_lower_identity_dials() {
        let node = |port: u16, boot: u64| NodeId {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot,
            name: String::new(),
            shards: 1,
            links: vec![],
        };
        assert!(dials(&node(1, 9), &node(2, 1)));
        assert!(!dials(&node(2, 1), &node(1, 9)));
        assert!(dials(&node(1, 1), &node(1, 2)));
    }
}
