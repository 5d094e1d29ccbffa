//! The error model.
//!
//! Each layer has its own `thiserror` enum, defined beside the code that raises it:
//! [`crate::config::ConfigError`] (start-up), [`crate::db::DbError`] (PostgreSQL), [`crate::etcd::EtcdError`]
//! (etcd), [`crate::watcher::WatcherError`] (calls to a watcher), [`crate::agent_rpc::RpcError`] (Callosum calls)
//! and [`crate::auth::AuthError`] (request signatures). Every one of them converts into a [`Problem`]: a stable
//! [`ErrorCode`], a human detail, and the agent concerned. What an action of [`crate::service`] fails with is a
//! `Problem` already. The HTTP layer renders a `Problem` as RFC 7807 `application/problem+json` (see
//! `api::problem`); nothing below the API knows about HTTP beyond the status number an [`ErrorCode`] carries.
//!
//! `ErrorCode` and `Problem` are defined in `agent_supervisor_protocol`, because the watcher and `agentctl` speak
//! the same documents.

pub use agent_supervisor_protocol::problem::{ErrorCode, Problem, ProblemDocument};
