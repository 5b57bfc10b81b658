//! A TCP proxy on 127.0.0.1 between a client and a real server (e.g. the API server) that a test
//! can make misbehave the way networks and hung servers do:
//! - [`FaultProxy::freeze`]: every connection stays open (new ones are accepted) but no byte flows
//!   either way — to the client a hung peer (a stopped API server), not a refused or reset
//!   connection;
//! - [`FaultProxy::hold_requests`], then [`FaultProxy::hold_answers`]: requests wait in the
//!   proxy (what the server sends on other connections, such as watch streams, still flows), then
//!   go through while their answers wait — so a request is deterministically on its way, and its
//!   answer deterministically late, for as long as the test needs;
//! - [`FaultProxy::open`]: everything held is forwarded, and everything after it.
//!
//! TLS passes through (the client still talks to the real server). While requests are held,
//! handshake records are not, so a connection opened meanwhile can get as far as sending its
//! request. Stops (closing every connection) on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Nothing flows in either direction.
    Frozen,
    /// Requests wait in the proxy.
    HoldRequests,
    /// Requests flow; what the server answers on connections whose requests were held waits.
    HoldAnswers,
}

/// The first byte of a TLS handshake record (ClientHello and the like).
const TLS_HANDSHAKE: u8 = 0x16;

pub struct FaultProxy {
    addr: SocketAddr,
    phase: watch::Sender<Phase>,
    held_requests: Arc<AtomicUsize>,
    held_answers: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Copies `from` to `to`; a chunk that `hold` says must wait is counted in `held` until the
/// phase lets it through. The end of `from` is passed on as the end of `to`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut phase: watch::Receiver<Phase>,
    held: Arc<AtomicUsize>,
    hold: impl Fn(Phase, &[u8]) -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = *phase.borrow();
        if hold(current, &buf[..n]) {
            held.fetch_add(n, Ordering::SeqCst);
            if phase.wait_for(|p| !hold(*p, &buf[..n])).await.is_err() {
                return;
            }
            held.fetch_sub(n, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (phase, watcher) = watch::channel(Phase::Open);
        let held_requests = Arc::new(AtomicUsize::new(0));
        let held_answers = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (requests, answers, registry) =
            (held_requests.clone(), held_answers.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                // Set once a request of this connection was held: its answers are the ones to hold.
                let marked = Arc::new(AtomicBool::new(false));
                let mark = marked.clone();
                let up = tokio::spawn(pump(
                    from_client,
                    to_server,
                    watcher.clone(),
                    requests.clone(),
                    move |phase, chunk| match phase {
                        Phase::Open | Phase::HoldAnswers => false,
                        Phase::Frozen => true,
                        Phase::HoldRequests => {
                            let hold = chunk[0] != TLS_HANDSHAKE;
                            if hold {
                                mark.store(true, Ordering::SeqCst);
                            }
                            hold
                        }
                    },
                ));
                let down = tokio::spawn(pump(
                    from_server,
                    to_client,
                    watcher.clone(),
                    answers.clone(),
                    move |phase, _| match phase {
                        Phase::Open => false,
                        Phase::Frozen => true,
                        Phase::HoldRequests | Phase::HoldAnswers => marked.load(Ordering::SeqCst),
                    },
                ));
                let mut registry = registry.lock().unwrap();
                registry.push(up.abort_handle());
                registry.push(down.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Ok(Self {
            addr,
            phase,
            held_requests,
            held_answers,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding in both directions (connections stay open, new ones are accepted and hang).
    pub fn freeze(&self) {
        self.phase.send_replace(Phase::Frozen);
    }

    /// From now on, requests wait in the proxy.
    pub fn hold_requests(&self) {
        self.phase.send_replace(Phase::HoldRequests);
    }

    /// Lets the held requests (and later ones) through, but holds what the server answers on
    /// their connections.
    pub fn hold_answers(&self) {
        self.phase.send_replace(Phase::HoldAnswers);
    }

    /// Forwards everything held, and everything after it.
    pub fn open(&self) {
        self.phase.send_replace(Phase::Open);
    }

    /// Bytes of requests being held.
    pub fn held_requests(&self) -> usize {
        self.held_requests.load(Ordering::SeqCst)
    }

    /// Bytes of answers being held.
    pub fn held_answers(&self) -> usize {
        self.held_answers.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
