//! Conversions between domain types and PostgreSQL column types.

use std::io::Write;

use diesel::{
    deserialize::{self, FromSql},
    pg::{Pg, PgValue},
    serialize::{self, IsNull, Output, ToSql},
    sql_types::{Jsonb, Text, Varchar},
};

use super::schema::sql_types::{Agentstatus, EventAction as EventActionSql, EventOutcome as EventOutcomeSql};
use crate::domain::{AgentStatus, EventAction, EventOutcome, KernelStatus, ResourceSlot, SessionStatus, SessionType};

/// Name enums stored in PostgreSQL enum types (`agentstatus`, `event_action`, `event_outcome`): the label is the name.
macro_rules! pg_enum {
    ($($t:ty => $sql:ty),+) => {$(
        impl ToSql<$sql, Pg> for $t {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<$sql, Pg> for $t {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                Ok(std::str::from_utf8(bytes.as_bytes())?.parse()?)
            }
        }
    )+};
}

pg_enum!(AgentStatus => Agentstatus, EventAction => EventActionSql, EventOutcome => EventOutcomeSql);

/// Name-string enums stored in VARCHAR columns (Backend.AI's `StrEnumType`).
macro_rules! varchar_enum {
    ($($t:ty),+) => {$(
        impl ToSql<Varchar, Pg> for $t {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Varchar, Pg> for $t {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                Ok(<String as FromSql<Text, Pg>>::from_sql(bytes)?.parse()?)
            }
        }
    )+};
}

varchar_enum!(KernelStatus, SessionStatus, SessionType);

impl ToSql<Jsonb, Pg> for ResourceSlot {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[1])?;
        serde_json::to_writer(out, &self.to_json_value())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Jsonb, Pg> for ResourceSlot {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let value = <serde_json::Value as FromSql<Jsonb, Pg>>::from_sql(bytes)?;
        Ok(ResourceSlot::from_json_value(&value)?)
    }
}
