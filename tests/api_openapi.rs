//! The OpenAPI document at `/v1/openapi.json`: served unsigned, valid OpenAPI 3 (checked by openapi-spec-validator
//! in the shared schemathesis venv), and in step with the route table — every route in `api::routes` is documented
//! with its methods, every documented operation is routed, and every `ErrorCode` is in the problem schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "fuzz/venv.rs"]
mod venv;

use std::{collections::BTreeSet, process::Command};

use agent_supervisor::{config::Secret, error::ErrorCode};
use common::supervisor::TestApp;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `(path, method)` of every route, read from the route table's source (`api::routes`), with `{param}` kept.
fn route_table() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let body = &src[src.find("pub fn routes(").expect("the route table")..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let mut out = BTreeSet::new();
    let mut rest = body;
    while let Some(i) = rest.find("resource(\"") {
        rest = &rest[i + "resource(\"".len()..];
        let end = rest.find("\")").unwrap();
        let path = rest[..end].to_owned();
        rest = &rest[end + 2..];
        // The chained `.get(handler)`, `.post(handler)` calls after the resource.
        while let Some(chained) = rest.strip_prefix('.') {
            let open = chained.find('(').unwrap();
            let method = &chained[..open];
            if !METHODS.contains(&method) {
                break;
            }
            out.insert((path.clone(), method.to_owned()));
            let close = chained[open..].find(')').unwrap();
            rest = &chained[open + close + 1..];
        }
    }
    assert!(out.len() >= 20, "the route table parser found only {out:?}");
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|m| METHODS.contains(&m.as_str())) {
            out.insert((path.clone(), method.clone()));
        }
    }
    out
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| c.metrics.token = Some(Secret::new("metrics-token"))).await
}

async fn fetch(app: &TestApp) -> Value {
    let (status, doc) = app.request("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200, "{doc}");
    doc
}

#[actix_rt::test]
async fn the_document_is_served_unsigned_and_is_valid_openapi_3() {
    let app = spawn().await;
    let doc = fetch(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "agent-supervisor admin API");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let python = venv::python();
    let out = Command::new(python)
        .args(["-c", "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let app = spawn().await;
    let doc = fetch(&app).await;
    let routes = route_table();
    let docs = documented(&doc);
    let undocumented: Vec<_> = routes.difference(&docs).collect();
    let unrouted: Vec<_> = docs.difference(&routes).collect();
    assert!(undocumented.is_empty(), "routes missing from the document: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented operations not in the route table: {unrouted:?}");

    // And the running router agrees: each documented operation is answered by its handler (never the `not_found`
    // fallback nor 405), and every other method on a documented path is 405.
    let paths: BTreeSet<&String> = docs.iter().map(|(p, _)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", "i-nonexistent");
        for method in METHODS {
            let (status, body) = app.request(&method.to_uppercase(), &concrete, None, Some(&app.admin)).await;
            if docs.contains(&(path.clone(), method.to_owned())) {
                assert_ne!(status, 405, "{method} {path}: {body}");
                assert_ne!(body["error_code"], "not_found", "{method} {path} fell through to the fallback: {body}");
                let documented_statuses = doc["paths"][path][method]["responses"].as_object().unwrap();
                assert!(
                    documented_statuses.contains_key(&status.to_string()),
                    "{method} {path} answered {status}, which is not documented: {body}"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is not documented but answered {status}: {body}");
                assert_eq!(body["error_code"], "method_not_allowed");
            }
        }
    }
}

#[actix_rt::test]
async fn errors_are_documented_as_problem_documents_with_every_error_code() {
    let app = spawn().await;
    let doc = fetch(&app).await;
    let schemas = &doc["components"]["schemas"];
    let codes: BTreeSet<&str> =
        schemas["ErrorCode"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for code in ErrorCode::ALL {
        assert!(codes.contains(code.as_str()), "{} is missing from the ErrorCode schema", code.as_str());
    }
    assert_eq!(codes.len(), ErrorCode::ALL.len());
    let problem = &schemas["ProblemDocument"];
    assert_eq!(problem["properties"]["error_code"]["$ref"], "#/components/schemas/ErrorCode");
    for member in ["type", "title", "status", "error_code", "detail", "msg"] {
        assert!(problem["required"].as_array().unwrap().iter().any(|r| r == member), "{member} is not required");
    }
    for member in ["agent_id", "field", "kernel_count"] {
        assert!(problem["properties"][member].is_object(), "{member} is not described");
    }

    // Every 4xx/5xx of every operation is a problem document (except /readyz's 503, which is the readiness report).
    let responses = &doc["components"]["responses"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.as_str() < "400" || (path == "/readyz" && status == "503") {
                    continue;
                }
                let response = match response["$ref"].as_str() {
                    Some(r) => &responses[r.rsplit('/').next().unwrap()],
                    None => response,
                };
                let schema = &response["content"]["application/problem+json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ProblemDocument",
                    "{method} {path} {status}: {response}"
                );
            }
        }
    }

    // The signing scheme is described, and every signed route requires all three headers.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["backendai"]["name"], "Authorization");
    assert!(schemes["backendai"]["description"].as_str().unwrap().contains("HMAC-SHA256"));
    assert_eq!(schemes["backendai_date"]["name"], "Date");
    assert_eq!(schemes["backendai_version"]["name"], "X-BackendAI-Version");
    let (status, _) = app.request("GET", "/v1/whoami", None, None).await;
    assert_eq!(status, 401);
    let whoami = &doc["paths"]["/v1/whoami"]["get"];
    assert_eq!(whoami["security"][0].as_object().unwrap().len(), 3, "{whoami}");
    assert!(doc["paths"]["/"]["get"]["security"].is_null(), "GET / is open");
}
