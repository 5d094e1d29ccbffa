//! The HTTP surface, Backend.AI's watcher routes: `GET /`, `POST /agent/{start,stop,restart}` and, when enabled,
//! `POST /soft-reset`. Every response carries `Server: BackendAI-AgentWatcher`; every request needs the token.

use actix_web::{
    HttpResponse,
    http::header,
    middleware, web,
    web::{ServiceConfig, get, post},
};
use serde_json::json;

use super::{auth::TokenCheck, backend::Command, commands::Commander};
use crate::error::{ErrorCode, Problem};

pub const SERVER_HEADER: &str = "BackendAI-AgentWatcher";

/// Shared by every worker.
pub struct AppState {
    pub commander: Commander,
    pub token: TokenCheck,
    pub soft_reset: bool,
}

/// Builds the app for one worker.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let soft_reset = state.soft_reset;
    actix_web::App::new()
        .app_data(state)
        .wrap(middleware::from_fn(super::auth::require_token))
        .wrap(middleware::DefaultHeaders::new().add((header::SERVER, SERVER_HEADER)))
        .configure(|cfg| routes(cfg, soft_reset))
        .default_service(web::to(not_found))
}

/// The route table.
fn routes(cfg: &mut ServiceConfig, soft_reset: bool) {
    cfg.service(web::resource("/").route(get().to(status)).default_service(web::to(|| method_not_allowed("GET"))))
        .service(command_resource("/agent/start", Command::Start))
        .service(command_resource("/agent/stop", Command::Stop))
        .service(command_resource("/agent/restart", Command::Restart));
    if soft_reset {
        cfg.service(command_resource("/soft-reset", Command::SoftReset));
    }
}

fn command_resource(path: &str, command: Command) -> actix_web::Resource {
    web::resource(path)
        .route(post().to(move |state: web::Data<AppState>| run(state, command)))
        .default_service(web::to(|| method_not_allowed("POST")))
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.commander.backend().status().await)
}

async fn run(state: web::Data<AppState>, command: Command) -> HttpResponse {
    match state.commander.run(command).await {
        Ok(()) => HttpResponse::Ok().json(json!({"result": "ok"})),
        Err(p) => problem_response(&p),
    }
}

async fn not_found() -> HttpResponse {
    // Backend.AI's /hard-reset, /shutdown, /fstab and /mounts are deliberately not served.
    problem_response(&Problem::new(ErrorCode::NotFound, "no such route on this watcher"))
}

async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut resp =
        problem_response(&Problem::new(ErrorCode::MethodNotAllowed, format!("this route allows {allow} only")));
    resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// RFC 7807 rendering of a [`Problem`].
pub fn problem_response(problem: &Problem) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(problem.status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).content_type("application/problem+json").body(problem.to_json().to_string())
}
