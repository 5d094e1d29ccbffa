//! [`Workers`]: the HTTP server's worker threads, each registered from the app factory, so that a health check can
//! ask every one of them to run a task. A connection to the listening socket proves nothing (the kernel's backlog
//! accepts it while every worker is stuck); a task that runs on each worker's event loop does.

use std::{
    sync::{Arc, Mutex, PoisonError},
    thread::ThreadId,
    time::Duration,
};

use actix_rt::ArbiterHandle;

/// The registered worker threads' arbiters. Cheap to clone; clones share the list.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<Vec<(ThreadId, ArbiterHandle)>>>);

impl Workers {
    /// Registers the calling thread's arbiter, once per thread (call it from the HTTP app factory, which runs on each
    /// worker thread).
    pub fn register_current(&self) {
        let Some(handle) = actix_rt::Arbiter::try_current() else { return };
        let id = std::thread::current().id();
        let mut list = self.lock();
        if !list.iter().any(|(t, _)| *t == id) {
            list.push((id, handle));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(ThreadId, ArbiterHandle)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The workers' arbiters, in the order they registered.
    pub fn handles(&self) -> Vec<ArbiterHandle> {
        self.lock().iter().map(|(_, a)| a.clone()).collect()
    }

    /// Forgets the worker at `index` (its thread has ended).
    pub fn forget(&self, index: usize) {
        let mut list = self.lock();
        if index < list.len() {
            list.swap_remove(index);
        }
    }

    /// Whether every worker runs its event loop: each is given an empty task, which must run `within`. A worker whose
    /// thread has ended is not counted; one that does not get to the task is stuck, and the error names it as
    /// `{what} {index}`.
    pub async fn check(&self, within: Duration, what: &str) -> Result<(), String> {
        let pending: Vec<_> = self
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, (_, handle))| {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                handle
                    .spawn(async move { drop(tx) })
                    .then_some(async move { (i, actix_rt::time::timeout(within, rx).await.is_ok()) })
            })
            .collect();
        match futures_util::future::join_all(pending).await.into_iter().find(|(_, answered)| !answered) {
            Some((i, _)) => Err(format!("{what} {i} did not run a task within {} ms", within.as_millis())),
            None => Ok(()),
        }
    }
}
