//! Interoperability with the real Python `callosum` (1.0.3, pyzmq 26.4, msgpack 1.1) as Backend.AI's agent uses it:
//! `tests/interop/callosum_agent.py` runs a Peer set up like `AgentRPCServer`, with and without CURVE.
//!
//! The virtualenv is built once under `target/venv-callosum` (`python3 -m venv` + pip from PyPI) and reused; an
//! exclusive file lock keeps parallel test processes from building it twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use agent_supervisor::{
    agent_rpc::{AgentRpc, RpcError, keys},
    config::AgentRpcConfig,
};
use uuid::Uuid;

const AGENT: &str = "i-python-agent";
const TIMEOUT_MS: u64 = 2000;
const PACKAGES: &[&str] = &["callosum~=1.0.3", "pyzmq~=26.4", "msgpack~=1.1.0"];

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf()
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, creating the venv on first use.
fn venv_python() -> PathBuf {
    let venv = target_dir().join("venv-callosum");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    let lock_file = std::fs::File::create(target_dir().join("venv-callosum.lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    if !ready.exists() {
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES));
        std::fs::write(&ready, PACKAGES.join("\n")).unwrap();
        eprintln!("created {} in {:.1} s", venv.display(), started.elapsed().as_secs_f64());
    }
    python
}

/// A running `callosum_agent.py`; killed when dropped.
struct PythonAgent {
    child: Child,
    addr: String,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PythonAgent {
    fn start(curve_dir: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("calls.jsonl");
        let mut cmd = Command::new(venv_python());
        cmd.arg(interop_dir().join("callosum_agent.py")).args(["--agent-id", AGENT, "--record"]).arg(&record);
        if let Some(d) = curve_dir {
            cmd.arg("--curve-dir").arg(d);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("READY ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("callosum_agent.py did not report READY");
        assert!(addr.starts_with("tcp://127.0.0.1:"), "{addr}");
        Self { child, addr, record, _dir: dir }
    }

    /// What the Python handler recorded, one JSON object per call.
    fn calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// pyzmq certificates for manager, agent and intruder.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new(venv_python()).arg(interop_dir().join("make_certs.py")).arg(dir.path()));
    dir
}

fn rpc(keypair: Option<&Path>) -> AgentRpc {
    AgentRpc::new(&AgentRpcConfig { timeout_ms: TIMEOUT_MS, manager_keypair: keypair.map(|p| p.display().to_string()) })
        .unwrap()
}

fn pairs(n: usize) -> Vec<(Uuid, Uuid)> {
    (0..n).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect()
}

fn as_json(kernels: &[(Uuid, Uuid)]) -> serde_json::Value {
    kernels.iter().map(|(k, s)| serde_json::json!([k.to_string(), s.to_string()])).collect()
}

fn assert_unavailable_within_bound(result: Result<(), RpcError>, started: Instant) {
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(RpcError::Unavailable(_))), "expected unavailable, got {result:?}");
    assert!(elapsed < Duration::from_millis(TIMEOUT_MS + 1500), "took too long: {elapsed:?}");
}

/// Calls a Python agent three times on one client and checks what its handler saw, then a wrong agent id.
async fn exercise(agent: &PythonAgent, client: &AgentRpc, public_key: Option<&str>) {
    let batches = [pairs(2), pairs(0), pairs(5)];
    for kernels in &batches {
        client.sync_kernel_registry(&agent.addr, public_key, kernels, AGENT).await.unwrap();
    }
    let e = client.sync_kernel_registry(&agent.addr, public_key, &pairs(1), "i-wrong").await.unwrap_err();
    match &e {
        RpcError::Failure { name, repr } => {
            assert_eq!(name, "AgentIdNotFoundError");
            assert!(repr.contains("i-wrong"), "{repr}");
        }
        other => panic!("expected a FAILURE, got {other:?}"),
    }
    // The agent still serves after a FAILURE.
    client.sync_kernel_registry(&agent.addr, public_key, &batches[0], AGENT).await.unwrap();

    let calls = agent.calls();
    assert_eq!(calls.len(), 5, "{calls:#?}");
    for (i, (call, kernels)) in calls.iter().zip(batches.iter().chain([&pairs(1), &batches[0]])).enumerate() {
        assert_eq!(call["okey"], "", "call {i}");
        assert_eq!(call["okey_type"], "str", "call {i}");
        if i == 3 {
            assert_eq!(call["agent_id"], "i-wrong");
            assert_eq!(call["failure"], "AgentIdNotFoundError");
        } else {
            assert_eq!(call["agent_id"], AGENT, "call {i}");
            assert_eq!(call["pairs"], as_json(kernels), "call {i}");
        }
    }
    // One persistent connection: the sequence numbers count up.
    let seqs: Vec<u64> = calls.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn python_callosum_agent_without_curve() {
    let agent = PythonAgent::start(None);
    exercise(&agent, &rpc(None), None).await;
}

#[tokio::test]
async fn python_callosum_agent_with_curve_and_the_right_keys() {
    let certs = certificates();
    let agent = PythonAgent::start(Some(certs.path()));
    let agent_key = keys::load_public_key(&certs.path().join("agent.key")).unwrap();
    exercise(&agent, &rpc(Some(&certs.path().join("manager.key_secret"))), Some(&agent_key)).await;
}

#[tokio::test]
async fn python_callosum_agent_with_curve_rejects_a_wrong_server_key() {
    let certs = certificates();
    let agent = PythonAgent::start(Some(certs.path()));
    let wrong = keys::load_public_key(&certs.path().join("intruder.key")).unwrap();
    let started = Instant::now();
    let result = rpc(Some(&certs.path().join("manager.key_secret")))
        .sync_kernel_registry(&agent.addr, Some(&wrong), &pairs(1), AGENT)
        .await;
    assert_unavailable_within_bound(result, started);
    assert!(agent.calls().is_empty());
}

#[tokio::test]
async fn python_callosum_agent_with_curve_rejects_a_wrong_client_key() {
    let certs = certificates();
    let agent = PythonAgent::start(Some(certs.path()));
    let agent_key = keys::load_public_key(&certs.path().join("agent.key")).unwrap();
    let started = Instant::now();
    let result = rpc(Some(&certs.path().join("intruder.key_secret")))
        .sync_kernel_registry(&agent.addr, Some(&agent_key), &pairs(1), AGENT)
        .await;
    assert_unavailable_within_bound(result, started);
    assert!(agent.calls().is_empty());

    // The agent is unharmed: the manager's own key still gets through.
    rpc(Some(&certs.path().join("manager.key_secret")))
        .sync_kernel_registry(&agent.addr, Some(&agent_key), &pairs(1), AGENT)
        .await
        .unwrap();
}
