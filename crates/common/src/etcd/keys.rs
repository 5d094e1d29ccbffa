//! Backend.AI's etcd key layout. Keys here are relative to `/sorna/{namespace}/`.

/// Everything the agents publish lives under this prefix.
pub const AGENTS_PREFIX: &str = "nodes/agents/";

/// The watcher token shared by the manager and every watcher.
pub const WATCHER_TOKEN: &str = "config/watcher/token";

pub fn namespace_prefix(namespace: &str) -> String {
    format!("/sorna/{namespace}/")
}

/// `nodes/agents/{id}/ip`: the address the agent's watcher listens on.
pub fn agent_ip(agent_id: &str) -> String {
    format!("{AGENTS_PREFIX}{agent_id}/ip")
}

/// `nodes/agents/{id}/watcher_port`.
pub fn agent_watcher_port(agent_id: &str) -> String {
    format!("{AGENTS_PREFIX}{agent_id}/watcher_port")
}

/// Splits `nodes/agents/{id}/{field}` into `(id, field)`.
pub fn parse_agent_key(relative: &str) -> Option<(&str, &str)> {
    let rest = relative.strip_prefix(AGENTS_PREFIX)?;
    let (id, field) = rest.split_once('/')?;
    (!id.is_empty()).then_some((id, field))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_backend_ai() {
        assert_eq!(namespace_prefix("local"), "/sorna/local/");
        assert_eq!(agent_ip("i-1"), "nodes/agents/i-1/ip");
        assert_eq!(agent_watcher_port("i-1"), "nodes/agents/i-1/watcher_port");
        assert_eq!(parse_agent_key("nodes/agents/i-1/watcher_port"), Some(("i-1", "watcher_port")));
        assert_eq!(parse_agent_key("nodes/agents/i-1"), None);
        assert_eq!(parse_agent_key("config/watcher/token"), None);
    }
}
