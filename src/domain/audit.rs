//! The audit trail's vocabulary (`agent_events.action` and `.outcome`, PostgreSQL enums `event_action` and
//! `event_outcome`): what was done to an agent, and how it ended.

use super::status::name_enum;

name_enum!(
    /// What an audit event records.
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = crate::db::schema::sql_types::EventAction)]
    EventAction, "event action" {
        /// A watcher command.
        Start => "start",
        Stop => "stop",
        Restart => "restart",
        /// Sync Agent Registry over the agent's RPC.
        Sync => "sync",
        /// A change of what the actor saw of its watcher (reachable ↔ unreachable, agent status).
        Observe => "observe",
        /// Standalone mode's registry: an agent registered (or registered again), changed, removed.
        Register => "register",
        Update => "update",
        Deregister => "deregister",
        /// An ALIVE ↔ LOST transition decided from the watcher probe.
        Liveness => "liveness",
    }
);

name_enum!(
    /// How an audited event ended. A command's row is written `running` when it starts and gets its final outcome
    /// when it ends; `observe` rows are written `observed` at once.
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = crate::db::schema::sql_types::EventOutcome)]
    EventOutcome, "event outcome" {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        /// A pre-check said no (already running or stopped, kernels running); nothing was sent.
        Rejected => "rejected",
        /// The watcher did not answer within the command timeout; it may still finish.
        Unknown => "unknown",
        /// The daemon died while it ran (marked at the next start).
        Interrupted => "interrupted",
        Observed => "observed",
    }
);

impl EventAction {
    /// The audit action of a watcher command.
    pub fn of_command(command: agent_supervisor_protocol::watcher::Command) -> Self {
        use agent_supervisor_protocol::watcher::Command;
        match command {
            Command::Start => Self::Start,
            Command::Stop => Self::Stop,
            // The daemon never sends a soft reset; were it to, it would be a restart in place.
            Command::Restart | Command::SoftReset => Self::Restart,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_in_lower_case() {
        for a in EventAction::ALL {
            assert_eq!(a.as_str().parse::<EventAction>().unwrap(), *a);
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(a.as_str()));
        }
        for o in EventOutcome::ALL {
            assert_eq!(o.as_str().parse::<EventOutcome>().unwrap(), *o);
        }
        assert!("queued".parse::<EventOutcome>().is_err());
    }
}
