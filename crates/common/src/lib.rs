//! What the daemon and the node-side watcher both need at run time, and nothing of the daemon's database, agent RPC
//! or actors: etcd as Backend.AI lays it out ([`etcd`]), systemd's notification protocol ([`systemd`]), the HTTP
//! workers' health check ([`workers`]) and [`Secret`]; with the `api-client` feature, the signed client of the
//! daemon's API ([`api_client`]) `agentctl` and `agent-watcher --register-with` use.

#[cfg(feature = "api-client")]
pub mod api_client;
pub mod etcd;
pub mod secret;
pub mod systemd;
pub mod workers;

pub use secret::Secret;
