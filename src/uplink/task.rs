//! The publisher as a task: started with the daemon or a replay, stopped
//! with it.

use std::sync::Arc;
use std::time::Duration;

use super::link::LinkBoard;
use super::message::StreamStatus;
use super::publisher::{self, StoreSource, StreamReport};

/// A running publisher.
pub struct RunningUplink {
    link: Arc<LinkBoard>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningUplink {
    /// Starts the publisher on the current tokio runtime.
    pub fn start(
        link: Arc<LinkBoard>,
        stores: Arc<dyn StoreSource>,
        streams: StreamReport,
    ) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(publisher::run(link.clone(), stores, streams, stopped));
        Self { link, stop, task }
    }

    /// The link.
    pub fn link(&self) -> &Arc<LinkBoard> {
        &self.link
    }

    /// Stops: says offline (retained status) and disconnects.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        // The publisher waits at most ~2 s for its last acknowledgements.
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("uplink: the publisher did not stop in time");
        }
    }
}

/// A stream report from the daemon's stream states.
pub fn daemon_streams(statuses: crate::daemon::StreamStatuses) -> StreamReport {
    Arc::new(move || {
        statuses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| StreamStatus {
                name: s.name.clone(),
                state: serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                last_error: s.last_error.clone(),
            })
            .collect()
    })
}

/// A stream report naming fixed streams in one state (a replay's cameras).
pub fn fixed_streams(names: Vec<String>, state: &'static str) -> StreamReport {
    Arc::new(move || {
        names
            .iter()
            .map(|n| StreamStatus {
                name: n.clone(),
                state: state.to_string(),
                last_error: None,
            })
            .collect()
    })
}
