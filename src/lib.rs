//! agent-supervisor: supervises the agents of a Backend.AI-style compute cluster.
//!
//! Data flows one way: HTTP → [`api`] → [`service`] → [`actors`] → (watcher | [`db`] | [`etcd`] | [`agent_rpc`]).

pub mod agent_rpc;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod etcd;
