//! Watches the jobs folder: notify events, debounced, plus a periodic
//! rescan that also catches an overflowed event queue. Watching is
//! re-established when the folder is removed and recreated, or moved by a
//! configuration reload.

use std::sync::Arc;
use std::time::Duration;

use super::{reconcile_now, Service};

/// How often the jobs folder is rescanned even without events. The timer
/// runs on its own: no stream of events can postpone it.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Quiet time after the last event before a rescan (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The longest a burst of events may postpone its rescan: a file rewritten
/// every 100 ms must not hide a new spec beside it.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// Whether an event can change what the folder holds. Opens, reads and
/// closes are not (the rescan's own reads produce them: reacting to them
/// made the watcher wake itself forever).
fn changes_the_folder(event: &notify::Event) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    )
}

pub(super) async fn run(shared: Arc<Service>) {
    use notify::Watcher;
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error may mean lost events: rescan to be sure.
        if event.as_ref().map_or(true, changes_the_folder) {
            let _ = sender.send(());
        }
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
    let mut periodic = tokio::time::interval(RESCAN_INTERVAL);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                let burst_ends = tokio::time::Instant::now() + MAX_DEBOUNCE;
                loop {
                    let quiet = tokio::time::sleep(DEBOUNCE);
                    tokio::select! {
                        more = events.recv() => if more.is_none() { break },
                        _ = quiet => break,
                        _ = tokio::time::sleep_until(burst_ends) => break,
                    }
                }
            }
            _ = periodic.tick() => {}
            _ = shared.folder().rescan_asked() => {}
        }
        reconcile_now(&shared).await;
    }
}
