//! The scheduler's Kubernetes clients, each with bounds on how long a call may wait: kube-rs has
//! no read timeout by default, and a call that never returns would keep a replica leading or hold
//! a bind slot forever. Calls and watches get separate clients because a watch is silent for as
//! long as nothing changes, which no call's bound may allow.

use kube::Client;

use crate::config::ApiConfig;

#[derive(Clone)]
pub struct ApiClients {
    /// Lease, binds, events, node patches, evictions: connecting, sending, and every wait for
    /// response bytes bounded by `api.timeout`; no automatic retries (each caller has its own).
    pub calls: Client,
    /// Lists and watches: a connection silent for longer than `api.watch_timeout` plus a margin
    /// is dropped (the server ends each watch at `api.watch_timeout`), and the watcher
    /// re-establishes it.
    pub watches: Client,
}

impl ApiClients {
    pub fn new(config: kube::Config, api: &ApiConfig) -> Result<Self, kube::Error> {
        let bounded =
            |mut c: kube::Config, read: std::time::Duration| -> Result<Client, kube::Error> {
                // Connecting (TLS included) is bounded like any wait: a watch whose new connection
                // hangs in its handshake is down after the watch bound, not after `api.timeout`.
                c.connect_timeout = Some(read.min(api.timeout));
                c.write_timeout = Some(read.min(api.timeout));
                c.read_timeout = Some(read);
                // Count the silence from each request, not from when a pooled connection went idle.
                c.reset_reader_on_write = true;
                Client::try_from(c)
            };
        // kube-rs retries 429, 503 and 504 by default, with backoff up to 1000 s between 15
        // attempts: that would stretch a call far past `api.timeout`, and a 429 from an eviction
        // is a PodDisruptionBudget's answer, not a transient failure.
        let mut calls = config.clone();
        calls.default_retry = false;
        Ok(Self {
            calls: bounded(calls, api.timeout)?,
            watches: bounded(config, api.watch_silence())?,
        })
    }
}
