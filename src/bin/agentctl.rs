//! `agentctl`: the operator CLI (see `cli`).

fn main() {
    eprintln!("agentctl: not built yet");
    std::process::exit(2);
}
