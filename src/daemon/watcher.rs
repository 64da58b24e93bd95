//! Watches the jobs folder: notify events, debounced, plus a periodic
//! rescan that also catches an overflowed event queue. Watching is
//! re-established when the folder is removed and recreated, or moved by a
//! configuration reload.

use std::sync::Arc;
use std::time::Duration;

use super::{reconcile_now, Shared};

/// How often the jobs folder is rescanned even without events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Quiet time after the last event before a rescan (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(300);

pub(super) async fn run(shared: Arc<Shared>) {
    use notify::Watcher;
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = sender.send(());
    });
    let mut watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                "file events unavailable ({error}); rescanning every {RESCAN_INTERVAL:?}"
            );
            None
        }
    };
    let mut watched: Option<std::path::PathBuf> = None;
    loop {
        let dir = shared.settings().config.jobs_dir.clone();
        if let Some(w) = watcher.as_mut() {
            if watched.as_ref().is_some_and(|w| *w != dir || !dir.is_dir()) {
                // Gone or moved: watch it again once it is (back) there.
                let _ = w.unwatch(watched.as_ref().expect("checked above"));
                watched = None;
            }
            if watched.is_none()
                && dir.is_dir()
                && w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
            {
                watched = Some(dir);
            }
        }
        tokio::select! {
            Some(()) = events.recv() => {
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
            }
            _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
            _ = shared.rescan.notified() => {}
        }
        reconcile_now(&shared).await;
    }
}
