//! `agentctl start|stop|restart --scaling-group G`: one command over every agent of a scaling group, at most
//! `--max-parallel` at a time (or `--rolling`: one at a time, stopping at the first failure), with progress on
//! stderr and a summary of outcomes on stdout.

use std::{
    io::{IsTerminal, Write},
    time::Instant,
};

use agent_supervisor_common::api_client::{ApiError as CtlError, Client};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::api::types::AgentList;

use super::{
    commands::{self, AgentOutcome, CommandOpts, Verb},
    render::{Table, duration_ms, progress_bar},
};

/// What to run over which group.
#[derive(Debug, Clone)]
pub struct BulkPlan {
    pub verb: Verb,
    pub scaling_group: String,
    pub max_parallel: usize,
    pub rolling: bool,
    pub opts: CommandOpts,
}

/// Progress on stderr: a redrawn bar on a terminal, one line per finished agent otherwise.
struct Progress {
    tty: bool,
    verb: Verb,
    total: usize,
    done: usize,
    ok: usize,
    failed: usize,
}

impl Progress {
    fn new(verb: Verb, total: usize) -> Self {
        let me = Self { tty: std::io::stderr().is_terminal(), verb, total, done: 0, ok: 0, failed: 0 };
        me.draw();
        me
    }

    fn draw(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{}",
                progress_bar(self.done, self.total, self.ok, self.failed, self.verb.as_str())
            );
            let _ = err.flush();
        }
    }

    fn finished(&mut self, outcome: &AgentOutcome) {
        self.done += 1;
        if outcome.ok() {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        if self.tty {
            self.draw();
        } else {
            eprintln!("[{}/{}] {} {}", self.done, self.total, self.verb.as_str(), outcome.line());
        }
    }

    fn close(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// The agent ids of a scaling group, as the daemon lists them.
async fn group_agents(client: &Client, group: &str) -> Result<Vec<String>, CtlError> {
    let listing: AgentList = client.get(&format!("/v1/agents?scaling_group={}", commands::encode(group))).await?;
    Ok(listing.agents.into_iter().map(|a| a.row.id).collect())
}

/// Runs the plan and prints the summary; an error when any agent did not end well.
pub async fn run(client: &Client, plan: &BulkPlan, json_out: bool) -> Result<(), CtlError> {
    let agents = group_agents(client, &plan.scaling_group).await?;
    if agents.is_empty() {
        return Err(CtlError::Reported(format!(
            "scaling group {:?} has no agents; nothing to {}",
            plan.scaling_group,
            plan.verb.as_str()
        )));
    }
    let started = Instant::now();
    let mut progress = Progress::new(plan.verb, agents.len());
    let mut outcomes: Vec<AgentOutcome> = Vec::with_capacity(agents.len());
    if plan.rolling {
        for id in &agents {
            let outcome = commands::run(client, plan.verb, id, plan.opts).await;
            progress.finished(&outcome);
            let failed = !outcome.ok();
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
    } else {
        let mut stream = futures_util::stream::iter(agents.iter())
            .map(|id| commands::run(client, plan.verb, id, plan.opts))
            .buffer_unordered(plan.max_parallel.max(1));
        while let Some(outcome) = stream.next().await {
            progress.finished(&outcome);
            outcomes.push(outcome);
        }
    }
    progress.close();
    // The listing's order, with agents a rolling run never reached last.
    outcomes.sort_by_key(|o| agents.iter().position(|a| *a == o.agent_id));
    let not_run: Vec<&String> = agents.iter().filter(|a| !outcomes.iter().any(|o| &o.agent_id == *a)).collect();
    let failed = outcomes.iter().filter(|o| !o.ok()).count();
    let succeeded = outcomes.len() - failed;
    let elapsed_ms = started.elapsed().as_millis() as u64;

    if json_out {
        let mut results: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "agent_id": o.agent_id,
                    "ok": o.ok(),
                    "outcome": o.label(),
                    "http_status": o.http_status(),
                    "error_code": o.result.as_ref().err().and_then(CtlError::code),
                    "elapsed_ms": o.elapsed.as_millis() as u64,
                    "response": o.json(),
                })
            })
            .collect();
        results.extend(not_run.iter().map(|a| json!({"agent_id": a, "ok": false, "outcome": "not run", "http_status": null, "error_code": null, "elapsed_ms": null, "response": null})));
        let doc = json!({
            "command": plan.verb.as_str(),
            "scaling_group": plan.scaling_group,
            "rolling": plan.rolling,
            "max_parallel": if plan.rolling { 1 } else { plan.max_parallel.max(1) },
            "succeeded": succeeded,
            "failed": failed,
            "not_run": not_run.len(),
            "elapsed_ms": elapsed_ms,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        let mut table = Table::new(&["AGENT", "OUTCOME", "HTTP", "ELAPSED", "DETAIL"]);
        for o in &outcomes {
            let detail = match &o.result {
                Ok(r) => format!("event {}", r.event_id),
                Err(e) if o.ensured => e.code().unwrap_or_default().to_owned(),
                Err(e) => match e.code() {
                    Some(code) => format!("{code}: {}", one_line(e)),
                    None => e.to_string(),
                },
            };
            let status = o.http_status().map_or("-".to_owned(), |s| s.to_string());
            table.row(vec![
                o.agent_id.clone(),
                o.label().to_owned(),
                status,
                duration_ms(o.elapsed.as_millis() as u64),
                detail,
            ]);
        }
        for a in &not_run {
            table.row(vec![
                (*a).clone(),
                "not run".into(),
                "-".into(),
                "-".into(),
                "an earlier agent failed (--rolling)".into(),
            ]);
        }
        print!("{}", table.render());
        let mut summary = format!("{} of {} agents: {succeeded} ok, {failed} failed", plan.verb.as_str(), agents.len());
        if !not_run.is_empty() {
            summary.push_str(&format!(", {} not run", not_run.len()));
        }
        println!("{summary} ({})", duration_ms(elapsed_ms));
    }
    if failed > 0 || !not_run.is_empty() {
        return Err(CtlError::Reported(format!(
            "{} of {} agents in scaling group {:?} did not {}",
            failed + not_run.len(),
            agents.len(),
            plan.scaling_group,
            plan.verb.as_str()
        )));
    }
    Ok(())
}

/// The problem's detail alone (the table already shows the code and status).
fn one_line(e: &CtlError) -> String {
    match e {
        CtlError::Problem { detail, .. } => truncate(&detail.replace('\n', " ")),
        other => truncate(&other.to_string()),
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX { s.to_owned() } else { format!("{}…", s.chars().take(MAX).collect::<String>()) }
}
