//! `agent-watcher`: the node-side watcher (built in its own module; see `watcher::server`).

fn main() {
    eprintln!("agent-watcher: not built yet");
    std::process::exit(2);
}
