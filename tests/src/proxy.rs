//! A TCP proxy on 127.0.0.1 that a test can *freeze*: while frozen it accepts connections and keeps
//! every connection open but forwards no byte in either direction — to the client it looks like a
//! hung peer (a stopped API server), not a refused or reset connection. Unfreezing resumes
//! forwarding, also of what was held. Stops (closing every connection) on drop.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct FreezableProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let state = frozen.clone();
        let accept = tokio::spawn(async move {
            // Connection tasks end with the accept task (aborted on drop).
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let frozen = state.subscribe();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, frozen.clone()), pump(sr, cw, frozen.clone()));
                });
            }
        });
        Ok(Self {
            addr,
            frozen,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding (connections stay open, new ones are accepted and hang).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn unfreeze(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while not frozen; a chunk read just before a freeze is held until the
/// thaw.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}
