-- Seed for a Backend.AI 23.09 database (the schema of backend.ai-manager==23.9.10, as made by
-- `scripts/backendai-schema create URL`). Plain statements, not idempotent: load once into a fresh schema, e.g.
--   psql -v ON_ERROR_STOP=1 -q -f tests/backendai/fixtures.sql "$URL"
-- Not for a database built by running 23.9.10's alembic migrations one by one instead: those insert the domain,
-- group, resource policies and scaling group "default" themselves (with a random group id), so the first INSERT
-- here would fail on pk_domains.
--
-- What it makes:
--   domain "default"; keypair, user and project resource policies "default"; project (group) "default" in domain
--   "default"; scaling group "default" (allowed to domain "default");
--   users, all in group "default":
--     admin@lablup.com     role superadmin, status active    keypair AKIAIOSFODNN7EXAMPLE (active, is_admin)
--     user@lablup.com      role user,       status active    keypair AKIANABBDUSEREXAMPLE (active)
--     inactive@lablup.com  role user,       status inactive  keypair AKIAINACTIVEUSEREXMP (keypair still active)
--   Secret keys are below; passwords (bcrypt, 12 rounds) are admin-password-23.09, user-password-23.09,
--   inactive-password-23.09.
--
-- Notes on 23.9.10's own rules that this follows:
--   * keypairs."user" -> users.uuid is NOT NULL and users.main_access_key -> keypairs.access_key, so the users are
--     inserted first with main_access_key NULL, then the keypairs, then main_access_key is set. The manager's
--     signed-request check finds the user row through users.main_access_key: a keypair that is no user's main
--     access key authenticates to nobody.
--   * is_admin on the keypair is what 23.9.10 uses as "is_admin"; "is_superadmin" is users.role = 'superadmin'.
--   * The inactive user's keypair is left ACTIVE on purpose, so that a check of users.status is what has to refuse
--     it. 23.9.10's own auth middleware does not look at users.status (only keypairs.is_active), so Backend.AI
--     itself would accept this keypair; its CreateUser mutation would have made the keypair inactive instead.
--   * Enum columns hold names (agentstatus, kernelstatus, ...) except userrole/userstatus, which hold the values
--     ('superadmin', 'active', ...). JSON resource slots hold decimal strings.

BEGIN;

INSERT INTO domains (name, description, is_active, total_resource_slots, allowed_vfolder_hosts,
                     allowed_docker_registries, integration_id, dotfiles)
VALUES ('default', 'The default domain', true, '{}', '{}', '{cr.backend.ai}', NULL, '\x90');

INSERT INTO keypair_resource_policies (name, default_for_unspecified, total_resource_slots, max_session_lifetime,
                                       max_concurrent_sessions, max_concurrent_sftp_sessions,
                                       max_containers_per_session, max_vfolder_count, max_vfolder_size, idle_timeout,
                                       allowed_vfolder_hosts)
VALUES ('default', 'UNLIMITED', '{}', 0, 30, 1, 1, 10, 0, 3600, '{}');

INSERT INTO user_resource_policies (name, max_vfolder_size, max_session_count_per_model_session)
VALUES ('default', 0, 10);

INSERT INTO project_resource_policies (name, max_vfolder_size)
VALUES ('default', 0);

INSERT INTO groups (id, name, description, is_active, domain_name, total_resource_slots, allowed_vfolder_hosts,
                    integration_id, dotfiles, resource_policy)
VALUES ('2de2b969-1d04-48a6-af16-0bc8adb3c831', 'default', 'The default project', true, 'default', '{}', '{}',
        NULL, '\x90', 'default');

INSERT INTO scaling_groups (name, description, is_active, is_public, wsproxy_addr, wsproxy_api_token, driver,
                            driver_opts, scheduler, scheduler_opts, use_host_network)
VALUES ('default', 'The default scaling group', true, true, NULL, NULL, 'static', '{}', 'fifo',
        '{"allowed_session_types": ["interactive", "batch", "inference"], "pending_timeout": 0, "config": {},
          "agent_selection_strategy": "dispersed", "roundrobin": false}',
        false);

INSERT INTO sgroups_for_domains (scaling_group, domain)
VALUES ('default', 'default');

INSERT INTO users (uuid, username, email, password, need_password_change, full_name, description, status,
                   status_info, domain_name, role, resource_policy, sudo_session_enabled, totp_activated,
                   main_access_key)
VALUES
  ('f38dea23-50fa-42a0-b5ae-338f5f4693f4', 'admin', 'admin@lablup.com',
   '$2b$12$J64f9KhwnELbRjSV/0P4d.NAT3o/kLplvd4rWhh2XVvFiE5U49dvy', false, 'Admin Lablup', 'The superadmin',
   'active', 'admin-requested', 'default', 'superadmin', 'default', false, false, NULL),
  ('dfa9da54-4b28-432f-be29-c0d680c7a412', 'user', 'user@lablup.com',
   '$2b$12$Z9tzBExDSJVsYDC/cSVVke/hFgbrtRJcppCzw/39qLFtcb3xha3.K', false, 'User Lablup', 'A normal user',
   'active', 'admin-requested', 'default', 'user', 'default', false, false, NULL),
  ('8e32dd28-d319-4e3b-8851-a0b5ae3fa6a8', 'inactive', 'inactive@lablup.com',
   '$2b$12$vVmWpuXE6QDyoB8EAlpEsOURM8IS5qcAzgLYJQijtCzCXL5vA4ZOC', false, 'Inactive Lablup', 'A deactivated user',
   'inactive', 'admin-requested', 'default', 'user', 'default', false, false, NULL);

INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, rate_limit, num_queries, "user",
                      resource_policy, dotfiles, bootstrap_script)
VALUES
  ('admin@lablup.com', 'AKIAIOSFODNN7EXAMPLE', 'jG4pUUrz9Bfdjcc7nptdHpkOa6sGOL7iGqx1619a', true, true, 30000, 0,
   'f38dea23-50fa-42a0-b5ae-338f5f4693f4', 'default', '\x90', ''),
  ('user@lablup.com', 'AKIANABBDUSEREXAMPLE', '1U6zB1akZH0r4ChaC08KEKpWvs7EGHmD6ZODdNit', true, false, 30000, 0,
   'dfa9da54-4b28-432f-be29-c0d680c7a412', 'default', '\x90', ''),
  ('inactive@lablup.com', 'AKIAINACTIVEUSEREXMP', '66tGij53QTCZddBDIIWTL8rhBbcoEyNgM6u6Soqx', true, false, 30000, 0,
   '8e32dd28-d319-4e3b-8851-a0b5ae3fa6a8', 'default', '\x90', '');

UPDATE users SET main_access_key = 'AKIAIOSFODNN7EXAMPLE' WHERE uuid = 'f38dea23-50fa-42a0-b5ae-338f5f4693f4';
UPDATE users SET main_access_key = 'AKIANABBDUSEREXAMPLE' WHERE uuid = 'dfa9da54-4b28-432f-be29-c0d680c7a412';
UPDATE users SET main_access_key = 'AKIAINACTIVEUSEREXMP' WHERE uuid = '8e32dd28-d319-4e3b-8851-a0b5ae3fa6a8';

INSERT INTO association_groups_users (user_id, group_id)
VALUES
  ('f38dea23-50fa-42a0-b5ae-338f5f4693f4', '2de2b969-1d04-48a6-af16-0bc8adb3c831'),
  ('dfa9da54-4b28-432f-be29-c0d680c7a412', '2de2b969-1d04-48a6-af16-0bc8adb3c831'),
  ('8e32dd28-d319-4e3b-8851-a0b5ae3fa6a8', '2de2b969-1d04-48a6-af16-0bc8adb3c831');

COMMIT;
