//! `agent-watcher`: the node-side watcher (see `watcher::server`).

fn main() -> std::process::ExitCode {
    agent_supervisor::cli::watcher::main()
}
