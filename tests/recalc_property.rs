#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property-style check: on random data (seeded, so a failure reproduces), the SQL recalculation equals a plain Rust
//! reference built with `ResourceSlot::add_assign`, for every agent and every access key.

mod common;
mod recalc_fixture;

use std::collections::{BTreeMap, BTreeSet};

use agent_supervisor::{
    db::recalc::{RecalcOptions, recalculate_usage},
    domain::{ResourceSlot, SessionStatus},
};
use common::TestDb;
use diesel_async::AsyncPgConnection;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use recalc_fixture::*;
use serde_json::{Map, Value, json};

const AGENT_STATUSES: &[&str] = &["ALIVE", "ALIVE", "ALIVE", "RESTARTING", "LOST", "TERMINATED"];
const SESSION_TYPES: &[&str] = &["INTERACTIVE", "BATCH", "INFERENCE", "SYSTEM"];
const SLOT_NAMES: &[&str] = &["cpu", "mem", "cuda.shares", "cuda.device", "rocm.device", "tpu.device"];

fn random_value(rng: &mut StdRng) -> String {
    match rng.gen_range(0..6) {
        0 => rng.gen_range(0..64u32).to_string(),
        1 => format!("{}.{}", rng.gen_range(0..8u32), rng.gen_range(0..10u32)),
        2 => format!("0.{:02}", rng.gen_range(0..100u32)),
        3 => format!("{}.{:03}", rng.gen_range(0..4u32), rng.gen_range(0..1000u32)),
        4 => (rng.gen_range(1..=32u64) << 29).to_string(),
        _ => format!("{}{:030}", rng.gen_range(1..1000u32), rng.gen_range(0..u64::MAX)),
    }
}

fn random_slots(rng: &mut StdRng) -> Value {
    let mut map = Map::new();
    if rng.gen_bool(0.05) {
        return Value::Object(map);
    }
    for name in SLOT_NAMES {
        let p = if matches!(*name, "cpu" | "mem") { 0.9 } else { 0.3 };
        if rng.gen_bool(p) {
            map.insert((*name).to_owned(), Value::String(random_value(rng)));
        }
    }
    Value::Object(map)
}

struct Expected {
    slots: BTreeMap<String, Value>,
    usage: BTreeMap<String, (i32, i32)>,
    stale_keys: Vec<String>,
}

/// Fills the database with random rows and computes, in Rust, what the recalculation must produce.
async fn populate(conn: &mut AsyncPgConnection, seed: u64) -> Expected {
    let mut rng = StdRng::seed_from_u64(seed);
    scaling_group(conn).await;
    let mut agents = Vec::new();
    for i in 0..rng.gen_range(40..80) {
        let id = format!("i-{seed}-{i:03}");
        let status = *AGENT_STATUSES.choose(&mut rng).unwrap();
        agent(conn, &id, status).await;
        agents.push((id, status));
    }
    let keys: Vec<String> = (0..12).map(|i| format!("AKIA{seed:04}{i:04}")).collect();
    let stale_keys: Vec<String> = (0..3).map(|i| format!("AKIASTALE{i:03}")).collect();
    for k in keys.iter().take(4).chain(&stale_keys) {
        usage_row(conn, k, rng.gen_range(0..20), rng.gen_range(0..20)).await;
    }

    let mut sums: BTreeMap<String, ResourceSlot> = BTreeMap::new();
    let mut compute: BTreeMap<String, BTreeSet<uuid::Uuid>> = BTreeMap::new();
    let mut system: BTreeMap<String, BTreeSet<uuid::Uuid>> = BTreeMap::new();
    for _ in 0..rng.gen_range(100..160) {
        let status = *SessionStatus::ALL.choose(&mut rng).unwrap();
        let session_type = *SESSION_TYPES.choose(&mut rng).unwrap();
        let key = if rng.gen_bool(0.05) { None } else { Some(keys.choose(&mut rng).unwrap().clone()) };
        let sid = session(conn, key.as_deref(), status.as_str(), session_type).await;
        if status.occupies_resources()
            && let Some(k) = &key
        {
            let set = if session_type == "SYSTEM" { &mut system } else { &mut compute };
            set.entry(k.clone()).or_default().insert(sid);
        }
        for _ in 0..rng.gen_range(1..=4) {
            let placed = if rng.gen_bool(0.1) { None } else { Some(agents.choose(&mut rng).unwrap().0.clone()) };
            let slots = random_slots(&mut rng);
            kernel(conn, sid, placed.as_deref(), slots.clone()).await;
            if status.occupies_resources()
                && let Some(a) = placed
            {
                let acc = sums
                    .entry(a)
                    .or_insert_with(|| ResourceSlot::from_json_value(&json!({"cpu": "0", "mem": "0"})).unwrap());
                acc.add_assign(&ResourceSlot::from_json_value(&slots).unwrap());
            }
        }
    }

    let mut expected_slots = BTreeMap::new();
    for (id, status) in &agents {
        let want = match (*status, sums.get(id)) {
            ("ALIVE" | "RESTARTING", Some(sum)) => sum.to_json_value(),
            ("ALIVE", None) => json!({}),
            _ => junk(),
        };
        expected_slots.insert(id.clone(), want);
    }
    let mut usage = BTreeMap::new();
    for k in compute.keys().chain(system.keys()) {
        let n = |m: &BTreeMap<String, BTreeSet<uuid::Uuid>>| m.get(k).map_or(0, |s| s.len() as i32);
        usage.insert(k.clone(), (n(&compute), n(&system)));
    }
    for k in keys.iter().take(4).chain(&stale_keys) {
        usage.entry(k.clone()).or_insert((0, 0));
    }
    Expected { slots: expected_slots, usage, stale_keys }
}

#[tokio::test]
async fn sql_recalculation_matches_a_rust_reference_on_random_data() {
    for seed in [1u64, 2, 3, 2026] {
        let db = TestDb::new().await;
        let mut conn = db.db.conn().await.unwrap();
        let expected = populate(&mut conn, seed).await;

        let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

        let got = all_slots(&mut conn).await;
        for (id, want) in &expected.slots {
            assert_eq!(&got[id], want, "seed {seed}, agent {id}");
        }
        let usage: BTreeMap<String, (i32, i32)> = usage(&mut conn)
            .await
            .into_iter()
            .map(|(k, (c, s, fresh))| {
                assert!(fresh, "seed {seed}: {k} not written");
                (k, (c, s))
            })
            .collect();
        assert_eq!(usage, expected.usage, "seed {seed}");

        let touched = report.agents_updated.len() + report.agents_reset.len() + report.agents_skipped.len();
        assert_eq!(touched, expected.slots.len(), "seed {seed}: every agent is accounted for once");
        assert_eq!(report.access_keys_updated, expected.usage.len());
        assert!(report.access_keys_reset >= expected.stale_keys.len());
    }
}
