//! Cheap simulated watchers: many 127.0.0.1 listeners served by a few threads, each answering like an
//! `agent-watcher` (`GET /` with `agent-status`, `POST /agent/{start,stop,restart}` → `{"result": "ok"}` after a
//! configurable delay). Every command is recorded per port with its start and end, so a caller can check that no
//! agent ever saw two commands at once. Used by the daemon benchmark (10,000 agents) and the soak test.
//!
//! The HTTP handling is deliberately minimal (HTTP/1.1 with keep-alive, `Content-Length` bodies only): enough for
//! the daemon's `awc` client, and cheap enough that one process can stand in for thousands of nodes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::TcpListener as StdListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One command as a simulated watcher saw it.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub path: String,
    pub started: Instant,
    pub finished: Instant,
}

#[derive(Default)]
struct PortState {
    /// `active` or `inactive`.
    status: &'static str,
    in_flight: u32,
    commands: Vec<CommandRecord>,
}

struct Shared {
    token: String,
    command_delay: Duration,
    ports: HashMap<u16, Mutex<PortState>>,
    /// Commands that arrived while another one ran on the same port.
    overlaps: AtomicU64,
    requests: AtomicU64,
    /// Answer every request with `Connection: close` (see [`SimWatchers::close_connections`]).
    close_all: std::sync::atomic::AtomicBool,
}

/// A set of simulated watchers; dropping it stops them.
pub struct SimWatchers {
    ports: Vec<u16>,
    shared: Arc<Shared>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SimWatchers {
    /// Binds `count` listeners on 127.0.0.1 (ephemeral ports) served by `threads` threads. Each agent starts
    /// `active`; commands take `command_delay`.
    pub fn start(count: usize, threads: usize, token: &str, command_delay: Duration) -> Self {
        let listeners: Vec<StdListener> = (0..count)
            .map(|_| {
                let l =
                    StdListener::bind("127.0.0.1:0").expect("bind a simulated watcher (is `ulimit -n` high enough?)");
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            command_delay,
            ports: ports
                .iter()
                .map(|p| (*p, Mutex::new(PortState { status: "active", ..Default::default() })))
                .collect(),
            overlaps: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            close_all: std::sync::atomic::AtomicBool::new(false),
        });
        let threads = threads.max(1);
        let mut chunks: Vec<Vec<StdListener>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, l) in listeners.into_iter().enumerate() {
            chunks[i % threads].push(l);
        }
        let mut stops = Vec::new();
        let mut handles = Vec::new();
        for chunk in chunks {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            let shared = shared.clone();
            handles.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    for l in chunk {
                        let port = l.local_addr().unwrap().port();
                        let l = tokio::net::TcpListener::from_std(l).unwrap();
                        let shared = shared.clone();
                        tokio::task::spawn_local(async move {
                            while let Ok((stream, _)) = l.accept().await {
                                let shared = shared.clone();
                                tokio::task::spawn_local(serve_connection(stream, port, shared));
                            }
                        });
                    }
                    let _ = rx.await;
                });
            }));
        }
        Self { ports, shared, stops, threads: handles }
    }

    /// From now on, close each connection after one answer: with thousands of watchers in this one process, the
    /// daemon's idle keep-alive connections would otherwise hold one descriptor here per watcher.
    pub fn close_connections(&self) {
        self.shared.close_all.store(true, Ordering::Relaxed);
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Commands that arrived at a port while another command ran there (must be zero: the daemon serialises).
    pub fn overlaps(&self) -> u64 {
        self.shared.overlaps.load(Ordering::Relaxed)
    }

    /// Requests answered so far, over all ports.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The commands one port received, in arrival order.
    pub fn commands(&self, port: u16) -> Vec<CommandRecord> {
        self.shared.ports.get(&port).map(|s| s.lock().unwrap().commands.clone()).unwrap_or_default()
    }

    /// Ports whose recorded command intervals overlap (a second check, independent of the live counter).
    pub fn ports_with_overlapping_commands(&self) -> Vec<u16> {
        let mut bad = Vec::new();
        for port in &self.ports {
            let cmds = self.commands(*port);
            if cmds.windows(2).any(|w| w[1].started < w[0].finished) {
                bad.push(*port);
            }
        }
        bad
    }

    pub fn total_commands(&self) -> usize {
        self.ports.iter().map(|p| self.commands(*p).len()).sum()
    }
}

impl Drop for SimWatchers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Largest request head accepted; the daemon's requests are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

async fn serve_connection(mut stream: tokio::net::TcpStream, port: u16, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let mut token_ok = false;
        let mut close = shared.close_all.load(Ordering::Relaxed);
        let mut content_length = 0usize;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "x-backendai-watcher-token" => token_ok = v == shared.token,
                "connection" => close |= v.eq_ignore_ascii_case("close"),
                "content-length" => content_length = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        // Skip the body.
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + content_length);
        shared.requests.fetch_add(1, Ordering::Relaxed);

        let (status, body) = if !token_ok {
            (401, r#"{"error_code":"watcher_auth_failed","status":401,"title":"bad token"}"#.to_owned())
        } else {
            match (method.as_str(), path.as_str()) {
                ("GET", "/") => {
                    let status = shared.ports.get(&port).map(|s| s.lock().unwrap().status).unwrap_or("unknown");
                    (200, format!(r#"{{"agent-status":"{status}","watcher-status":"active","backend":"simulated"}}"#))
                }
                ("POST", "/agent/start" | "/agent/stop" | "/agent/restart") => {
                    run_command(&shared, port, &path).await;
                    (200, r#"{"result":"ok"}"#.to_owned())
                }
                _ => (404, r#"{"error_code":"not_found","status":404,"title":"no such route"}"#.to_owned()),
            }
        };
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nServer: BackendAI-AgentWatcher\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn run_command(shared: &Shared, port: u16, path: &str) {
    let Some(state) = shared.ports.get(&port) else { return };
    let started = Instant::now();
    {
        let mut s = state.lock().unwrap();
        s.in_flight += 1;
        if s.in_flight > 1 {
            shared.overlaps.fetch_add(1, Ordering::Relaxed);
        }
    }
    tokio::time::sleep(shared.command_delay).await;
    let mut s = state.lock().unwrap();
    s.in_flight -= 1;
    s.status = if path == "/agent/stop" { "inactive" } else { "active" };
    s.commands.push(CommandRecord { path: path.to_owned(), started, finished: Instant::now() });
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
