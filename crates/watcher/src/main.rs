//! `agent-watcher`: the node-side watcher (see the library's documentation).

fn main() -> std::process::ExitCode {
    agent_watcher::cli::main()
}
