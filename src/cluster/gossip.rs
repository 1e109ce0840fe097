//! Membership by gossip: foca (SWIM with suspicion) driven from shard 0's
//! executor over one UDP socket, every packet signed ([`super::seal`]).
//!
//! foca is a synchronous state machine: each call (a packet in, a timer
//! due, an announce) leaves packets to send, timers to set and
//! notifications in an [`AccumulatingRuntime`], which `Gossip::drive`
//! empties: packets are sealed and sent, each timer becomes a task that
//! sleeps and calls foca back, and a changed member list is published to
//! every shard as a [`ClusterView`]. No borrow of foca is held across an
//! await, so the receive loop, the timers and the seed loop interleave
//! freely on the one thread.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};

use super::node::{ClusterView, MemberState, NodeId, Roster};
use super::seal::{self, Rejected, Sealer};

/// Largest packet foca builds; with the seal it stays under a 1500-byte
/// Ethernet MTU (IP and UDP headers included).
const MAX_PACKET: usize = 1400;
/// How often the seeds are announced to while this node knows no other.
const SEED_RETRY_ALONE: Duration = Duration::from_secs(2);
/// How often they are announced to otherwise: heals a cluster split in two
/// halves that each declared the other down.
const SEED_RETRY: Duration = Duration::from_secs(30);

/// What the gossip needs from the configuration.
#[derive(Debug)]
pub struct Settings {
    /// Bound on `--cluster-addr` before the shards started.
    pub socket: std::net::UdpSocket,
    pub secret: Vec<u8>,
    pub peers: Vec<String>,
    pub name: String,
    pub shards: u16,
    /// Each shard's link port.
    pub links: Vec<u16>,
    /// This run of the node (see [`NodeId::boot`]).
    pub boot: u64,
    /// How long a suspect member has to refute before it is declared down.
    pub down_after: Duration,
}

/// Gossip packets counted, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GossipStats {
    pub received: u64,
    pub sent: u64,
    pub send_errors: u64,
    /// Dropped packets, by [`RejectReason`].
    pub rejected: [u64; RejectReason::ALL.len()],
}

/// Why a received packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Seal(Rejected),
    /// Larger than any packet a node sends.
    Oversized,
    /// Signed, but foca could not use it (a version mismatch, or a bug).
    Invalid,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Seal(Rejected::NotGossip),
        RejectReason::Seal(Rejected::Truncated),
        RejectReason::Seal(Rejected::BadSignature),
        RejectReason::Oversized,
        RejectReason::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Seal(r) => r.label(),
            RejectReason::Oversized => "oversized",
            RejectReason::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        RejectReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is listed")
    }
}

/// foca wants a `rand` generator; the shards already use fastrand.
struct Rng(fastrand::Rng);

impl rand_core::TryRng for Rng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.u32(..))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.u64(..))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

type Swim = Foca<NodeId, PostcardCodec, Rng, NoCustomBroadcast>;

/// This node's membership: the socket, foca, and what was last published.
pub struct Gossip {
    socket: glommio::net::UdpSocket,
    local: SocketAddr,
    sealer: Sealer,
    seeds: Vec<String>,
    foca: RefCell<Swim>,
    runtime: RefCell<AccumulatingRuntime<NodeId>>,
    roster: RefCell<Roster>,
    view: RefCell<Arc<ClusterView>>,
    publish: Box<dyn Fn(Arc<ClusterView>)>,
    stats: Cell<GossipStats>,
    /// When a bad signature was last logged as a warning.
    warned: Cell<Option<Instant>>,
    /// Set once this node said goodbye (shutdown).
    leaving: Cell<bool>,
}

/// foca's settings from ours: its LAN profile (1 s probes, 500 ms probe
/// round trip, gossip every 200 ms) with our suspicion timeout.
fn swim_config(down_after: Duration) -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("nonzero"));
    config.suspect_to_down_after = down_after;
    config.max_packet_size = NonZeroUsize::new(MAX_PACKET - seal::OVERHEAD).expect("nonzero");
    config.max_transmissions = NonZeroU8::new(10).expect("nonzero");
    config
}

impl Gossip {
    /// The gossip on its socket; on the shard's own thread.
    pub fn new(settings: Settings, publish: Box<dyn Fn(Arc<ClusterView>)>) -> io::Result<Gossip> {
        let local = settings.socket.local_addr()?;
        let socket = glommio::net::UdpSocket::from(socket2::Socket::from(settings.socket));
        let me = NodeId {
            addr: local,
            boot: settings.boot,
            name: settings.name.clone(),
            shards: settings.shards,
            links: settings.links.clone(),
        };
        let foca = Foca::new(
            me.clone(),
            swim_config(settings.down_after),
            Rng(fastrand::Rng::new()),
            PostcardCodec,
        );
        let view = ClusterView {
            this: Some(me),
            members: Vec::new(),
        };
        Ok(Gossip {
            socket,
            local,
            sealer: Sealer::new(&settings.secret),
            seeds: settings.peers,
            foca: RefCell::new(foca),
            runtime: RefCell::new(AccumulatingRuntime::new()),
            roster: RefCell::new(Roster::default()),
            view: RefCell::new(Arc::new(view)),
            publish,
            stats: Cell::new(GossipStats::default()),
            warned: Cell::new(None),
            leaving: Cell::new(false),
        })
    }

    /// The address gossip is bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> GossipStats {
        self.stats.get()
    }

    /// Runs the membership until the task is cancelled.
    pub async fn run(self: Rc<Self>) {
        (self.publish)(self.view.borrow().clone());
        let seeds = glommio::spawn_local({
            let gossip = self.clone();
            async move { gossip.seed_loop().await }
        })
        .detach();
        self.receive_loop().await;
        seeds.cancel();
    }

    /// Tells the others this node is leaving, so they take it out of their
    /// routes at once instead of after the failure timeout.
    pub async fn leave(self: &Rc<Self>) {
        self.leaving.set(true);
        self.drive(|foca, rt| foca.leave_cluster(rt)).await;
    }

    async fn receive_loop(self: &Rc<Self>) {
        // Any datagram fits: one larger than a node ever sends is refused
        // by its length, not cut short and mistaken for a bad signature.
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, from) = super::next_datagram(&self.socket, &mut buf, "gossip").await;
            let packet = &buf[..len];
            if len > MAX_PACKET {
                self.reject(RejectReason::Oversized, from);
                continue;
            }
            let body = match self.sealer.open(packet) {
                Ok(body) => body.to_vec(),
                Err(why) => {
                    self.reject(RejectReason::Seal(why), from);
                    continue;
                }
            };
            self.count(|s| s.received += 1);
            let accepted = self.drive(|foca, rt| foca.handle_data(&body, rt)).await;
            if !accepted {
                self.reject(RejectReason::Invalid, from);
            }
        }
    }

    /// Announces this node to every seed address (resolved afresh each
    /// time, so one DNS name for many nodes works as the seed list),
    /// often while alone, now and then otherwise.
    async fn seed_loop(self: &Rc<Self>) {
        let mut since_last = SEED_RETRY;
        loop {
            let alone = self.foca.borrow().num_members() == 0;
            if alone || since_last >= SEED_RETRY {
                since_last = Duration::ZERO;
                for addr in self.resolve_seeds().await {
                    self.drive(|foca, rt| foca.announce(NodeId::seed(addr), rt))
                        .await;
                }
            }
            glommio::timer::sleep(SEED_RETRY_ALONE).await;
            since_last += SEED_RETRY_ALONE;
        }
    }

    async fn resolve_seeds(&self) -> Vec<SocketAddr> {
        if self.seeds.is_empty() {
            return Vec::new();
        }
        let seeds = self.seeds.clone();
        let (resolved, failed) = glommio::executor()
            .spawn_blocking(move || {
                let mut resolved = Vec::new();
                let mut failed = Vec::new();
                for seed in &seeds {
                    match seed.to_socket_addrs() {
                        Ok(addrs) => resolved.extend(addrs),
                        Err(e) => failed.push(format!("{seed}: {e}")),
                    }
                }
                (resolved, failed)
            })
            .await;
        for failure in failed {
            tracing::debug!(seed = %failure, "cluster: a peer address did not resolve");
        }
        let mut addrs: Vec<SocketAddr> =
            resolved.into_iter().filter(|a| *a != self.local).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Runs one foca call and carries out what it asked for: packets sent,
    /// timers set, the view published if the members changed. False when
    /// foca refused the call (a packet it could not use).
    async fn drive(
        self: &Rc<Self>,
        call: impl FnOnce(&mut Swim, &mut AccumulatingRuntime<NodeId>) -> Result<(), foca::Error>,
    ) -> bool {
        let (outcome, packets) = {
            let mut foca = self.foca.borrow_mut();
            let mut rt = self.runtime.borrow_mut();
            let outcome = call(&mut foca, &mut rt);
            while let Some(notification) = rt.to_notify() {
                log_notification(&notification, self.leaving.get());
            }
            while let Some((after, timer)) = rt.to_schedule() {
                self.set_timer(after, timer);
            }
            let mut packets = Vec::new();
            while let Some((to, data)) = rt.to_send() {
                packets.push((to.addr, data));
            }
            drop(rt);
            // Not only on notifications: a suspicion raised or refuted
            // emits none.
            self.publish_view(&foca);
            (outcome, packets)
        };
        let mut sealed = Vec::with_capacity(MAX_PACKET);
        for (to, data) in packets {
            self.sealer.seal(&data, &mut sealed);
            match self.socket.send_to(&sealed, to).await {
                Ok(_) => self.count(|s| s.sent += 1),
                Err(e) => {
                    self.count(|s| s.send_errors += 1);
                    tracing::debug!(%to, error = %e, "cluster: gossip send failed");
                }
            }
        }
        match outcome {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: gossip call refused");
                false
            }
        }
    }

    fn publish_view(&self, foca: &Swim) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let view = self.roster.borrow_mut().view(
            foca.identity(),
            foca.iter_membership_state()
                .map(|m| (m.id().clone(), MemberState::from(m.state()))),
            now_ms,
        );
        if **self.view.borrow() == view {
            return;
        }
        let view = Arc::new(view);
        *self.view.borrow_mut() = view.clone();
        (self.publish)(view);
    }

    /// Calls foca back with `timer` once `after` has passed.
    fn set_timer(self: &Rc<Self>, after: Duration, timer: foca::Timer<NodeId>) {
        let gossip = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(after).await;
            gossip.drive(|foca, rt| foca.handle_timer(timer, rt)).await;
        })
        .detach();
    }

    fn reject(&self, why: RejectReason, from: SocketAddr) {
        self.count(|s| s.rejected[why.index()] += 1);
        tracing::debug!(%from, reason = why.label(), "cluster: gossip packet dropped");
        // Worth a warning: a node with another secret is trying to talk to
        // this cluster. At most one a minute, as it retries every 2 s.
        let now = Instant::now();
        let due = self
            .warned
            .get()
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(60));
        if why == RejectReason::Seal(Rejected::BadSignature) && due {
            self.warned.set(Some(now));
            tracing::warn!(%from, "cluster: dropped a gossip packet with a bad signature (a node with another --cluster-secret?)");
        }
    }

    fn count(&self, f: impl FnOnce(&mut GossipStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }
}

fn log_notification(notification: &OwnedNotification<NodeId>, leaving: bool) {
    match notification {
        OwnedNotification::MemberUp(id) => {
            tracing::info!(node = %id.name, addr = %id.addr, "cluster: member up")
        }
        OwnedNotification::MemberDown(id) => {
            tracing::warn!(node = %id.name, addr = %id.addr, "cluster: member down")
        }
        OwnedNotification::Rename(old, new) => {
            tracing::info!(node = %new.name, addr = %new.addr, old_boot = old.boot, boot = new.boot, "cluster: member restarted")
        }
        OwnedNotification::Active => tracing::info!("cluster: joined"),
        OwnedNotification::Idle => tracing::info!("cluster: no other member known"),
        OwnedNotification::Defunct if leaving => tracing::info!("cluster: left"),
        OwnedNotification::Defunct => {
            tracing::warn!("cluster: the others declared this node down")
        }
        OwnedNotification::Rejoin(id) => {
            tracing::info!(
                boot = id.boot,
                "cluster: rejoining as a new run of this node"
            )
        }
    }
}
