//! Fail fast while a PostgreSQL server is unreachable.
//!
//! sqlx retries a refused connection until the pool's acquire timeout (`storage.acquire_timeout_seconds`,
//! 5 s), so without this every call made while the database is down would wait that long before its
//! UNAVAILABLE, and callers would pile up behind it. Instead, one probe per server address opens a TCP
//! (or Unix socket) connection every [`PROBE_EVERY`]; when that fails, the breaker trips: the pools of
//! that server are given connect options that fail at once (a socket path that does not exist), so a
//! new call fails in microseconds and a call already waiting fails at its next retry (sqlx reads the
//! options again on each one). When the server accepts connections again the real options are put back
//! and the pools reconnect by themselves. A server that accepts connections but does not answer is not
//! detected here; the acquire timeout and the request deadline bound those calls.
//!
//! The probe holds a handle on each watched pool until the pool is closed ([`crate::Db::close`], which
//! the server does on shutdown): a pool dropped without being closed stays open, with its idle
//! connections, until the process exits (tests on PostgreSQL drop their database with FORCE, which ends
//! those connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};

/// How often the server is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take before the server counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where no socket exists: connecting fails at once with "not found", which sqlx does not retry.
const NOWHERE: &str = "/nonexistent/rapport-database-unreachable";

#[derive(Default)]
struct Probe {
    /// The pools of this server and their real connect options.
    pools: Mutex<Vec<(PgPool, PgConnectOptions)>>,
    down: AtomicBool,
    /// Whether a task probes this address (false once its runtime is gone).
    running: Arc<AtomicBool>,
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

/// The address the probe connects to: a Unix socket path or `host:port`.
fn address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None if options.get_host().starts_with('/') => {
            format!("{}/.s.PGSQL.{}", options.get_host(), options.get_port())
        }
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

async fn reachable(address: &str) -> bool {
    let connect = async {
        if address.starts_with('/') {
            tokio::net::UnixStream::connect(address).await.map(|_| ())
        } else {
            tokio::net::TcpStream::connect(address).await.map(|_| ())
        }
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(())))
}

/// Puts `pool` (connected with `options`) under the breaker of its server.
pub(crate) fn watch(pool: &PgPool, options: PgConnectOptions) {
    let address = address(&options);
    let probe = PROBES.lock().unwrap_or_else(|p| p.into_inner()).entry(address.clone()).or_default().clone();
    probe.pools.lock().unwrap_or_else(|p| p.into_inner()).push((pool.clone(), options));
    if probe.running.swap(true, Ordering::SeqCst) {
        return;
    }
    let running = probe.running.clone();
    tokio::spawn(async move {
        // Marks the address as not probed when the task ends, also when its runtime drops it.
        struct Stopped(Arc<AtomicBool>);
        impl Drop for Stopped {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _stopped = Stopped(running);
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            {
                let mut pools = probe.pools.lock().unwrap_or_else(|p| p.into_inner());
                pools.retain(|(p, _)| !p.is_closed());
                if pools.is_empty() {
                    return;
                }
            }
            let up = reachable(&address).await;
            let was_down = probe.down.load(Ordering::SeqCst);
            if up != was_down {
                continue;
            }
            probe.down.store(!up, Ordering::SeqCst);
            let pools = probe.pools.lock().unwrap_or_else(|p| p.into_inner());
            for (pool, real) in pools.iter() {
                pool.set_connect_options(if up { real.clone() } else { real.clone().socket(NOWHERE) });
            }
            if up {
                tracing::info!("database reachable again; reconnecting");
            } else {
                tracing::warn!(
                    "database unreachable: calls that need it fail at once with UNAVAILABLE until it answers"
                );
            }
            metrics::gauge!("rapport_storage_database_unreachable").set(if up { 0.0 } else { 1.0 });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_address_is_the_socket_or_host_and_port() {
        let tcp = PgConnectOptions::new().host("db.internal").port(6432);
        assert_eq!(address(&tcp), "db.internal:6432");
        let unix = PgConnectOptions::new().socket("/run/postgresql").port(5432);
        assert_eq!(address(&unix), "/run/postgresql/.s.PGSQL.5432");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::time::Instant::now();
        assert!(!reachable(&format!("127.0.0.1:{port}")).await);
        assert!(started.elapsed() < Duration::from_millis(500));
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(reachable(&open.local_addr().unwrap().to_string()).await);
    }
}
