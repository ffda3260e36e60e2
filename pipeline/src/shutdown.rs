//! Shutdown: SIGINT/SIGTERM as a value every stage can wait on.
//!
//! The streaming driver, its Kafka source (while it fills a batch or loads
//! stored offsets) and its sinks (while they retry an outage) all need to
//! notice a signal; [`Shutdown`] is a cheap, cloneable handle on one
//! watcher, so none of them installs its own signal handler.

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A handle that says whether a stop was asked for (see the module
/// documentation). Clones share the same state.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: tokio::sync::watch::Receiver<bool>,
}

/// The other end of a [`Shutdown`]: asks for the stop.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: tokio::sync::watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks every [`Shutdown`] handle to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A handle stopped only through the returned trigger (tests, replays).
    pub fn manual() -> (Shutdown, ShutdownTrigger) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Shutdown { rx }, ShutdownTrigger { tx })
    }

    /// A handle stopped by SIGINT or SIGTERM (spawns the watcher on the
    /// current Tokio runtime).
    pub fn on_signals() -> Shutdown {
        let (shutdown, trigger) = Shutdown::manual();
        tokio::spawn(async move {
            shutdown_signal().await;
            trigger.trigger();
        });
        shutdown
    }

    /// A handle that is never stopped.
    pub fn never() -> Shutdown {
        let (shutdown, trigger) = Shutdown::manual();
        // The sender lives on, so the value stays `false` for good.
        std::mem::forget(trigger);
        shutdown
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once a stop was asked for (at once if it already was).
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|s| *s).await.is_err() {
            // The trigger is gone without stopping: never resolves.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone() {
        let (mut a, trigger) = Shutdown::manual();
        let b = a.clone();
        assert!(!a.requested() && !b.requested());
        trigger.trigger();
        a.wait().await;
        assert!(b.requested());
    }

    #[tokio::test]
    async fn never_stays_running() {
        let mut s = Shutdown::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), s.wait()).await;
        assert!(waited.is_err());
        assert!(!s.requested());
    }
}
