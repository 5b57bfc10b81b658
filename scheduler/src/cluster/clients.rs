//! The scheduler's Kubernetes clients, each with bounds on how long a call may wait: kube-rs has
//! no read timeout by default, and a call that never returns would keep a replica leading or hold
//! a bind slot forever. Calls and watches get separate clients because a watch is silent for as
//! long as nothing changes, which no call's bound may allow.

use kube::Client;

use crate::config::ApiConfig;

#[derive(Clone)]
pub struct ApiClients {
    /// Lease, binds, events: connecting, sending, and every wait for response bytes bounded by
    /// `api.timeout`.
    pub calls: Client,
    /// Lists and watches: a connection silent for longer than `api.watch_timeout` plus a margin
    /// is dropped (the server ends each watch at `api.watch_timeout`), and the watcher
    /// re-establishes it.
    pub watches: Client,
}

impl ApiClients {
    pub fn new(config: kube::Config, api: &ApiConfig) -> Result<Self, kube::Error> {
        let bounded = |read: std::time::Duration| -> Result<Client, kube::Error> {
            let mut c = config.clone();
            // Connecting (TLS included) is bounded like any wait: a watch whose new connection
            // hangs in its handshake is down after the watch bound, not after `api.timeout`.
            c.connect_timeout = Some(read.min(api.timeout));
            c.write_timeout = Some(read.min(api.timeout));
            c.read_timeout = Some(read);
            // Count the silence from each request, not from when a pooled connection went idle.
            c.reset_reader_on_write = true;
            Client::try_from(c)
        };
        Ok(Self {
            calls: bounded(api.timeout)?,
            watches: bounded(api.watch_silence())?,
        })
    }
}
