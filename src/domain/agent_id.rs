use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize};

/// Longest agent id the `agents.id` column holds.
pub const MAX_AGENT_ID_LEN: usize = 64;

/// An agent's id, validated: 1 to 64 characters from `A-Z a-z 0-9 - _ . : @`, and never `..`.
///
/// Backend.AI ids are free-form strings such as `i-node01` or a UUID; the restriction keeps ids safe to put in
/// URLs, etcd keys and log lines.
/// Shared, not copied: an id is cloned into every actor message, answer and log line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._:@-]{1,64}$")]
pub struct AgentId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_AGENT_ID_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("contains {0:?}; allowed are letters, digits and - _ . : @")]
    BadChar(char),
    #[error("must not contain \"..\"")]
    DotDot,
}

impl AgentId {
    pub fn parse(raw: &str) -> Result<Self, AgentIdError> {
        if raw.is_empty() {
            return Err(AgentIdError::Empty);
        }
        let len = raw.chars().count();
        if len > MAX_AGENT_ID_LEN {
            return Err(AgentIdError::TooLong(len));
        }
        if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
        {
            return Err(AgentIdError::BadChar(c));
        }
        if raw.contains("..") {
            return Err(AgentIdError::DotDot);
        }
        Ok(Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for AgentId {
    type Err = AgentIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_backend_ai_style_ids() {
        for ok in ["i-node01", "agent-123", "00000000-0000-0000-0000-000000000001", "gpu.node:7", "a", &"x".repeat(64)]
        {
            assert_eq!(AgentId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_ids_with_the_reason() {
        assert_eq!(AgentId::parse(""), Err(AgentIdError::Empty));
        assert_eq!(AgentId::parse(&"x".repeat(65)), Err(AgentIdError::TooLong(65)));
        assert_eq!(AgentId::parse("a/b"), Err(AgentIdError::BadChar('/')));
        assert_eq!(AgentId::parse("a\0b"), Err(AgentIdError::BadChar('\0')));
        assert_eq!(AgentId::parse("a b"), Err(AgentIdError::BadChar(' ')));
        assert_eq!(AgentId::parse("é"), Err(AgentIdError::BadChar('é')));
        assert_eq!(AgentId::parse("a..b"), Err(AgentIdError::DotDot));
        assert!(serde_json::from_str::<AgentId>("\"\"").unwrap_err().to_string().contains("must not be empty"));
    }
}
