//! systemd's notification protocol (`sd_notify`): a datagram to `$NOTIFY_SOCKET` saying `READY=1`, `WATCHDOG=1`,
//! `STOPPING=1`. A no-op when the variable is unset (not started by systemd with `Type=notify`).

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Sends one notification; errors are logged, never fatal. The send never blocks: it runs on the event loop, and a
/// notification socket whose reader has fallen behind (its queue full) must not stop the daemon, so a notification
/// that cannot be queued at once is dropped (systemd reads promptly; the next watchdog ping follows anyway).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

/// Half the watchdog interval systemd asks for (`$WATCHDOG_USEC`), if it asks, as systemd recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Waits for SIGTERM or SIGINT and says which; both binaries stop gracefully on either.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Pings the watchdog at half systemd's interval for as long as `healthy` says so (no-op without a watchdog).
pub fn spawn_watchdog<F, Fut>(healthy: F)
where
    F: Fn() -> Fut + 'static,
    Fut: Future<Output = bool> + 'static,
{
    let Some(every) = watchdog_interval() else { return };
    actix_rt::spawn(async move {
        loop {
            if healthy().await {
                notify("WATCHDOG=1");
            } else {
                tracing::error!("not healthy; withholding the watchdog ping");
            }
            actix_rt::time::sleep(every).await;
        }
    });
}
