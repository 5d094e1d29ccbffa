//! Admin API authentication end to end: a real daemon, requests signed (or not, or badly) the way the official
//! Backend.AI client signs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use common::supervisor::{Creds, TestApp, send};
use serde_json::{Value, json};

fn assert_auth_failed(status: u16, body: &Value, msg: &str) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_code"], "auth_failed", "{body}");
    assert_eq!(body["title"], "Credential/signature mismatch.", "{body}");
    assert!(body["type"].is_string(), "{body}");
    let got = body["msg"].as_str().unwrap();
    assert!(got.contains(msg), "msg {got:?} should contain {msg:?}");
}

#[actix_rt::test]
async fn open_routes_need_no_signature_and_signed_routes_do() {
    let app = TestApp::spawn().await;
    for path in ["/", "/healthz"] {
        let (status, _) = app.request("GET", path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
    // The announcement answers signed or not (the 23.09 manager does not require auth there).
    let (status, body) = app.request("GET", "/manager/announcement", None, None).await;
    assert_eq!((status, &body), (200, &json!({"enabled": false, "message": ""})));
    let (status, body) = app.get("/manager/announcement").await;
    assert_eq!((status, &body), (200, &json!({"enabled": false, "message": ""})));

    let (status, body) = app.get("/v1/whoami").await;
    assert_eq!((status, &body), (200, &json!({"access_key": app.admin.access_key, "is_superadmin": true})));

    for (method, path) in [
        ("GET", "/v1/whoami"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/agents/i-x/watcher"),
        ("GET", "/v1/agents/i-x/events"),
        ("POST", "/v1/agents/i-x/start"),
        ("POST", "/v1/agents/i-x/stop"),
        ("POST", "/v1/agents/i-x/restart"),
        ("GET", "/resource/watcher?agent_id=i-x"),
        ("POST", "/resource/watcher/agent/start"),
        ("POST", "/resource/watcher/agent/stop"),
        ("POST", "/resource/watcher/agent/restart"),
    ] {
        let body = if method == "POST" { Some(json!({"agent_id": "i-x"})) } else { None };
        let (status, body) = app.request(method, path, body, None).await;
        assert_auth_failed(status, &body, "Authorization header required");
    }
}

#[actix_rt::test]
async fn malformed_or_incomplete_headers() {
    let app = TestApp::spawn().await;
    let path = "/v1/whoami";

    for bad in [
        "Bearer abc",
        "BackendAI",
        "BackendAI signMethod=HMAC-SHA256",
        "BackendAI signMethod=HMAC-SHA256, credential=no-colon",
        "BackendAI signMethod=HMAC-MD5, credential=AKIAIOSFODNN7EXAMPLE:00",
        "BackendAI signMethod=HMAC-SHA256, credential=:deadbeef",
    ] {
        let req = app.signed("GET", path, "text/plain", &app.admin).insert_header(("Authorization", bad));
        let (status, body) = send(req, None).await;
        assert_eq!((status, body["error_code"].as_str()), (401, Some("auth_failed")), "{bad}: {body}");
    }

    // Missing X-BackendAI-Version is a bad request naming the header.
    let mut req = app.signed("GET", path, "text/plain", &app.admin);
    req.headers_mut().remove("x-backendai-version");
    let (status, body) = send(req, None).await;
    assert_eq!(
        (status, body["error_code"].as_str(), body["field"].as_str()),
        (400, Some("invalid_request"), Some("X-BackendAI-Version")),
        "{body}"
    );

    // Missing Date: 401. (awc adds an HTTP-date when none is set, so these go out raw.)
    let signed = app.signed("GET", path, "text/plain", &app.admin);
    let header = |name: &str| signed.headers().get(name).unwrap().to_str().unwrap().to_owned();
    let (auth, date, version) = (header("authorization"), header("date"), header("x-backendai-version"));
    let (status, body) = raw(&app, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nX-BackendAI-Version: {version}\r\nAuthorization: {auth}\r\n", app.host)).await;
    assert_auth_failed(status, &body, "Date/time sync error");

    // X-BackendAI-Date is accepted in place of Date.
    let (status, body) = raw(&app, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nX-BackendAI-Version: {version}\r\nX-BackendAI-Date: {date}\r\nAuthorization: {auth}\r\n", app.host)).await;
    assert_eq!(status, 200, "{body}");
    // The same request with an HTTP-date (RFC 7231) is refused: Backend.AI dates are ISO-8601.
    let (status, body) = raw(&app, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nX-BackendAI-Version: {version}\r\nDate: Fri, 27 Nov 2026 12:00:00 GMT\r\nAuthorization: {auth}\r\n", app.host)).await;
    assert_auth_failed(status, &body, "ISO-8601");

    // Without Content-Type the signature covers application/octet-stream (as on the manager).
    let mut req = app.signed("GET", path, "application/octet-stream", &app.admin);
    req.headers_mut().remove("content-type");
    let (status, body) = send(req, None).await;
    assert_eq!(status, 200, "{body}");

    // Content-Type parameters and case do not matter; the mimetype does.
    let req = app
        .signed("GET", path, "application/json", &app.admin)
        .insert_header(("Content-Type", "Application/JSON; charset=utf-8"));
    assert_eq!(send(req, None).await.0, 200);
    let req = app.signed("GET", path, "application/json", &app.admin).insert_header(("Content-Type", "text/plain"));
    assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");
}

/// Sends `head` (request line and headers, each ending in CRLF) as is, with `Connection: close`.
async fn raw(app: &TestApp, head: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.running.addr).await.unwrap();
    s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

fn assert_auth_failed_tuple((status, body): (u16, Value), msg: &str) {
    assert_auth_failed(status, &body, msg);
}

#[actix_rt::test]
async fn tampered_requests_are_rejected() {
    let app = TestApp::spawn().await;
    app.add_agent("i-a").await;

    // Path changed after signing.
    let mut req = app.signed("GET", "/v1/agents/i-a/events", "text/plain", &app.admin);
    req = req.uri(format!("{}/v1/agents/i-b/events", app.url));
    assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");

    // Query changed, dropped, or encoded differently.
    let signed_for = "/v1/agents/i-a/events?limit=5";
    for sent in ["/v1/agents/i-a/events?limit=500", "/v1/agents/i-a/events", "/v1/agents/i-a/events?limit=%35"] {
        let mut req = app.signed("GET", signed_for, "text/plain", &app.admin);
        req = req.uri(format!("{}{sent}", app.url));
        assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");
    }
    // The raw target is what is signed: a percent-encoded query verifies as sent.
    let raw = "/v1/agents?scaling_group=gr%C3%BCn+%2Bx";
    let (status, body) = send(app.signed("GET", raw, "text/plain", &app.admin), None).await;
    assert_eq!((status, &body["agents"]), (200, &json!([])), "{body}");

    // Date re-written (same instant, other spelling) or moved by a second.
    for date in [Utc::now().to_rfc3339(), (Utc::now() + chrono::Duration::seconds(1)).to_rfc3339()] {
        let req = app.signed("GET", "/v1/whoami", "text/plain", &app.admin).insert_header(("Date", date));
        assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");
    }

    // A body-less request signed as POST but sent as GET.
    let creds = &app.admin;
    let signed = app.signed("POST", "/v1/agents/i-a/watcher", "text/plain", creds);
    let mut req = app.unsigned("GET", "/v1/agents/i-a/watcher");
    for name in ["content-type", "x-backendai-version", "date", "authorization"] {
        req = req.insert_header((name, signed.headers().get(name).unwrap().clone()));
    }
    assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");

    // Another Host than the one signed.
    let req = app
        .signed("GET", "/v1/whoami", "text/plain", creds)
        .insert_header(("Host", format!("localhost:{}", app.running.addr.port())));
    assert_auth_failed_tuple(send(req, None).await, "Signature mismatch");

    // The right access key with a wrong secret.
    let wrong =
        Creds { access_key: creds.access_key.clone(), secret_key: "not-the-secret-key-at-all-0000000000000".into() };
    assert_auth_failed_tuple(app.request("GET", "/v1/whoami", None, Some(&wrong)).await, "Signature mismatch");

    // Nothing was executed or audited.
    let (status, body) = app.get("/v1/agents/i-a/events").await;
    assert_eq!((status, &body["events"]), (200, &json!([])));
}

#[actix_rt::test]
async fn dates_outside_the_allowed_skew_are_rejected() {
    let app = TestApp::spawn().await;
    let at = |offset_s: i64| {
        app.signed_at("GET", "/v1/whoami", "text/plain", &app.admin, Utc::now() + chrono::Duration::seconds(offset_s))
    };
    assert_auth_failed_tuple(send(at(-16 * 60), None).await, "Date/time sync error");
    assert_auth_failed_tuple(send(at(16 * 60), None).await, "Date/time sync error");
    assert_auth_failed_tuple(send(at(-3 * 86_400), None).await, "Date/time sync error");
    assert_eq!(send(at(-14 * 60), None).await.0, 200, "within the default 900 s");
    assert_eq!(send(at(14 * 60), None).await.0, 200);
    let req = app
        .signed("GET", "/v1/whoami", "text/plain", &app.admin)
        .insert_header(("Date", "Fri, 27 Nov 2026 12:00:00 GMT"));
    let (status, body) = send(req, None).await;
    assert_auth_failed(status, &body, "ISO-8601");

    let strict = TestApp::spawn_with(|c| c.api.clock_skew_s = 60).await;
    let at = |offset_s: i64| {
        strict.signed_at(
            "GET",
            "/v1/whoami",
            "text/plain",
            &strict.admin,
            Utc::now() + chrono::Duration::seconds(offset_s),
        )
    };
    assert_auth_failed_tuple(send(at(-120), None).await, "Date/time sync error");
    assert_eq!(send(at(-30), None).await.0, 200);
}

#[actix_rt::test]
async fn unknown_and_inactive_keys_are_rejected_alike() {
    let app = TestApp::spawn().await;
    let unknown = Creds {
        access_key: "AKIANOSUCHKEY0000000".into(),
        secret_key: "whatever-secret-key-0000000000000000000".into(),
    };
    assert_auth_failed_tuple(app.request("GET", "/v1/whoami", None, Some(&unknown)).await, "Access key not found");

    let inactive = app.add_keypair(true, false).await;
    assert_auth_failed_tuple(app.request("GET", "/v1/whoami", None, Some(&inactive)).await, "Access key not found");

    // Deactivating a key in use takes effect within the cache lifetime.
    let user = app.add_keypair(false, true).await;
    assert_eq!(app.request("GET", "/v1/whoami", None, Some(&user)).await.0, 200);
    app.sql(&format!("UPDATE keypairs SET is_active = false WHERE access_key = '{}'", user.access_key)).await;
    assert!(
        common::eventually(Duration::from_secs(8), || async {
            app.request("GET", "/v1/whoami", None, Some(&user)).await.0 == 401
        })
        .await,
        "a deactivated key kept working"
    );
}

#[actix_rt::test]
async fn non_superadmin_is_forbidden_on_admin_routes_but_authenticated_elsewhere() {
    let app = TestApp::spawn().await;
    app.add_agent("i-u").await;
    let user = app.add_keypair(false, true).await;

    let (status, body) = app.request("GET", "/v1/whoami", None, Some(&user)).await;
    assert_eq!((status, &body), (200, &json!({"access_key": user.access_key, "is_superadmin": false})));
    assert_eq!(app.request("GET", "/manager/announcement", None, Some(&user)).await.0, 200);

    for (method, path, body) in [
        ("GET", "/resource/watcher?agent_id=i-u", None),
        ("GET", "/resource/watcher", Some(json!({"agent_id": "i-u"}))),
        ("POST", "/resource/watcher/agent/start", Some(json!({"agent_id": "i-u"}))),
        ("POST", "/resource/watcher/agent/stop", Some(json!({"agent_id": "i-u"}))),
        ("POST", "/resource/watcher/agent/restart", Some(json!({"agent_id": "i-u"}))),
        ("GET", "/v1/agents", None),
        ("GET", "/v1/agents/i-u/watcher", None),
        ("GET", "/v1/agents/i-u/events", None),
        ("POST", "/v1/agents/i-u/start", None),
        ("POST", "/v1/agents/i-u/stop", None),
        ("POST", "/v1/agents/i-u/restart", None),
        ("POST", "/resource/recalculate-usage", None),
        ("POST", "/v1/usage/recalculate", None),
    ] {
        let (status, body) = app.request(method, path, body, Some(&user)).await;
        assert_eq!((status, body["error_code"].as_str()), (403, Some("forbidden")), "{method} {path}: {body}");
        assert!(body["title"].is_string() && body["msg"].as_str().unwrap().contains("superadmin"));
    }
    // Sync needs any active keypair (the agent has no kernels, so no RPC is sent).
    let (status, body) =
        app.request("POST", "/session/_/sync-agent-registry", Some(json!({"agent": "i-u"})), Some(&user)).await;
    assert_eq!((status, &body), (200, &json!({})));
    let (status, body) = app.request("POST", "/v1/agents/i-u/sync", None, Some(&user)).await;
    assert_eq!(status, 200, "{body}");
    assert_auth_failed_tuple(
        app.request("POST", "/v1/agents/i-u/sync", None, None).await,
        "Authorization header required",
    );

    // The forbidden commands were refused before anything ran: only the two syncs are audited, under the user's key.
    let (status, body) = app.get("/v1/agents/i-u/events").await;
    assert_eq!(status, 200);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    assert!(events.iter().all(|e| e["action"] == "sync" && e["requester"] == user.access_key.as_str()), "{body}");

    // last_used is recorded (best effort, in the background).
    let db = app.db.db.clone();
    let key = user.access_key.clone();
    let recorded = common::eventually(Duration::from_secs(3), || {
        let db = db.clone();
        let key = key.clone();
        async move {
            let mut conn = db.conn().await.unwrap();
            agent_supervisor::db::keypairs::find_keypair(&mut conn, &key).await.unwrap().unwrap().last_used.is_some()
        }
    })
    .await;
    assert!(recorded, "last_used was not recorded");
}

#[actix_rt::test]
async fn database_down_is_503_for_keys_not_verified_recently() {
    let (app, proxy) = TestApp::spawn_behind_db_proxy(|_| {}).await;
    let other = app.add_keypair(true, true).await;
    assert_eq!(app.get("/v1/whoami").await.0, 200);

    proxy.cut();
    let (status, body) = app.request("GET", "/v1/whoami", None, Some(&other)).await;
    assert_eq!((status, body["error_code"].as_str()), (503, Some("database_unavailable")), "{body}");
    assert_eq!(app.get("/v1/whoami").await.0, 200, "a key verified moments ago keeps working");

    proxy.restore();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.request("GET", "/v1/whoami", None, Some(&other)).await.0 == 200
        })
        .await
    );
}

/// Collects everything the daemon logs.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn secrets_and_signatures_never_appear_in_logs_or_answers() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let app = TestApp::spawn().await;
    let user = app.add_keypair(false, true).await;
    let mut sent_signatures = Vec::new();
    let mut bodies = Vec::new();
    let signature_of = |req: &awc::ClientRequest| {
        let h = req.headers().get("authorization").unwrap().to_str().unwrap().to_owned();
        h.rsplit_once(':').unwrap().1.to_owned()
    };

    // Good, wrong-secret, tampered and forbidden requests.
    let wrong = Creds {
        access_key: app.admin.access_key.clone(),
        secret_key: "a-wrong-secret-key-000000000000000000000".into(),
    };
    let reqs = [
        app.signed("GET", "/v1/whoami", "text/plain", &app.admin),
        app.signed("GET", "/v1/whoami", "text/plain", &wrong),
        app.signed("GET", "/v1/agents", "text/plain", &user),
        app.signed("GET", "/v1/agents?x=1", "text/plain", &app.admin).insert_header(("Date", Utc::now().to_rfc3339())),
    ];
    for req in reqs {
        sent_signatures.push(signature_of(&req));
        bodies.push(send(req, None).await.1.to_string());
    }
    let mut req = app.signed("GET", "/v1/agents", "text/plain", &app.admin);
    sent_signatures.push(signature_of(&req));
    req = req.uri(format!("{}/v1/agents?scaling_group=x", app.url));
    bodies.push(send(req, None).await.1.to_string());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("authentication failed"), "failures are logged:\n{logs}");
    assert!(logs.contains(&app.admin.access_key), "the access key may be logged");
    for text in bodies.iter().map(String::as_str).chain([logs.as_str()]) {
        for secret in [&app.admin.secret_key, &user.secret_key, &wrong.secret_key] {
            assert!(!text.contains(secret.as_str()), "a secret key leaked into: {text}");
        }
        for sig in &sent_signatures {
            assert!(!text.contains(sig.as_str()), "a signature leaked into: {text}");
        }
    }
}
