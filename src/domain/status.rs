/// A status name that is not part of the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

/// Declares a closed vocabulary stored by name: `ALL`, `as_str`, `FromStr`, `Display` and serde by the name.
macro_rules! name_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::domain::UnknownVariant { kind: $kind, value: s.to_owned() }),
                }
            }
        }

        /// The OpenAPI schema: a string, one of the names.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::ALL.iter().map(|s| s.as_str())))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use name_enum;

name_enum!(
    /// `agents.status` (the PostgreSQL enum `agentstatus`).
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = crate::db::schema::sql_types::Agentstatus)]
    AgentStatus, "agent status" {
        Alive => "ALIVE",
        Lost => "LOST",
        Restarting => "RESTARTING",
        Terminated => "TERMINATED",
    }
);

impl AgentStatus {
    /// Agents that are not responding; recalculation leaves them untouched.
    pub fn is_unavailable(self) -> bool {
        matches!(self, Self::Lost | Self::Terminated)
    }
}

name_enum!(
    /// `kernels.status`.
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Varchar)]
    KernelStatus, "kernel status" {
        Pending => "PENDING",
        Scheduled => "SCHEDULED",
        Preparing => "PREPARING",
        Building => "BUILDING",
        Pulling => "PULLING",
        Prepared => "PREPARED",
        Creating => "CREATING",
        Running => "RUNNING",
        Restarting => "RESTARTING",
        Resizing => "RESIZING",
        Suspended => "SUSPENDED",
        Terminating => "TERMINATING",
        Terminated => "TERMINATED",
        Error => "ERROR",
        Cancelled => "CANCELLED",
    }
);

impl KernelStatus {
    /// Backend.AI's `AGENT_RESOURCE_OCCUPYING_KERNEL_STATUSES`: every status but PENDING, TERMINATED, CANCELLED.
    pub fn occupies_agent_resources(self) -> bool {
        !matches!(self, Self::Pending | Self::Terminated | Self::Cancelled)
    }

    pub fn occupying() -> impl Iterator<Item = KernelStatus> {
        Self::ALL.iter().copied().filter(|s| s.occupies_agent_resources())
    }
}

name_enum!(
    /// `sessions.status`.
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Varchar)]
    SessionStatus, "session status" {
        Pending => "PENDING",
        Scheduled => "SCHEDULED",
        Preparing => "PREPARING",
        Pulling => "PULLING",
        Prepared => "PREPARED",
        Creating => "CREATING",
        Running => "RUNNING",
        Restarting => "RESTARTING",
        RunningDegraded => "RUNNING_DEGRADED",
        Terminating => "TERMINATING",
        Terminated => "TERMINATED",
        Error => "ERROR",
        Cancelled => "CANCELLED",
    }
);

impl SessionStatus {
    /// Backend.AI's agent- and user-resource-occupying session statuses (the same set): all but
    /// PENDING, TERMINATED, CANCELLED. ERROR counts.
    pub fn occupies_resources(self) -> bool {
        !matches!(self, Self::Pending | Self::Terminated | Self::Cancelled)
    }
}

name_enum!(
    /// `sessions.session_type` / `kernels.session_type`.
    #[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
    #[diesel(sql_type = diesel::sql_types::Varchar)]
    SessionType, "session type" {
        Interactive => "INTERACTIVE",
        Batch => "BATCH",
        Inference => "INFERENCE",
        System => "SYSTEM",
    }
);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in KernelStatus::ALL {
            assert_eq!(s.as_str().parse::<KernelStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>().unwrap(), *s);
        }
        assert_eq!("running".parse::<AgentStatus>().unwrap_err().to_string(), "unknown agent status \"running\"");
    }

    #[test]
    fn occupying_sets_match_backend_ai() {
        let not: Vec<_> = KernelStatus::ALL.iter().filter(|s| !s.occupies_agent_resources()).collect();
        assert_eq!(not, [&KernelStatus::Pending, &KernelStatus::Terminated, &KernelStatus::Cancelled]);
        assert!(SessionStatus::Error.occupies_resources());
        assert!(SessionStatus::Terminating.occupies_resources());
        assert!(!SessionStatus::Cancelled.occupies_resources());
        assert!(AgentStatus::Lost.is_unavailable() && AgentStatus::Terminated.is_unavailable());
        assert!(!AgentStatus::Restarting.is_unavailable());
    }
}
