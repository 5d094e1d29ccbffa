//! `agent-supervisor keypair create|list|deactivate`: the operator's bootstrap, against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use agent_supervisor::db::keypairs;

fn supervisor(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent-supervisor"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AGENT_SUPERVISOR_DATABASE_URL", db_url)
        .env("AGENT_SUPERVISOR_DATABASE_CONNECT_TIMEOUT_MS", "1000")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn create_prints_the_keys_once_and_stores_the_row() {
    let db = common::TestDb::new().await;

    let out = supervisor(
        &db.url,
        &["keypair", "create", "--superadmin", "--user-id", "ops@example.org", "--description", "bootstrap"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    let (ak, sk) = (value("BACKEND_ACCESS_KEY"), value("BACKEND_SECRET_KEY"));
    assert!(
        ak.starts_with("AKIA") && ak.len() == 20 && ak.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
        "{ak}"
    );
    assert_eq!(sk.len(), 40);
    assert!(text.contains("shown only this once"), "{text}");

    let row = keypairs::find_keypair(&mut db.db.conn().await.unwrap(), &ak).await.unwrap().unwrap();
    assert_eq!(row.secret_key, sk);
    assert!(row.is_active && row.is_superadmin);
    assert_eq!((row.user_id.as_deref(), row.description.as_deref()), (Some("ops@example.org"), Some("bootstrap")));
    assert!(!format!("{row:?}").contains(&sk), "Debug of the row hides the secret");

    // --json; a plain keypair is not superadmin.
    let out = supervisor(&db.url, &["keypair", "create", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let ak2 = doc["access_key"].as_str().unwrap();
    assert_eq!(doc["secret_key"].as_str().unwrap().len(), 40);
    assert_eq!(doc["is_superadmin"], false);
    let row2 = keypairs::find_keypair(&mut db.db.conn().await.unwrap(), ak2).await.unwrap().unwrap();
    assert!(row2.is_active && !row2.is_superadmin);
    assert_eq!(row2.secret_key, doc["secret_key"].as_str().unwrap());

    // list shows both, never a secret.
    for args in [&["keypair", "list"][..], &["keypair", "list", "--json"][..]] {
        let out = supervisor(&db.url, args);
        assert!(out.status.success(), "{out:?}");
        let listing = stdout(&out);
        assert!(listing.contains(&ak) && listing.contains(ak2), "{listing}");
        assert!(!listing.contains(&sk) && !listing.contains(doc["secret_key"].as_str().unwrap()), "{listing}");
    }

    // deactivate.
    let out = supervisor(&db.url, &["keypair", "deactivate", ak2]);
    assert!(out.status.success(), "{out:?}");
    assert!(!keypairs::find_keypair(&mut db.db.conn().await.unwrap(), ak2).await.unwrap().unwrap().is_active);
    let out = supervisor(&db.url, &["keypair", "deactivate", "AKIANOSUCHKEY0000000"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no keypair with access key AKIANOSUCHKEY0000000"),
        "{out:?}"
    );
}

#[test]
fn create_fails_clearly_when_the_database_is_unreachable() {
    let port = common::procs::free_port();
    let out =
        supervisor(&format!("postgres://postgres@127.0.0.1:{port}/nothing"), &["keypair", "create", "--superadmin"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no key is printed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the database"), "{err}");
}
