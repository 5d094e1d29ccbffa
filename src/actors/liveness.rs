//! Standalone mode's liveness (SPEC §10): the watcher probe each agent actor runs is the agent's heartbeat. An agent
//! whose watcher answers that the service runs is ALIVE; one whose watcher is unreachable, or reports the service
//! down, for longer than `agents.lost_after_s` becomes LOST (with `lost_at`), and comes back ALIVE when it is seen
//! running again. [`Liveness`] decides the transitions from observations; the actor writes them (a conditional
//! update, so that only a real change is recorded) with an audit event, a log line and a metric.
//!
//! In Backend.AI mode nothing here runs: Backend.AI's own heartbeat owns `agents.status`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::agent::Observation;
use crate::{domain::AgentStatus, watcher::AgentState};

/// A transition to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: AgentStatus,
    pub to: AgentStatus,
    pub at: DateTime<Utc>,
    /// What was seen, for the audit trail and the log.
    pub reason: String,
}

/// What one agent's actor knows of its liveness.
#[derive(Debug, Default)]
pub struct Liveness {
    /// What the row says, as far as this actor knows (`None` until its first write).
    believed: Option<AgentStatus>,
    /// Since when the agent has looked down, if it does.
    down_since: Option<DateTime<Utc>>,
    /// A transition is being written: no other until it is settled.
    pending: bool,
}

impl Liveness {
    /// The transition `o` calls for, if any; it is pending until [`settled`](Self::settled).
    pub fn observe(&mut self, o: &Observation, lost_after: Duration) -> Option<Transition> {
        let running = o.reachable && o.agent_status.as_deref().map(AgentState::parse).is_some_and(|s| s.is_running());
        let want = if running {
            self.down_since = None;
            AgentStatus::Alive
        } else {
            let since = *self.down_since.get_or_insert(o.at);
            let down_for = (o.at - since).to_std().unwrap_or_default();
            if down_for < lost_after {
                return None;
            }
            AgentStatus::Lost
        };
        if self.pending || self.believed == Some(want) {
            return None;
        }
        self.pending = true;
        let (from, reason) = match want {
            AgentStatus::Lost => {
                let seen = match (o.reachable, &o.agent_status) {
                    (false, _) => "the watcher does not answer".to_owned(),
                    (true, Some(s)) => format!("the agent service is {s}"),
                    (true, None) => "the watcher's answer names no agent status".to_owned(),
                };
                let secs = self.down_since.map_or(0, |s| (o.at - s).num_seconds());
                (AgentStatus::Alive, format!("{seen}, for {secs} s (agents.lost_after_s is {})", lost_after.as_secs()))
            }
            _ => (AgentStatus::Lost, "the agent service runs again".to_owned()),
        };
        Some(Transition { from, to: want, at: o.at, reason })
    }

    /// The write of a transition to `to` ended: `Ok(changed)` records that the row says `to` now (whether this
    /// write changed it or it already did); `Err` lets the next observation try again.
    pub fn settled(&mut self, to: AgentStatus, written: Result<bool, ()>) {
        self.pending = false;
        if written.is_ok() {
            self.believed = Some(to);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn seen(at_s: i64, reachable: bool, status: Option<&str>) -> Observation {
        Observation {
            agent_status: status.map(str::to_owned),
            reachable,
            at: DateTime::from_timestamp(1_700_000_000 + at_s, 0).unwrap(),
            latency_ms: 1,
            error: None,
        }
    }

    #[test]
    fn down_longer_than_the_limit_is_lost_and_running_again_is_alive() {
        let mut l = Liveness::default();
        let after = Duration::from_secs(60);
        // First sight of a running agent: make sure the row says ALIVE (a no-op write when it already does).
        let t = l.observe(&seen(0, true, Some("active")), after).unwrap();
        assert_eq!((t.from, t.to), (AgentStatus::Lost, AgentStatus::Alive));
        l.settled(AgentStatus::Alive, Ok(false));
        assert_eq!(l.observe(&seen(10, true, Some("active")), after), None);
        // Down: nothing until the limit has passed, then LOST once.
        assert_eq!(l.observe(&seen(20, false, None), after), None);
        assert_eq!(l.observe(&seen(79, true, Some("inactive")), after), None);
        let t = l.observe(&seen(80, true, Some("failed")), after).unwrap();
        assert_eq!((t.from, t.to), (AgentStatus::Alive, AgentStatus::Lost));
        assert!(t.reason.contains("failed") && t.reason.contains("60 s"), "{}", t.reason);
        assert_eq!(l.observe(&seen(81, false, None), after), None, "pending");
        l.settled(AgentStatus::Lost, Ok(true));
        assert_eq!(l.observe(&seen(200, false, None), after), None, "already LOST");
        // Back.
        let t = l.observe(&seen(210, true, Some("active")), after).unwrap();
        assert_eq!((t.from, t.to), (AgentStatus::Lost, AgentStatus::Alive));
        // A failed write is tried again on the next observation.
        l.settled(AgentStatus::Alive, Err(()));
        assert!(l.observe(&seen(220, true, Some("active")), after).is_some());
    }

    #[test]
    fn a_short_outage_is_not_lost() {
        let mut l = Liveness::default();
        l.settled(AgentStatus::Alive, Ok(true));
        let after = Duration::from_secs(60);
        assert_eq!(l.observe(&seen(0, false, None), after), None);
        assert_eq!(l.observe(&seen(30, true, Some("active")), after), None);
        assert_eq!(l.observe(&seen(70, false, None), after), None, "the clock started again");
    }
}
