//! agent-supervisor: supervises the agents of a Backend.AI-style compute cluster.
//!
//! Data flows one way: HTTP → [`api`] → [`service`] → [`actors`] → (watcher | [`db`] | [`etcd`] | [`agent_rpc`]).

pub mod actors;
pub mod agent_rpc;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod etcd;
pub mod ha;
pub mod redis_stat;
pub mod registration;
pub mod service;
pub mod telemetry;
pub mod watcher;
