//! Bad input on every route: each mistake is a 4xx problem+json naming what was wrong, never a 500. Requests are
//! signed with a superadmin keypair, so it is validation that answers, not authentication; a few unsigned (and
//! non-superadmin) ones show that authentication comes first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::supervisor::{Creds, TestApp};
use serde_json::Value;

/// Backend.AI-compatible routes that read the agent from a JSON body (or the query string).
const BODY_ROUTES: [(&str, &str); 5] = [
    ("GET", "/resource/watcher"),
    ("POST", "/resource/watcher/agent/start"),
    ("POST", "/resource/watcher/agent/stop"),
    ("POST", "/resource/watcher/agent/restart"),
    ("POST", "/session/_/sync-agent-registry"),
];

/// `/v1` routes with the agent id in the path; `{}` is replaced.
const PATH_ROUTES: [(&str, &str); 6] = [
    ("GET", "/v1/agents/{}/watcher"),
    ("POST", "/v1/agents/{}/start"),
    ("POST", "/v1/agents/{}/stop"),
    ("POST", "/v1/agents/{}/restart"),
    ("GET", "/v1/agents/{}/events"),
    ("POST", "/v1/agents/{}/sync"),
];

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    creds: Option<&Creds>,
) -> Answer {
    let req = match creds {
        Some(c) => app.signed(method, path, content_type, c),
        None => app.unsigned(method, path).insert_header(("Content-Type", content_type)),
    };
    let mut resp = req
        .timeout(std::time::Duration::from_secs(30))
        .send_body(body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer { status: resp.status().as_u16(), content_type, body }
}

async fn json(app: &TestApp, method: &str, path: &str, body: &[u8]) -> Answer {
    send(app, method, path, "application/json", body.to_vec(), Some(&app.admin)).await
}

/// A problem document with this status and code (and `field`, when given).
#[track_caller]
fn problem(a: &Answer, status: u16, code: &str, field: Option<&str>, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.content_type, "application/problem+json", "{what}: {}", a.body);
    assert_eq!(a.body["error_code"], code, "{what}: {}", a.body);
    assert_eq!(a.body["status"], status, "{what}");
    assert!(
        a.body["detail"].is_string() && a.body["msg"].is_string() && a.body["title"].is_string(),
        "{what}: {}",
        a.body
    );
    if let Some(field) = field {
        assert_eq!(a.body["field"], field, "{what}: {}", a.body);
    }
}

#[actix_rt::test]
async fn malformed_json_and_bodies_that_are_not_objects() {
    let app = TestApp::spawn().await;
    let bodies: [&[u8]; 9] = [
        b"{",
        b"{\"agent_id\": }",
        b"not json",
        b"[1]",
        b"\"i-1\"",
        b"5",
        b"null",
        b"{\"agent_id\": \"\xff\"}",
        b"\xef\xbb\xbf{}",
    ];
    for (method, path) in BODY_ROUTES {
        for body in bodies {
            let what = format!("{method} {path} {}", String::from_utf8_lossy(body));
            problem(&json(&app, method, path, body).await, 400, "invalid_request", Some("body"), &what);
        }
        // Nested past serde_json's recursion limit.
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        problem(
            &json(&app, method, path, deep.as_bytes()).await,
            400,
            "invalid_request",
            Some("body"),
            &format!("{method} {path} deep"),
        );
    }
}

#[actix_rt::test]
async fn missing_mistyped_and_unknown_fields() {
    let app = TestApp::spawn().await;
    for (method, path) in BODY_ROUTES {
        let cases: [(&str, &str); 9] = [
            ("{}", "agent_id"),
            (r#"{"agent_id": 5}"#, "agent_id"),
            (r#"{"agent_id": null}"#, "agent_id"),
            (r#"{"agent_id": ["i-1"]}"#, "agent_id"),
            (r#"{"agent_id": {"id": "i-1"}}"#, "agent_id"),
            (r#"{"agent": true}"#, "agent"),
            (r#"{"agent_id": "i-1", "extra": 1}"#, "extra"),
            (r#"{"agentid": "i-1"}"#, "agentid"),
            (r#"{"AGENT_ID": "i-1"}"#, "AGENT_ID"),
        ];
        for (body, field) in cases {
            problem(
                &json(&app, method, path, body.as_bytes()).await,
                400,
                "invalid_request",
                Some(field),
                &format!("{method} {path} {body}"),
            );
        }
        // No body and no query: the agent is missing.
        let a = send(&app, method, path, "text/plain", Vec::new(), Some(&app.admin)).await;
        problem(&a, 400, "invalid_request", Some("agent_id"), &format!("{method} {path} without an agent"));
    }
}

#[actix_rt::test]
async fn force_of_the_wrong_type_or_where_it_does_not_belong() {
    let app = TestApp::spawn().await;
    let stop = "/resource/watcher/agent/stop";
    for body in [
        r#"{"agent_id": "i-1", "force": "yes"}"#,
        r#"{"agent_id": "i-1", "force": 1}"#,
        r#"{"agent_id": "i-1", "force": [true]}"#,
    ] {
        problem(&json(&app, "POST", stop, body.as_bytes()).await, 400, "invalid_request", Some("force"), body);
    }
    let a = send(&app, "POST", &format!("{stop}?agent_id=i-1&force=maybe"), "text/plain", Vec::new(), Some(&app.admin))
        .await;
    problem(&a, 400, "invalid_request", Some("force"), "compat force=maybe");
    for query in ["force=maybe", "force=2", "force=TRUE!"] {
        problem(
            &app_post(&app, &format!("/v1/agents/i-1/stop?{query}")).await,
            400,
            "invalid_request",
            Some("force"),
            query,
        );
    }
    // Only stop takes `force`.
    for path in ["/resource/watcher/agent/start", "/resource/watcher/agent/restart", "/session/_/sync-agent-registry"] {
        problem(
            &json(&app, "POST", path, br#"{"agent_id": "i-1", "force": true}"#).await,
            400,
            "invalid_request",
            Some("force"),
            path,
        );
    }
    problem(
        &app_post(&app, "/v1/agents/i-1/start?force=true").await,
        400,
        "invalid_request",
        Some("force"),
        "v1 start force",
    );
}

async fn app_post(app: &TestApp, path: &str) -> Answer {
    send(app, "POST", path, "text/plain", Vec::new(), Some(&app.admin)).await
}

async fn app_get(app: &TestApp, path: &str) -> Answer {
    send(app, "GET", path, "text/plain", Vec::new(), Some(&app.admin)).await
}

#[actix_rt::test]
async fn bad_agent_ids_in_bodies_queries_and_paths() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(65);
    let in_json = ["", long.as_str(), "a/b", "..", "a..b", "a\u{0}b", "a b", "é", "../etc", "i-1\n"];
    for (method, path) in BODY_ROUTES {
        for id in in_json {
            for key in ["agent_id", "agent"] {
                let body = serde_json::to_vec(&serde_json::json!({ key: id })).unwrap();
                problem(
                    &json(&app, method, path, &body).await,
                    400,
                    "invalid_request",
                    Some(key),
                    &format!("{method} {path} {key}={id:?}"),
                );
            }
        }
        let in_query = ["", "a%2Fb", "%2F", "a%00b", "%00", "..", "a..b", "%2E%2E", &long, "a+b", "%C3%A9", "i-1%0A"];
        for id in in_query {
            let target = format!("{path}?agent_id={id}");
            let a = send(&app, method, &target, "text/plain", Vec::new(), Some(&app.admin)).await;
            problem(&a, 400, "invalid_request", Some("agent_id"), &target);
        }
    }
    for (method, template) in PATH_ROUTES {
        for id in ["a%2Fb", "%2F", "a%00b", "%00", "..", "a..b", "%2E%2E", long.as_str(), "a%20b", "%C3%A9", "i-1%0A"] {
            let target = template.replace("{}", id);
            let a = send(&app, method, &target, "text/plain", Vec::new(), Some(&app.admin)).await;
            problem(&a, 400, "invalid_request", Some("agent_id"), &target);
        }
        // An empty segment matches no route at all.
        let target = template.replace("{}", "");
        problem(
            &send(&app, method, &target, "text/plain", Vec::new(), Some(&app.admin)).await,
            404,
            "not_found",
            None,
            &target,
        );
    }
}

#[actix_rt::test]
async fn duplicated_unknown_and_out_of_range_query_parameters() {
    let app = TestApp::spawn().await;
    for (method, path) in BODY_ROUTES {
        for query in ["agent_id=i-1&agent_id=i-2", "agent=i-1&agent=i-1"] {
            let a = send(&app, method, &format!("{path}?{query}"), "text/plain", Vec::new(), Some(&app.admin)).await;
            problem(&a, 400, "invalid_request", None, &format!("{path}?{query}"));
        }
        let a = send(&app, method, &format!("{path}?agent_id=i-1&bogus=1"), "text/plain", Vec::new(), Some(&app.admin))
            .await;
        problem(&a, 400, "invalid_request", Some("bogus"), path);
    }
    problem(
        &app_post(&app, "/v1/agents/i-1/stop?force=true&force=false").await,
        400,
        "invalid_request",
        Some("force"),
        "dup force",
    );
    for (method, template) in PATH_ROUTES {
        let target = format!("{}?bogus=1", template.replace("{}", "i-1"));
        problem(
            &send(&app, method, &target, "text/plain", Vec::new(), Some(&app.admin)).await,
            400,
            "invalid_request",
            Some("bogus"),
            &target,
        );
    }
    for query in
        ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=", "limit=1&limit=2", "limit=99999999999999999999"]
    {
        problem(
            &app_get(&app, &format!("/v1/agents/i-1/events?{query}")).await,
            400,
            "invalid_request",
            Some("limit"),
            query,
        );
    }
    problem(
        &app_get(&app, "/v1/agents?scaling_group=a&scaling_group=b").await,
        400,
        "invalid_request",
        Some("scaling_group"),
        "dup sg",
    );
    problem(&app_get(&app, "/v1/agents?bogus=1").await, 400, "invalid_request", Some("bogus"), "unknown on list");
    problem(
        &app_post(&app, "/v1/usage/recalculate?dry_run=1").await,
        400,
        "invalid_request",
        Some("dry_run"),
        "unknown on recalc",
    );
    // Undecodable query strings are refused, not crashed on.
    for query in ["agent_id=%ZZ", "agent_id=%", "%FF=1", "agent_id=%C3"] {
        let a = app_get(&app, &format!("/resource/watcher?{query}")).await;
        assert!(
            (400..500).contains(&a.status) && a.content_type == "application/problem+json",
            "{query}: {} {}",
            a.status,
            a.body
        );
    }
}

#[actix_rt::test]
async fn oversized_bodies_are_413_problem_documents() {
    let app = TestApp::spawn().await;
    let limit = app.config.api.max_body_bytes;
    let big = {
        let mut b = format!("{{\"agent_id\": \"i-1\", \"pad\": \"{}", "x".repeat(limit));
        b.push_str("\"}");
        b.into_bytes()
    };
    for (method, path) in BODY_ROUTES.iter().copied().chain([
        ("POST", "/v1/agents/i-1/start"),
        ("POST", "/resource/recalculate-usage"),
        ("GET", "/v1/agents"),
    ]) {
        let a = json(&app, method, path, &big).await;
        problem(&a, 413, "payload_too_large", None, &format!("{method} {path}"));
        assert_eq!(a.body["limit_bytes"], limit);
    }
    // Exactly at the limit is read (and then judged on its content).
    let mut at_limit = br#"{"agent_id": "i-1"}"#.to_vec();
    at_limit.resize(limit, b' ');
    problem(
        &json(&app, "POST", "/resource/watcher/agent/start", &at_limit).await,
        404,
        "agent_not_found",
        None,
        "body at the limit",
    );

    // Streamed without a Content-Length: counted while read.
    let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> =
        big.chunks(8192).map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c))).collect();
    let mut resp = app
        .signed("POST", "/resource/watcher/agent/start", "application/json", &app.admin)
        .send_stream(futures_util::stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/problem+json");
    let body: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    assert_eq!(body["error_code"], "payload_too_large");

    // A declared oversize is refused before the signature is looked at (nothing is read or verified).
    let a = send(&app, "POST", "/resource/watcher/agent/start", "application/json", big.clone(), None).await;
    problem(&a, 413, "payload_too_large", None, "unsigned oversize");
}

#[actix_rt::test]
async fn wrong_methods_and_unknown_routes() {
    let app = TestApp::spawn().await;
    let wrong = [
        ("POST", "/"),
        ("DELETE", "/v1/agents"),
        ("PUT", "/v1/agents/i-1/start"),
        ("GET", "/v1/agents/i-1/start"),
        ("GET", "/resource/watcher/agent/stop"),
        ("POST", "/resource/watcher"),
        ("PATCH", "/v1/usage/recalculate"),
        ("GET", "/session/_/sync-agent-registry"),
        ("POST", "/v1/openapi.json"),
        ("DELETE", "/healthz"),
    ];
    for (method, path) in wrong {
        problem(
            &send(&app, method, path, "text/plain", Vec::new(), Some(&app.admin)).await,
            405,
            "method_not_allowed",
            None,
            &format!("{method} {path}"),
        );
    }
    for path in [
        "/nope",
        "/v1",
        "/v1/agents/i-1/nope",
        "/resource",
        "/v2/agents",
        "/v1/agents/i-1/start/extra",
        "/%00",
        "/v1/openapi.yaml",
    ] {
        problem(&app_get(&app, path).await, 404, "not_found", None, path);
    }
}

#[actix_rt::test]
async fn authentication_comes_before_validation() {
    let app = TestApp::spawn().await;
    let user = app.add_keypair(false, true).await;
    for (method, path) in BODY_ROUTES {
        let a = send(&app, method, path, "application/json", b"{".to_vec(), None).await;
        problem(&a, 401, "auth_failed", None, &format!("unsigned {method} {path}"));
        if path != "/session/_/sync-agent-registry" {
            let a = send(&app, method, path, "application/json", b"{".to_vec(), Some(&user)).await;
            problem(&a, 403, "forbidden", None, &format!("non-superadmin {method} {path}"));
        }
    }
    for (method, template) in PATH_ROUTES {
        let target = template.replace("{}", "a%2Fb");
        problem(&send(&app, method, &target, "text/plain", Vec::new(), None).await, 401, "auth_failed", None, &target);
    }
    // With a signature, the same request reaches validation.
    problem(
        &json(&app, "POST", "/resource/watcher/agent/start", b"{").await,
        400,
        "invalid_request",
        Some("body"),
        "signed",
    );
}
