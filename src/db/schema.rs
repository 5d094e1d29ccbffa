// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "agentstatus"))]
    pub struct Agentstatus;

    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "event_action"))]
    pub struct EventAction;

    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "event_outcome"))]
    pub struct EventOutcome;
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::EventAction;
    use super::sql_types::EventOutcome;

    agent_events (id) {
        id -> Int8,
        #[max_length = 64]
        agent_id -> Varchar,
        action -> EventAction,
        #[max_length = 256]
        requester -> Varchar,
        requested_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        outcome -> EventOutcome,
        http_status -> Nullable<Int2>,
        detail -> Jsonb,
        epoch -> Nullable<Int8>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Agentstatus;

    agents (id) {
        #[max_length = 64]
        id -> Varchar,
        status -> Agentstatus,
        status_changed -> Nullable<Timestamptz>,
        #[max_length = 64]
        region -> Varchar,
        #[max_length = 64]
        scaling_group -> Varchar,
        schedulable -> Bool,
        available_slots -> Jsonb,
        occupied_slots -> Jsonb,
        #[max_length = 128]
        addr -> Varchar,
        #[max_length = 256]
        public_host -> Nullable<Varchar>,
        #[max_length = 40]
        public_key -> Nullable<Varchar>,
        first_contact -> Nullable<Timestamptz>,
        lost_at -> Nullable<Timestamptz>,
        #[max_length = 64]
        version -> Varchar,
        #[max_length = 32]
        architecture -> Varchar,
        compute_plugins -> Jsonb,
        auto_terminate_abusing_kernel -> Bool,
    }
}

diesel::table! {
    ha_leader (singleton) {
        singleton -> Bool,
        epoch -> Int8,
        replica_id -> Text,
        url -> Text,
        since -> Timestamptz,
    }
}

diesel::table! {
    kernels (id) {
        id -> Uuid,
        session_id -> Uuid,
        #[max_length = 64]
        session_type -> Varchar,
        #[max_length = 16]
        cluster_role -> Varchar,
        #[max_length = 64]
        scaling_group -> Nullable<Varchar>,
        #[max_length = 64]
        agent -> Nullable<Varchar>,
        #[max_length = 128]
        agent_addr -> Nullable<Varchar>,
        #[max_length = 20]
        access_key -> Nullable<Varchar>,
        #[max_length = 512]
        image -> Nullable<Varchar>,
        #[max_length = 32]
        architecture -> Varchar,
        #[max_length = 64]
        container_id -> Nullable<Varchar>,
        occupied_slots -> Jsonb,
        requested_slots -> Jsonb,
        #[max_length = 64]
        status -> Varchar,
        status_changed -> Nullable<Timestamptz>,
        #[max_length = 64]
        status_info -> Nullable<Varchar>,
        created_at -> Timestamptz,
        terminated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    keypair_resource_usage (access_key) {
        #[max_length = 20]
        access_key -> Varchar,
        concurrency_used -> Int4,
        sftp_concurrency_used -> Int4,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    keypairs (access_key) {
        #[max_length = 20]
        access_key -> Varchar,
        #[max_length = 64]
        secret_key -> Varchar,
        #[max_length = 256]
        user_id -> Nullable<Varchar>,
        is_active -> Bool,
        is_superadmin -> Bool,
        #[max_length = 512]
        description -> Nullable<Varchar>,
        created_at -> Timestamptz,
        last_used -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    scaling_groups (name) {
        #[max_length = 64]
        name -> Varchar,
        #[max_length = 512]
        description -> Nullable<Varchar>,
        is_active -> Bool,
        created_at -> Timestamptz,
        #[max_length = 64]
        driver -> Varchar,
        #[max_length = 64]
        scheduler -> Varchar,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        #[max_length = 64]
        name -> Nullable<Varchar>,
        #[max_length = 64]
        session_type -> Varchar,
        #[max_length = 20]
        access_key -> Nullable<Varchar>,
        #[max_length = 64]
        status -> Varchar,
        #[max_length = 64]
        scaling_group_name -> Nullable<Varchar>,
        occupying_slots -> Jsonb,
        requested_slots -> Jsonb,
        agent_ids -> Nullable<Array<Nullable<Text>>>,
        created_at -> Timestamptz,
        status_changed -> Nullable<Timestamptz>,
        terminated_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(agents -> scaling_groups (scaling_group));
diesel::joinable!(kernels -> agents (agent));
diesel::joinable!(kernels -> sessions (session_id));

diesel::allow_tables_to_appear_in_same_query!(
    agent_events,
    agents,
    ha_leader,
    kernels,
    keypair_resource_usage,
    keypairs,
    scaling_groups,
    sessions,
);
