//! Manager → agent RPC over Callosum (ZeroMQ DEALER → the agent's ROUTER, msgpack, optional CurveZMQ).
//!
//! - [`codec`]: the Callosum frames, byte-compatible with callosum 1.0.3 as Backend.AI uses it.
//! - [`client`]: [`AgentRpc`], one connection per agent on its own thread, with timeouts and reconnection.
//! - [`keys`]: Z85 CURVE keys and ZeroMQ certificate files.
//! - `standin` (feature `dev`): `StandinAgent`, an agent stand-in that answers `sync_kernel_registry` like a
//!   Backend.AI agent, for the dev stack and the tests.

pub mod client;
pub mod codec;
mod error;
pub mod keys;
#[cfg(feature = "dev")]
pub mod standin;

pub use client::AgentRpc;
pub use error::RpcError;
#[cfg(feature = "dev")]
pub use standin::{StandinAgent, StandinCall, StandinConfig, StandinCurve, StandinError, StandinHandle};
