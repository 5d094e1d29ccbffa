//! A Python virtualenv with schemathesis and openapi-spec-validator, made once under `target/venv-schemathesis` and
//! reused. It is built in a directory of its own and renamed into place, so concurrent test processes never see a
//! half-installed one (a venv survives the rename: `bin/python` finds its `pyvenv.cfg` relative to itself; the
//! console scripts would not, so tools run as `python -m ...`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

pub const SCHEMATHESIS: &str = "4.32.5";
pub const SPEC_VALIDATOR: &str = "0.9.0";

static BUILDING: Mutex<()> = Mutex::new(());

/// `target/`, from the test binary's own path (`target/debug/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn ready(python: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m; assert m.version('schemathesis') == '{SCHEMATHESIS}'; \
         assert m.version('openapi-spec-validator') == '{SPEC_VALIDATOR}'"
    );
    python.exists() && Command::new(python).args(["-c", &check]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's `python`, after making the venv if it is missing or has other versions.
pub fn python() -> PathBuf {
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let target = target_dir();
    let venv = target.join("venv-schemathesis");
    let python = venv.join("bin").join("python");
    if ready(&python) {
        return python;
    }
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let building = target.join(format!("venv-schemathesis.building-{unique}"));
    eprintln!(
        "making {} (pip install schemathesis=={SCHEMATHESIS} openapi-spec-validator=={SPEC_VALIDATOR})",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&building));
    run(Command::new(building.join("bin").join("python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("schemathesis=={SCHEMATHESIS}"),
        &format!("openapi-spec-validator=={SPEC_VALIDATOR}"),
    ]));
    if venv.exists() && !ready(&python) {
        // An outdated one: move it out of the way first (a rename is atomic; removing is not).
        let stale = target.join(format!("venv-schemathesis.stale-{unique}"));
        if std::fs::rename(&venv, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    if std::fs::rename(&building, &venv).is_err() {
        // Another process got there first; use theirs.
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(ready(&python), "{} is not usable", venv.display());
    python
}
