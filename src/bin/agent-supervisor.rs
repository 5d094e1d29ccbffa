//! `agent-supervisor`: the daemon and its administrative commands.

fn main() -> std::process::ExitCode {
    agent_supervisor::cli::supervisor::main()
}
