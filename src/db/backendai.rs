//! Backend.AI mode's start-up check: the database must be Backend.AI's (an alembic revision), with every table,
//! column, type and enum label the daemon reads or writes. The daemon refuses to start with a message naming each
//! missing or different piece, rather than failing later on a query.

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{DbError, query_error};

/// The alembic head of `backend.ai-manager` 23.9.10, the release this mode is built and tested against.
pub const TESTED_REVISION: &str = "75ea2b136830";

/// A column the daemon uses: table, column, and the type it must have (`udt_name`: `jsonb`, `uuid`, an enum's
/// name; `varchar`/`text` both pass as `text`).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("agents", "id", "text"),
    ("agents", "status", "agentstatus"),
    ("agents", "status_changed", "timestamptz"),
    ("agents", "region", "text"),
    ("agents", "scaling_group", "text"),
    ("agents", "schedulable", "bool"),
    ("agents", "available_slots", "jsonb"),
    ("agents", "occupied_slots", "jsonb"),
    ("agents", "addr", "text"),
    ("agents", "public_host", "text"),
    ("agents", "public_key", "text"),
    ("agents", "first_contact", "timestamptz"),
    ("agents", "lost_at", "timestamptz"),
    ("agents", "version", "text"),
    ("agents", "architecture", "text"),
    ("agents", "compute_plugins", "jsonb"),
    ("agents", "auto_terminate_abusing_kernel", "bool"),
    ("kernels", "id", "uuid"),
    ("kernels", "session_id", "uuid"),
    ("kernels", "agent", "text"),
    ("kernels", "agent_addr", "text"),
    ("kernels", "status", "kernelstatus"),
    ("kernels", "role", "kernelrole"),
    ("kernels", "occupied_slots", "jsonb"),
    ("sessions", "id", "uuid"),
    ("sessions", "status", "sessionstatus"),
    ("sessions", "access_key", "text"),
    ("keypairs", "access_key", "text"),
    ("keypairs", "secret_key", "text"),
    ("keypairs", "is_active", "bool"),
    ("keypairs", "user_id", "text"),
    ("keypairs", "user", "uuid"),
    ("users", "uuid", "uuid"),
    ("users", "email", "text"),
    ("users", "status", "userstatus"),
    ("users", "role", "userrole"),
    ("scaling_groups", "name", "text"),
];

/// Enum labels the daemon's SQL names.
const LABELS: &[(&str, &[&str])] = &[
    ("agentstatus", &["ALIVE", "LOST", "RESTARTING", "TERMINATED"]),
    ("kernelstatus", &["PENDING", "RUNNING", "TERMINATING", "TERMINATED", "CANCELLED"]),
    ("sessionstatus", &["PENDING", "RUNNING", "TERMINATING", "TERMINATED", "CANCELLED"]),
    ("kernelrole", &["SYSTEM", "COMPUTE"]),
    ("userstatus", &["active"]),
    ("userrole", &["superadmin"]),
];

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAiSchema {
    /// `alembic_version.version_num`.
    pub revision: String,
}

/// Why the database cannot be used in Backend.AI mode: every missing or different piece, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this is not a Backend.AI database the daemon can run next to (database.mode = \"backend.ai\"):\n{}", .0.join("\n"))]
pub struct SchemaMismatch(pub Vec<String>);

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
}

#[derive(QueryableByName)]
struct Label {
    #[diesel(sql_type = Text)]
    typname: String,
    #[diesel(sql_type = Text)]
    enumlabel: String,
}

#[derive(QueryableByName)]
struct Revision {
    #[diesel(sql_type = Text)]
    version_num: String,
}

/// Checks the database `conn` is connected to. `Err(Ok(mismatch))` is a database that is not usable;
/// `Err(Err(db))` a failure to ask.
pub async fn check(conn: &mut AsyncPgConnection) -> Result<BackendAiSchema, Result<SchemaMismatch, DbError>> {
    let mut missing = Vec::new();
    let revision = match diesel::sql_query("SELECT version_num::text AS version_num FROM public.alembic_version")
        .load::<Revision>(conn)
        .await
    {
        Ok(rows) => match rows.into_iter().next() {
            Some(r) => r.version_num,
            None => {
                missing.push("alembic_version holds no revision (Backend.AI's schema was never stamped)".to_owned());
                String::new()
            }
        },
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("does not exist") => {
            missing.push("no table public.alembic_version: Backend.AI's migrations never ran here".to_owned());
            String::new()
        }
        Err(e) => return Err(Err(query_error(e))),
    };

    let found = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, udt_name::text AS udt_name \
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .load::<Column>(conn)
    .await
    .map_err(|e| Err(query_error(e)))?;
    let tables: std::collections::BTreeSet<&str> = found.iter().map(|c| c.table_name.as_str()).collect();
    let mut reported_tables = std::collections::BTreeSet::new();
    for (table, column, want) in COLUMNS {
        if !tables.contains(table) {
            if reported_tables.insert(*table) {
                missing.push(format!("missing table public.{table}"));
            }
            continue;
        }
        match found.iter().find(|c| c.table_name == *table && c.column_name == *column) {
            None => missing.push(format!("missing column {table}.{column} ({want})")),
            Some(c) if normalise(&c.udt_name) != *want => {
                missing.push(format!("column {table}.{column} is {}, expected {want}", c.udt_name))
            }
            Some(_) => {}
        }
    }

    let labels = diesel::sql_query(
        "SELECT t.typname::text AS typname, e.enumlabel::text AS enumlabel \
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname = 'public'",
    )
    .load::<Label>(conn)
    .await
    .map_err(|e| Err(query_error(e)))?;
    for (typ, wanted) in LABELS {
        let have: Vec<&str> = labels.iter().filter(|l| l.typname == *typ).map(|l| l.enumlabel.as_str()).collect();
        if have.is_empty() {
            // Already reported as a column of another type, or the type is missing altogether.
            if !missing.iter().any(|m| m.contains(typ)) {
                missing.push(format!("missing enum type public.{typ}"));
            }
            continue;
        }
        for w in *wanted {
            if !have.contains(w) {
                missing.push(format!("enum {typ} has no label {w}"));
            }
        }
    }

    if missing.is_empty() { Ok(BackendAiSchema { revision }) } else { Err(Ok(SchemaMismatch(missing))) }
}

/// `varchar`, `bpchar` and `text` are all text to the daemon.
fn normalise(udt: &str) -> &str {
    match udt {
        "varchar" | "bpchar" | "text" => "text",
        other => other,
    }
}
