//! The agent registry's request bodies (`POST /v1/agents`, `PATCH /v1/agents/{id}`), shared by the daemon, which
//! validates them, and by the programs that send them: `agentctl agents add|set` and `agent-watcher
//! --register-with`. Unknown fields are refused by name.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Registers an agent, or updates every field of a registered one: its `agents` row and its watcher's etcd keys
/// (`nodes/agents/{id}/ip`, `nodes/agents/{id}/watcher_port`) together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    /// 1–64 characters of `A-Z a-z 0-9 - _ . : @`.
    pub id: String,
    #[serde(default = "default_scaling_group")]
    pub scaling_group: String,
    /// Create the scaling group if it does not exist (else `404 scaling_group_not_found`).
    #[serde(default)]
    pub create_scaling_group: bool,
    #[serde(default = "default_region")]
    pub region: String,
    /// The agent's RPC address, `tcp://HOST:PORT`.
    pub addr: String,
    /// The agent's CURVE public key (40 characters of Z85), for encrypted RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Slot name → non-negative decimal string, e.g. `{"cpu": "8", "mem": "17179869184"}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub available_slots: Map<String, Value>,
    #[serde(default = "default_architecture")]
    pub architecture: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// Where the agent's watcher listens (an IP address or a host name); may be left out when etcd already has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The watcher's port; left out, the daemon's `watcher.default_port` applies (and the etcd key is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watcher_port: Option<u16>,
}

/// Changes some fields of a registered agent; fields left out stay as they are. `public_key` and `watcher_port`
/// may be `null` to clear them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedulable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_group: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_scaling_group: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub public_key: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub available_slots: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u16>))]
    pub watcher_port: Option<Option<u16>>,
}

/// `field: null` (`Some(None)`) apart from a field left out (`None`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn default_scaling_group() -> String {
    "default".to_owned()
}

fn default_region() -> String {
    "local".to_owned()
}

fn default_architecture() -> String {
    std::env::consts::ARCH.to_owned()
}

fn default_version() -> String {
    "unknown".to_owned()
}

/// An agent that etcd knows (`nodes/agents/{id}/…`) but the database does not (`GET /v1/agents?unregistered=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnregisteredAgent {
    pub id: String,
    pub ip: Option<String>,
    pub watcher_port: Option<u16>,
    /// The command that registers it (its RPC address guessed as `tcp://{ip}:6001`, Backend.AI's default port).
    pub adopt_with: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_null_and_unknown_fields() {
        let r: RegisterAgent = serde_json::from_str(r#"{"id": "i-1", "addr": "tcp://h:6001"}"#).unwrap();
        assert_eq!((r.scaling_group.as_str(), r.region.as_str(), r.watcher_port), ("default", "local", None));
        let u: UpdateAgent = serde_json::from_str(r#"{"public_key": null, "schedulable": false}"#).unwrap();
        assert_eq!((u.public_key, u.schedulable, u.watcher_port), (Some(None), Some(false), None));
        let e = serde_json::from_str::<UpdateAgent>(r#"{"schedulabel": false}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `schedulabel`"));
        let round = serde_json::to_value(UpdateAgent { watcher_port: Some(None), ..Default::default() }).unwrap();
        assert_eq!(round, serde_json::json!({"watcher_port": null}));
    }
}
