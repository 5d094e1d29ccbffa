//! The HTTP surface, Backend.AI's watcher routes: `GET /`, `POST /agent/{start,stop,restart}` and, when enabled,
//! `POST /soft-reset`. Every response carries `Server: BackendAI-AgentWatcher`; every request needs the token.

use actix_web::{
    HttpResponse,
    http::header,
    middleware, web,
    web::{ServiceConfig, get, post},
};
use agent_supervisor_protocol::{
    ErrorCode, Problem,
    watcher::{Command, CommandOk, SERVER_HEADER},
};

use crate::{auth::TokenCheck, commands::Commander};

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
        .wrap(middleware::from_fn(crate::auth::require_token))
        .wrap(middleware::DefaultHeaders::new().add((header::SERVER, SERVER_HEADER)))
        .configure(|cfg| routes(cfg, soft_reset))
        .default_service(web::to(not_found))
}

/// The route table.
fn routes(cfg: &mut ServiceConfig, soft_reset: bool) {
    cfg.service(web::resource("/").route(get().to(status)).default_service(web::to(|| method_not_allowed("GET"))));
    for command in [Command::Start, Command::Stop, Command::Restart] {
        cfg.service(command_resource(command));
    }
    if soft_reset {
        cfg.service(command_resource(Command::SoftReset));
    }
}

fn command_resource(command: Command) -> actix_web::Resource {
    web::resource(command.path())
        .route(post().to(move |state: web::Data<AppState>| run(state, command)))
        .default_service(web::to(|| method_not_allowed("POST")))
}

async fn status(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.commander.backend().status().await)
}

/// Runs the command in a task of its own: a client that goes away (a supervisor that died, a timeout) does not
/// cancel a start, stop or restart half-way; it completes and is logged as any other.
async fn run(state: web::Data<AppState>, command: Command) -> HttpResponse {
    let state = state.into_inner();
    let done = actix_web::rt::spawn(async move { state.commander.run(command).await }).await;
    match done {
        Ok(Ok(())) => HttpResponse::Ok().json(CommandOk::ok()),
        Ok(Err(p)) => problem_response(&p),
        Err(e) => problem_response(&Problem::new(ErrorCode::InternalError, format!("the command's task failed: {e}"))),
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

/// RFC 7807 rendering of a [`Problem`] (the protocol crate's, shared with the daemon).
pub fn problem_response(problem: &Problem) -> HttpResponse {
    actix_web::ResponseError::error_response(problem)
}
