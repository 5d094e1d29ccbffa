//! `agentctl`: the operator CLI over the daemon's admin API (see `cli::agentctl`).

fn main() -> std::process::ExitCode {
    agent_supervisor::cli::agentctl::main()
}
