//! Backend.AI's own database for tests of `database.mode = "backend.ai"`: a template made once per content (the
//! 23.9.10 schema by Backend.AI's own code, `scripts/backendai-schema create`; the users, keypairs, domain, group
//! and scaling group of `tests/backendai/fixtures.sql`; the daemon's own schema), then one clone per test. Rows are
//! seeded with every column Backend.AI's schema requires.

use std::{hash::Hasher, process::Command};

use super::procs::repo_root;

/// The fixtures' superadmin (`admin@lablup.com`), user (`user@lablup.com`) and inactive user.
pub const ADMIN: (&str, &str) = ("AKIAIOSFODNN7EXAMPLE", "jG4pUUrz9Bfdjcc7nptdHpkOa6sGOL7iGqx1619a");
pub const USER: (&str, &str) = ("AKIANABBDUSEREXAMPLE", "1U6zB1akZH0r4ChaC08KEKpWvs7EGHmD6ZODdNit");
pub const INACTIVE_USER: (&str, &str) = ("AKIAINACTIVEUSEREXMP", "66tGij53QTCZddBDIIWTL8rhBbcoEyNgM6u6Soqx");
/// The fixtures' project (group) and the user who owns the seeded sessions.
pub const GROUP_ID: &str = "2de2b969-1d04-48a6-af16-0bc8adb3c831";
pub const USER_UUID: &str = "dfa9da54-4b28-432f-be29-c0d680c7a412";

/// The template's name for the current schema script, fixtures and own migrations.
pub fn template_name() -> String {
    let root = repo_root();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in ["scripts/backendai-schema", "tests/backendai/fixtures.sql"] {
        h.write(&std::fs::read(root.join(f)).unwrap_or_default());
    }
    let mut own = super::walk(&root.join("migrations/own"));
    own.sort();
    for f in own {
        h.write(f.to_string_lossy().as_bytes());
        h.write(&std::fs::read(&f).unwrap_or_default());
    }
    format!("as_ba_tpl_{:016x}", h.finish())
}

/// Builds Backend.AI's schema in the empty database at `url` with Backend.AI's own code.
pub fn create_schema(url: &str) {
    let out = Command::new(repo_root().join("scripts/backendai-schema"))
        .args(["create", url])
        .output()
        .expect("run scripts/backendai-schema");
    assert!(
        out.status.success(),
        "scripts/backendai-schema create failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `alembic check` of Backend.AI's models against the database at `url`: its output, and whether it found no
/// difference.
pub fn alembic_check(url: &str) -> (bool, String) {
    let out = Command::new(repo_root().join("scripts/backendai-schema"))
        .args(["check", url])
        .output()
        .expect("run scripts/backendai-schema");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The fixtures, as SQL.
pub fn fixtures() -> String {
    std::fs::read_to_string(repo_root().join("tests/backendai/fixtures.sql")).unwrap()
}

/// The virtualenv's python (made on first use by the schema script).
pub fn python() -> std::path::PathBuf {
    let out = Command::new(repo_root().join("scripts/backendai-schema")).arg("python").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// An ALIVE agent as Backend.AI's heartbeat writes one.
pub fn agent_sql(id: &str, status: &str, addr: &str, available: &str, occupied: &str) -> String {
    format!(
        "INSERT INTO agents (id, status, status_changed, region, scaling_group, schedulable, available_slots, \
         occupied_slots, addr, public_host, first_contact, version, architecture, compute_plugins, \
         auto_terminate_abusing_kernel) \
         VALUES ('{id}', '{status}', now(), 'local', 'default', true, '{available}', '{occupied}', '{addr}', \
         '127.0.0.1', now(), '23.09.10', 'x86_64', '{{}}', false)"
    )
}

/// A session of the fixtures' user in `status`, named after its id (names must be unique among live sessions).
pub fn session_sql(id: &uuid::Uuid, access_key: &str, status: &str) -> String {
    format!(
        "INSERT INTO sessions (id, name, session_type, cluster_mode, cluster_size, scaling_group_name, domain_name, \
         group_id, user_uuid, access_key, occupying_slots, requested_slots, use_host_network, status, result) \
         VALUES ('{id}', 's-{short}', 'INTERACTIVE', 'single-node', 1, 'default', 'default', '{GROUP_ID}', \
         '{USER_UUID}', '{access_key}', '{{}}', '{{}}', false, '{status}', 'UNDEFINED')",
        short = &id.simple().to_string()[..12],
    )
}

/// A kernel of `session` (`role` COMPUTE or SYSTEM) on `agent`; the session's first is its cluster's `main`.
#[allow(clippy::too_many_arguments)]
pub fn kernel_sql(
    id: &uuid::Uuid,
    session: &uuid::Uuid,
    access_key: &str,
    agent: Option<&str>,
    agent_addr: &str,
    status: &str,
    role: &str,
    slots: &str,
) -> String {
    let agent = agent.map_or("NULL".to_owned(), |a| format!("'{a}'"));
    format!(
        "INSERT INTO kernels (id, session_id, session_name, session_type, cluster_mode, cluster_size, cluster_role, \
         cluster_idx, local_rank, cluster_hostname, scaling_group, agent, agent_addr, domain_name, group_id, \
         user_uuid, access_key, image, architecture, occupied_slots, requested_slots, occupied_shares, \
         repl_in_port, repl_out_port, stdin_port, stdout_port, use_host_network, status, role, result) \
         SELECT '{id}', '{session}', 's-{short}', 'INTERACTIVE', 'single-node', 1, \
         CASE WHEN EXISTS (SELECT 1 FROM kernels WHERE session_id = '{session}') THEN 'sub' ELSE 'main' END, \
         1, 0, 'main1', 'default', {agent}, '{agent_addr}', 'default', '{GROUP_ID}', '{USER_UUID}', \
         '{access_key}', 'cr.backend.ai/stable/python:3.9-ubuntu20.04', 'x86_64', '{slots}', '{slots}', '{{}}', \
         30000, 30001, 30002, 30003, false, '{status}', '{role}', 'UNDEFINED'",
        short = &session.simple().to_string()[..12],
    )
}

/// A user with a keypair of its own (`role` superadmin or user, `status` active, inactive, deleted), as Backend.AI's
/// CreateUser would leave them: the keypair is the user's main one.
pub fn user_with_keypair_sql(access_key: &str, secret_key: &str, role: &str, status: &str) -> String {
    let uuid = uuid::Uuid::new_v4();
    let email = format!("{}@test.example", access_key.to_ascii_lowercase());
    format!(
        "INSERT INTO users (uuid, username, email, password, need_password_change, status, domain_name, role, \
         resource_policy, sudo_session_enabled, totp_activated) \
         VALUES ('{uuid}', '{access_key}', '{email}', 'x', false, '{status}', 'default', '{role}', 'default', \
         false, false); \
         INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, rate_limit, num_queries, \
         \"user\", resource_policy, dotfiles, bootstrap_script) \
         VALUES ('{email}', '{access_key}', '{secret_key}', true, {admin}, 30000, 0, '{uuid}', 'default', '\\x90', ''); \
         UPDATE users SET main_access_key = '{access_key}' WHERE uuid = '{uuid}'; \
         INSERT INTO association_groups_users (user_id, group_id) VALUES ('{uuid}', '{GROUP_ID}')",
        admin = role == "superadmin",
    )
}
