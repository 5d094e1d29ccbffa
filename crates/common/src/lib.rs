//! What the daemon and the node-side watcher both need at run time, and nothing of the daemon's database, agent RPC
//! or actors: etcd as Backend.AI lays it out ([`etcd`]), systemd's notification protocol ([`systemd`]), the HTTP
//! workers' health check ([`workers`]) and [`Secret`].

pub mod etcd;
pub mod secret;
pub mod systemd;
pub mod workers;

pub use secret::Secret;
