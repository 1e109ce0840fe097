//! Starting the shards: one glommio executor per shard, each with its own
//! SO_REUSEPORT listener on the shared port, its mesh inbox, and its
//! heartbeat reaper; and stopping them on a signal.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

use crate::config::Config;
use crate::http::serve::serve;
use crate::shard::{Mesh, Shard, ShardMsg};

/// A running server: its address and the handles to stop it.
pub struct Server {
    pub addr: SocketAddr,
    /// Where this node gossips, when it is part of a cluster.
    pub cluster_addr: Option<SocketAddr>,
    mesh: Mesh<ShardMsg>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot start shard {shard}: {source}. glommio needs io_uring; container runtimes often block it with their default seccomp profile, and it needs locked memory (ulimit -l)"
    )]
    Executor {
        shard: usize,
        source: glommio::GlommioError<()>,
    },
    #[error("cannot recover the queues: {0}")]
    Queues(#[from] crate::queue::WalError),
    #[error("shard {shard} cannot listen on {addr}: {reason}")]
    Listen {
        shard: usize,
        addr: SocketAddr,
        reason: String,
    },
    #[error("cannot gossip on the cluster address {addr} (UDP): {reason}")]
    Cluster { addr: SocketAddr, reason: String },
}

/// What a starting shard reports: where it listens, or why it cannot.
type Ready = Result<Bound, Unready>;

struct Bound {
    addr: SocketAddr,
    /// Shard 0 in a cluster: where it gossips.
    cluster: Option<SocketAddr>,
}

enum Unready {
    Listen(String),
    Cluster(String),
}

/// The CPUs this process may run on, in order (the kernel's
/// `Cpus_allowed_list`, which taskset and a container's cpuset narrow): the
/// shards are pinned to these rather than to CPUs 0..n, which a cpuset may
/// not include.
fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            parse_cpu_list(line.trim())
        })
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        })
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((from, to)) => cpus.extend(from.parse::<usize>().ok()?..=to.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// How long shards wait for connections to finish their goodbyes on
/// shutdown before stopping anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How many messages a shard takes from its inbox before letting its
/// connections run.
const MESH_BATCH: usize = 256;

impl Server {
    /// Starts every shard and returns once all of them listen.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        port_is_free(SocketAddr::new(config.bind, config.port))?;
        let recovered = crate::queue::recover(&config)?;
        let boot = recovered.boot;
        let mut recovered = recovered.shards.into_iter();
        let mesh = Mesh::new(config.shards);
        // The routing directory's lane (see routing::locate).
        let directory_lane = Mesh::new(config.shards);
        // Shards whose connections have not yet finished on shutdown.
        let draining = Arc::new(AtomicUsize::new(config.shards));
        // Live queues and queued bytes, counted across shards.
        let queue_budget = Arc::new(crate::queue::Budget::new(&config));
        let cpus = allowed_cpus();
        let mut threads = Vec::new();
        let mut addr = SocketAddr::new(config.bind, config.port);
        let mut cluster_addr = None;
        let prepared = match config.cluster_addr {
            Some(at) => Some(
                crate::cluster::Prepared::bind(at, config.shards, &config).map_err(|e| {
                    StartError::Cluster {
                        addr: at,
                        reason: e,
                    }
                })?,
            ),
            None => None,
        };
        // Each shard takes its link socket; shard 0 the gossip socket too.
        let (node, mut link_sockets, mut gossip_socket) = match prepared {
            Some(p) => (
                Some((p.boot, p.gossip_addr, p.ports, p.tls)),
                p.sockets.into_iter().map(Some).collect(),
                Some(p.gossip),
            ),
            None => (None, Vec::new(), None),
        };
        for id in 0..config.shards {
            // Pin one shard per CPU the process may use (taskset, a
            // container's cpuset) when there are enough; more shards than
            // CPUs run unpinned rather than stacking on CPUs that exist.
            let placement = match cpus.get(id) {
                Some(&cpu) if config.shards <= cpus.len() => Placement::Fixed(cpu),
                _ => Placement::Unbound,
            };
            let (ready_tx, ready_rx) = mpsc::channel();
            let shard_config = config.clone();
            let shard_mesh = (mesh.clone(), directory_lane.clone());
            let shard_queues = recovered.next().unwrap_or_default();
            let shard_draining = draining.clone();
            let shard_budget = queue_budget.clone();
            let shard_cluster = match (&node, link_sockets.get_mut(id)) {
                (Some((boot, gossip, ports, tls)), Some(socket)) => {
                    socket.take().map(|socket| ShardLinks {
                        socket,
                        gossip_socket: gossip_socket.take(),
                        gossip: *gossip,
                        boot: *boot,
                        ports: ports.clone(),
                        tls: tls.clone(),
                    })
                }
                _ => None,
            };
            let mut builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let handle = builder
                .spawn(move || {
                    run_shard(ShardStart {
                        id,
                        config: shard_config,
                        mesh: shard_mesh,
                        addr,
                        ready: ready_tx,
                        queues: (shard_queues, boot, shard_budget),
                        draining: shard_draining,
                        cluster: shard_cluster,
                    })
                })
                .map_err(|source| StartError::Executor { shard: id, source })?;
            match ready_rx.recv() {
                Ok(Ok(bound)) => {
                    addr = bound.addr;
                    cluster_addr = cluster_addr.or(bound.cluster);
                }
                Ok(Err(Unready::Listen(reason))) => {
                    stop_all(&mesh, id);
                    return Err(StartError::Listen {
                        shard: id,
                        addr,
                        reason,
                    });
                }
                Ok(Err(Unready::Cluster(reason))) => {
                    stop_all(&mesh, id + 1);
                    return Err(StartError::Cluster {
                        addr: config.cluster_addr.unwrap_or(addr),
                        reason,
                    });
                }
                Err(_) => {
                    stop_all(&mesh, id);
                    return Err(StartError::Listen {
                        shard: id,
                        addr,
                        reason: "the shard stopped while starting".into(),
                    });
                }
            }
            threads.push(handle);
        }
        Ok(Server {
            addr,
            cluster_addr,
            mesh,
            threads,
        })
    }

    /// Says goodbye to every client and waits for the shards to stop.
    pub fn shutdown(self) {
        stop_all(&self.mesh, self.threads.len());
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Fails when another process already listens on `addr`. The shards'
/// listeners use SO_REUSEPORT, which would otherwise let a second server
/// (or a stale one) silently share the port and split the connections.
///
/// A plain bind, without SO_REUSEPORT, is refused while a listener holds the
/// port, but also while the closed connections of a server that just
/// stopped wait out TIME_WAIT: the server closes its connections itself on
/// shutdown, so its side of each one lingers for a minute, and a restart
/// (systemd's `Restart=`, a deploy) would be refused all that time. So a
/// refused bind is checked against the kernel's table of listening sockets:
/// only a listener on the port refuses the start. The shards then bind with
/// SO_REUSEPORT, which the kernel allows beside TIME_WAIT sockets of the
/// same port (they inherited the option from the old server's listener).
/// The probe socket is dropped before the shards bind.
fn port_is_free(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let refused = |reason: String| StartError::Listen {
        shard: 0,
        addr,
        reason,
    };
    let in_use = || refused("the port is already in use (is another server running?)".into());
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match listening(addr.port()) {
            Some(false) => {
                tracing::info!(
                    port = addr.port(),
                    "the port is held only by closed connections (TIME_WAIT), not by a listener: starting"
                );
                Ok(())
            }
            // A listener holds it, or the tables cannot be read: refuse,
            // as the bind did.
            Some(true) | None => Err(in_use()),
        },
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Whether any socket listens on TCP `port`, IPv4 or IPv6, on any address
/// (an overlap of addresses is not worked out: when the bind was refused, a
/// listener on the port is taken as the reason). `None` when neither of the
/// kernel's tables can be read.
fn listening(port: u16) -> Option<bool> {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    if tables.is_empty() {
        return None;
    }
    Some(tables.iter().any(|table| table_listens_on(table, port)))
}

/// Whether a `/proc/net/tcp`-format table has a socket in state LISTEN
/// (`0A`) whose local port (hex, after the address) is `port`.
fn table_listens_on(table: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && state == Some(LISTEN)
    })
}

fn stop_all(mesh: &Mesh<ShardMsg>, started: usize) {
    for shard in 0..started {
        mesh.send(shard, ShardMsg::Shutdown);
    }
}

/// What one shard starts with.
struct ShardStart {
    id: usize,
    config: Arc<Config>,
    /// The shard mesh and the routing directory's lane.
    mesh: (Mesh<ShardMsg>, Mesh<crate::routing::directory::DirMsg>),
    /// Where to listen, and whom to tell once listening.
    addr: SocketAddr,
    ready: mpsc::Sender<Ready>,
    /// Recovered messages, the boot number, and the server-wide queue budget.
    queues: (crate::queue::RecoveredShard, u64, Arc<crate::queue::Budget>),
    /// Shards whose connections have not yet finished on shutdown.
    draining: Arc<AtomicUsize>,
    /// In a cluster: the sockets bound for this shard.
    cluster: Option<ShardLinks>,
}

async fn run_shard(start: ShardStart) {
    let ShardStart {
        id,
        config,
        mesh: (mesh, directory_lane),
        addr,
        ready,
        queues,
        draining,
        mut cluster,
    } = start;
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(Unready::Listen(e.to_string())));
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let (recovered, boot, queue_budget) = queues;
    let shard_queues = crate::queue::ShardQueues::new(id, &config, queue_budget);
    // One shard needs no directory: it is the only place to look.
    let directory =
        (mesh.shards() > 1).then(|| crate::routing::locate::DirectoryLink::new(id, directory_lane));
    let shard = Rc::new(Shard::new(
        id,
        config,
        mesh.clone(),
        shard_queues,
        directory,
        crate::shard::Above {
            answer: crate::dispatch::answer,
            store_changed: crate::routing::locate::publish,
            wake_lane: crate::routing::locate::wake,
            client_event: crate::routing::remote::announce,
        },
    ));
    // In a cluster, each value's home node hears this node's count of it
    // (routing::homes): from the routing directory's home shard of the
    // value, or with one shard from the store itself.
    if cluster.is_some() {
        match &shard.directory {
            Some(directory) => directory.track_node_totals(),
            None => shard.store.borrow_mut().note_changes(),
        }
    }
    // Every shard of a cluster node has a link endpoint; shard 0 also runs
    // the membership.
    let links = match cluster.as_ref().map(|c| start_links(&shard, c)) {
        Some(Err(reason)) => {
            let _ = ready.send(Err(Unready::Cluster(reason)));
            return;
        }
        Some(Ok(links)) => Some(links),
        None => None,
    };
    let gossip = match start_gossip(&shard.config, &mesh, cluster.as_mut()) {
        Ok(gossip) => gossip,
        Err(reason) => {
            let _ = ready.send(Err(Unready::Cluster(reason)));
            return;
        }
    };
    let _ = ready.send(Ok(Bound {
        addr: bound,
        cluster: gossip.as_ref().map(|g| g.local_addr()),
    }));
    tracing::debug!(shard = id, %bound, "listening");
    let gossip_task = gossip.map(|gossip| {
        shard.cluster.set_gossip(gossip.clone());
        glommio::spawn_local(gossip.run()).detach()
    });
    let link_tasks = links.map(|links| {
        shard.cluster.set_links(links.clone());
        // Weak: the shard holds the endpoint, which holds this handler.
        let (weak_shard, weak_links) = (Rc::downgrade(&shard), Rc::downgrade(&links));
        let order = crate::routing::remote::ArrivalOrder::default();
        links.on_request(Rc::new(move |peer, id, request| {
            if let (Some(shard), Some(links)) = (weak_shard.upgrade(), weak_links.upgrade()) {
                let slot = order.slot(&peer, &request);
                crate::routing::remote::answer(shard, links, peer, id, request, slot);
            }
        }));
        let weak_shard = Rc::downgrade(&shard);
        links.on_notice(Rc::new(move |peer, notice| {
            if let Some(shard) = weak_shard.upgrade() {
                match notice {
                    crate::cluster::frame::Frame::Queue(frame) => {
                        crate::queue::cluster::take(&shard, peer, frame)
                    }
                    notice => crate::routing::remote::take_notice(&shard, peer, notice),
                }
            }
        }));
        // Shard 0 tells the other nodes which applications this one holds.
        let share = (shard.id == 0).then(|| {
            glommio::spawn_local(crate::routing::remote::share_apps(shard.clone())).detach()
        });
        let tick = glommio::spawn_local({
            let shard = shard.clone();
            let links = links.clone();
            async move {
                loop {
                    glommio::timer::sleep(LINK_TICK).await;
                    links.reconcile(&shard.cluster.view());
                }
            }
        })
        .detach();
        // And, with --balance-above, sends clients away when crowded.
        let balance = (shard.id == 0 && shard.config.balance_above.is_some())
            .then(|| glommio::spawn_local(crate::node::balance::run(shard.clone())).detach());
        let publish =
            glommio::spawn_local(crate::routing::homes::publish_loop(shard.clone())).detach();
        let mut tasks = vec![glommio::spawn_local(links.run()).detach(), tick, publish];
        tasks.extend(share);
        tasks.extend(balance);
        tasks
    });

    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
    let flush_queue =
        glommio::executor().create_task_queue(Shares::default(), Latency::NotImportant, "flush");
    let flusher = glommio::spawn_local_into(
        crate::gateway::flush_loop(shard.flush.clone(), shard.config.broadcast_linger, {
            let shard = shard.clone();
            move || shard.flush_wakes()
        }),
        flush_queue,
    )
    .expect("the task queue was just created")
    .detach();
    let reaper = glommio::spawn_local(reap_loop(shard.clone())).detach();
    let waker = {
        let shard = shard.clone();
        glommio::spawn_local(async move { shard.wake_loop().await }).detach()
    };
    let directory = [
        glommio::spawn_local(crate::routing::locate::receive_loop(shard.clone())).detach(),
        glommio::spawn_local(crate::routing::locate::flush_loop(shard.clone())).detach(),
    ];
    let queue_task =
        glommio::spawn_local(crate::queue::run(shard.clone(), recovered, boot)).detach();

    let mut batch = Vec::with_capacity(MESH_BATCH);
    while !shard.is_shutting_down() {
        mesh.recv_batch(id, &mut batch, MESH_BATCH).await;
        for msg in batch.drain(..) {
            crate::dispatch::handle(&shard, msg);
        }
        glommio::yield_if_needed().await;
    }
    accept.cancel();
    // Leave the cluster first: the others take this node out of their
    // routes at once rather than after the failure timeout.
    if let Some(gossip) = shard.cluster.gossip() {
        gossip.leave().await;
    }
    if let Some(links) = shard.cluster.links() {
        links.goodbye("shutting down");
    }
    if let Some(task) = gossip_task {
        task.cancel();
    }
    for task in link_tasks.into_iter().flatten() {
        task.cancel();
    }
    // Give connections a moment to finish their goodbyes. A shard whose
    // connections are done keeps answering the mesh until every shard is
    // done: a connection elsewhere may be waiting on its answer (a SEND in
    // flight), and would otherwise hang until the deadline.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut finished = false;
    loop {
        if !finished && shard.open_connections() == 0 {
            finished = true;
            draining.fetch_sub(1, Ordering::AcqRel);
        }
        if (finished && draining.load(Ordering::Acquire) == 0) || Instant::now() >= deadline {
            break;
        }
        let wait = glommio::timer::sleep(Duration::from_millis(10));
        futures_lite::future::or(wait, async {
            mesh.recv_batch(id, &mut batch, MESH_BATCH).await;
        })
        .await;
        for msg in batch.drain(..) {
            crate::dispatch::handle(&shard, msg);
        }
    }
    reaper.cancel();
    queue_task.cancel();
    waker.cancel();
    for task in directory {
        task.cancel();
    }
    flusher.cancel();
}

/// On shard 0 of a cluster node: the gossip, bound, publishing each new
/// view of the cluster to every shard.
fn start_gossip(
    config: &Config,
    mesh: &Mesh<ShardMsg>,
    cluster: Option<&mut ShardLinks>,
) -> Result<Option<Rc<crate::cluster::Gossip>>, String> {
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let Some(socket) = cluster.gossip_socket.take() else {
        return Ok(None);
    };
    let settings = crate::cluster::Settings {
        socket,
        secret: config
            .cluster_secret
            .clone()
            .unwrap_or_default()
            .into_bytes(),
        peers: config.peers.clone(),
        name: config.node_name.clone(),
        shards: config.shards as u16,
        links: cluster.ports.clone(),
        boot: cluster.boot,
        down_after: config.cluster_down_after,
    };
    let mesh = mesh.clone();
    let publish = Box::new(move |view: Arc<crate::cluster::ClusterView>| {
        for shard in 0..mesh.shards() {
            mesh.send(shard, ShardMsg::ClusterView(view.clone()));
        }
    });
    let gossip = crate::cluster::Gossip::new(settings, publish).map_err(|e| e.to_string())?;
    tracing::info!(addr = %gossip.local_addr(), peers = ?config.peers, "cluster: gossiping");
    Ok(Some(Rc::new(gossip)))
}

/// A shard's link socket, bound before the shards started, with the
/// node's run id and every shard's link port.
struct ShardLinks {
    socket: std::net::UdpSocket,
    /// Shard 0's: the gossip socket.
    gossip_socket: Option<std::net::UdpSocket>,
    /// The node's gossip address.
    gossip: SocketAddr,
    boot: u64,
    ports: Vec<u16>,
    tls: Arc<crate::cluster::tls::LinkTls>,
}

/// How often a shard checks its links: dials what is missing, closes
/// links that never proved the secret, pings the rest.
const LINK_TICK: Duration = Duration::from_secs(1);

/// This shard's link endpoint.
fn start_links(
    shard: &Shard,
    cluster: &ShardLinks,
) -> Result<Rc<crate::cluster::link::Endpoint>, String> {
    let config = &shard.config;
    let socket = cluster.socket.try_clone().map_err(|e| e.to_string())?;
    let me = crate::cluster::link::Me {
        name: config.node_name.clone(),
        addr: cluster.gossip,
        boot: cluster.boot,
        shard: shard.id as u16,
        shards: config.shards as u16,
    };
    let secret = config
        .cluster_secret
        .clone()
        .unwrap_or_default()
        .into_bytes();
    crate::cluster::link::Endpoint::new(socket, secret, me, &cluster.tls)
        .map(Rc::new)
        .map_err(|e| format!("cannot start the link endpoint: {e}"))
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve(shard.clone(), stream)).detach();
            }
            Err(e) => {
                // Usually EMFILE: the process is out of file descriptors.
                // Back off instead of spinning; connections already open
                // carry on.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reaps silent clients. Runs often enough that a client is closed within
/// a tenth of an interval after its deadline.
async fn reap_loop(shard: Rc<Shard>) {
    let period = (shard.config.heartbeat_interval / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(period).await;
        shard.reap(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines in the kernel's format: a listener on 0.0.0.0:4567 (0x11D7),
    /// a TIME_WAIT connection from 127.0.0.1:8080 (0x1F90).
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:11D7 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00000DA4 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn only_a_listening_socket_counts() {
        assert!(table_listens_on(TABLE, 4567));
        assert!(!table_listens_on(TABLE, 8080));
        assert!(!table_listens_on(TABLE, 50000));
        assert!(!table_listens_on("", 4567));
    }

    #[test]
    fn a_port_another_socket_listens_on_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        assert_eq!(listening(addr.port()), Some(true));
        let err = port_is_free(addr).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
        drop(other);
        assert!(port_is_free(addr).is_ok());
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("1-x"), None);
    }
}
