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
        // Shards whose connections have not yet finished on shutdown.
        let draining = Arc::new(AtomicUsize::new(config.shards));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::new();
        let mut addr = SocketAddr::new(config.bind, config.port);
        for id in 0..config.shards {
            // Pin one shard per CPU when there are enough CPUs; more shards
            // than CPUs run unpinned rather than stacking on CPUs that exist.
            let placement = if config.shards <= cpus {
                Placement::Fixed(id)
            } else {
                Placement::Unbound
            };
            let (ready_tx, ready_rx) = mpsc::channel();
            let shard_config = config.clone();
            let shard_mesh = mesh.clone();
            let shard_queues = recovered.next().unwrap_or_default();
            let shard_draining = draining.clone();
            let mut builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let handle = builder
                .spawn(move || {
                    run_shard(
                        id,
                        shard_config,
                        shard_mesh,
                        addr,
                        ready_tx,
                        (shard_queues, boot),
                        shard_draining,
                    )
                })
                .map_err(|source| StartError::Executor { shard: id, source })?;
            match ready_rx.recv() {
                Ok(Ok(bound)) => addr = bound,
                Ok(Err(reason)) => {
                    stop_all(&mesh, id);
                    return Err(StartError::Listen {
                        shard: id,
                        addr,
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
/// A plain bind, without SO_REUSEPORT, is refused while any socket holds
/// the port; it is dropped before the shards bind.
fn port_is_free(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => Err(StartError::Listen {
            shard: 0,
            addr,
            reason: if e.kind() == std::io::ErrorKind::AddrInUse {
                "the port is already in use (is another server running?)".into()
            } else {
                e.to_string()
            },
        }),
    }
}

fn stop_all(mesh: &Mesh<ShardMsg>, started: usize) {
    for shard in 0..started {
        mesh.send(shard, ShardMsg::Shutdown);
    }
}

async fn run_shard(
    id: usize,
    config: Arc<Config>,
    mesh: Mesh<ShardMsg>,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
    queues: (crate::queue::RecoveredShard, u64),
    draining: Arc<AtomicUsize>,
) {
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let shard = Rc::new(Shard::new(id, config, mesh.clone()));
    let _ = ready.send(Ok(bound));
    tracing::debug!(shard = id, %bound, "listening");

    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
    let flush_queue =
        glommio::executor().create_task_queue(Shares::default(), Latency::NotImportant, "flush");
    let flusher = glommio::spawn_local_into(
        crate::gateway::flush_loop(shard.flush.clone(), shard.config.broadcast_linger),
        flush_queue,
    )
    .expect("the task queue was just created")
    .detach();
    let reaper = glommio::spawn_local(reap_loop(shard.clone())).detach();
    let queue_task =
        glommio::spawn_local(crate::queue::run(shard.clone(), queues.0, queues.1)).detach();

    let mut batch = Vec::with_capacity(MESH_BATCH);
    while !shard.is_shutting_down() {
        mesh.recv_batch(id, &mut batch, MESH_BATCH).await;
        for msg in batch.drain(..) {
            shard.handle(msg);
        }
        glommio::yield_if_needed().await;
    }
    accept.cancel();
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
            shard.handle(msg);
        }
    }
    reaper.cancel();
    queue_task.cancel();
    flusher.cancel();
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
