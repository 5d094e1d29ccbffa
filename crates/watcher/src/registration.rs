//! Optional etcd side of the watcher: reading the shared token and publishing where the watcher listens
//! (`nodes/agents/{id}/watcher_port`, and `ip` when an address to advertise is given), as a Backend.AI agent does.

use std::time::Duration;

use agent_supervisor_common::etcd::{Etcd, EtcdError, keys};

/// Pause between registration attempts while etcd is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Registration {
    pub agent_id: String,
    pub advertise_ip: Option<String>,
}

/// `config/watcher/token`, if set.
pub async fn read_token(etcd: &Etcd) -> Result<Option<String>, EtcdError> {
    etcd.get(keys::WATCHER_TOKEN).await
}

/// Publishes the port (and the address, when given) in one etcd transaction, so that no reader ever sees the new
/// port next to an old address.
pub async fn register(etcd: &Etcd, reg: &Registration, port: u16) -> Result<(), EtcdError> {
    let mut puts = vec![(keys::agent_watcher_port(&reg.agent_id), port.to_string())];
    if let Some(ip) = &reg.advertise_ip {
        puts.push((keys::agent_ip(&reg.agent_id), ip.clone()));
    }
    etcd.apply(&puts, &[]).await?;
    Ok(())
}

/// Registers, retrying until it succeeds (etcd may come up after the watcher).
pub async fn register_until_done(etcd: Etcd, reg: Registration, port: u16) {
    loop {
        match register(&etcd, &reg, port).await {
            Ok(()) => {
                tracing::info!(agent.id = %reg.agent_id, port, ip = ?reg.advertise_ip, "registered the watcher in etcd");
                return;
            }
            Err(e) => {
                tracing::warn!(agent.id = %reg.agent_id, error = %e, retry_in_ms = RETRY_EVERY.as_millis() as u64,
                    "cannot register the watcher in etcd");
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}
