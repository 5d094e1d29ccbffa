//! Request parameters: the agent id (and `force`) from a JSON body or the query string, strictly validated so that
//! every mistake is a `400 invalid_request` naming the field.

use serde_json::Value;

use crate::{domain::AgentId, error::Problem};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentParams {
    pub agent_id: AgentId,
    pub force: bool,
}

pub fn parse_agent_id(field: &str, raw: &str) -> Result<AgentId, Problem> {
    AgentId::parse(raw).map_err(|e| Problem::invalid_field(field, e))
}

pub fn parse_bool(field: &str, raw: &str) -> Result<bool, Problem> {
    match raw {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(Problem::invalid_field(field, format!("{raw:?} is not a boolean"))),
    }
}

/// Query pairs, rejecting keys given twice and keys not in `allowed`.
pub fn query_pairs(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let pairs: Vec<(String, String)> = actix_web::web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| Problem::invalid_field("query", e))?
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(Problem::invalid_field(k, "unknown parameter"));
        }
        if !seen.insert(k.clone()) {
            return Err(Problem::invalid_field(k, "given more than once"));
        }
    }
    Ok(pairs)
}

/// `force` from a `/v1` query string.
pub fn force_from_query(query: &str) -> Result<bool, Problem> {
    let pairs = query_pairs(query, &["force"])?;
    match pairs.iter().find(|(k, _)| k == "force") {
        Some((_, v)) => parse_bool("force", v),
        None => Ok(false),
    }
}

/// Backend.AI's `agent_id` (alias `agent`): from the JSON body if there is one, else from the query string.
pub fn agent_params(body: &[u8], query: &str, allow_force: bool) -> Result<AgentParams, Problem> {
    let allowed: &[&str] = if allow_force { &["agent_id", "agent", "force"] } else { &["agent_id", "agent"] };
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Problem::invalid_field("body", format!("malformed JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Problem::invalid_field("body", "must be a JSON object"));
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Problem::invalid_field(k, "unknown field"));
        }
        let (field, raw) = match (map.get("agent_id"), map.get("agent")) {
            (Some(v), _) => ("agent_id", v),
            (None, Some(v)) => ("agent", v),
            (None, None) => return Err(Problem::invalid_field("agent_id", "is required")),
        };
        let Value::String(raw) = raw else {
            return Err(Problem::invalid_field(field, "must be a string"));
        };
        let force = match map.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Problem::invalid_field("force", "must be a boolean")),
        };
        return Ok(AgentParams { agent_id: parse_agent_id(field, raw)?, force });
    }
    let pairs = query_pairs(query, allowed)?;
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let (field, raw) = match (get("agent_id"), get("agent")) {
        (Some(v), _) => ("agent_id", v),
        (None, Some(v)) => ("agent", v),
        (None, None) => return Err(Problem::invalid_field("agent_id", "is required")),
    };
    let force = match get("force") {
        Some(v) => parse_bool("force", v)?,
        None => false,
    };
    Ok(AgentParams { agent_id: parse_agent_id(field, raw)?, force })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn field_of(p: Problem) -> String {
        p.extra.get("field").and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    #[test]
    fn body_or_query_with_alias() {
        assert_eq!(agent_params(br#"{"agent_id": "i-1"}"#, "", false).unwrap().agent_id.as_str(), "i-1");
        assert_eq!(agent_params(br#"{"agent": "i-2"}"#, "", false).unwrap().agent_id.as_str(), "i-2");
        assert_eq!(agent_params(b"", "agent_id=i-3", false).unwrap().agent_id.as_str(), "i-3");
        assert_eq!(agent_params(b"  ", "agent=i-4", false).unwrap().agent_id.as_str(), "i-4");
        assert!(agent_params(br#"{"agent_id": "i-1", "force": true}"#, "", true).unwrap().force);
    }

    #[test]
    fn every_mistake_names_its_field() {
        assert_eq!(field_of(agent_params(b"{", "", false).unwrap_err()), "body");
        assert_eq!(field_of(agent_params(b"[1]", "", false).unwrap_err()), "body");
        assert_eq!(field_of(agent_params(b"{}", "", false).unwrap_err()), "agent_id");
        assert_eq!(field_of(agent_params(br#"{"agent_id": 5}"#, "", false).unwrap_err()), "agent_id");
        assert_eq!(field_of(agent_params(br#"{"agent_id": ""}"#, "", false).unwrap_err()), "agent_id");
        assert_eq!(field_of(agent_params(br#"{"agent_id": "a/b"}"#, "", false).unwrap_err()), "agent_id");
        assert_eq!(field_of(agent_params(br#"{"agent_id": "a", "x": 1}"#, "", false).unwrap_err()), "x");
        assert_eq!(field_of(agent_params(br#"{"agent_id": "a", "force": true}"#, "", false).unwrap_err()), "force");
        assert_eq!(field_of(agent_params(br#"{"agent_id": "a", "force": "yes"}"#, "", true).unwrap_err()), "force");
        assert_eq!(field_of(agent_params(b"", "agent_id=a&agent_id=b", false).unwrap_err()), "agent_id");
        assert_eq!(field_of(agent_params(b"", "", false).unwrap_err()), "agent_id");
        assert_eq!(
            field_of(agent_params(b"", &format!("agent_id={}", "x".repeat(65)), false).unwrap_err()),
            "agent_id"
        );
        assert_eq!(field_of(force_from_query("force=maybe").unwrap_err()), "force");
    }
}
