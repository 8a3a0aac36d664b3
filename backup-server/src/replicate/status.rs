//! `replicate status`: a receiving store's pending sessions, from their records: which
//! versions wait, how many chunks arrived, how many are still missing.

use std::collections::HashSet;

use super::error::ReplicateError;
use super::session_dir::{hex_id, SessionDir};
use crate::error::BackupError;
use crate::store::ChunkStore;

/// One pending session.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionStatus {
    /// The sending store's id.
    pub sender: String,
    /// The session id (hex, first 16 digits).
    pub session: String,
    /// When the manifest was recorded.
    pub created_unix_secs: u64,
    /// Versions of the manifest not yet published here, as `NAME@N`.
    pub waiting_versions: Vec<String>,
    /// Chunks recorded as arrived.
    pub arrived_chunks: u64,
    /// Chunks the waiting versions need that the store does not have.
    pub missing_chunks: u64,
}

/// Every pending session of the store `store`.
pub async fn sessions(store: &ChunkStore) -> Result<Vec<SessionStatus>, BackupError> {
    let root = store.local_root().ok_or(ReplicateError::NotLocal)?;
    let mut out = Vec::new();
    for dir in SessionDir::all(root) {
        let Some(record) = dir.read()? else { continue };
        let arrived: HashSet<_> = record.arrived.iter().copied().collect();
        let mut waiting = Vec::new();
        let mut needed = HashSet::new();
        for e in record.manifest.entries() {
            let newest = store.latest_version(&e.volume).await?.unwrap_or(0);
            if e.version > newest {
                waiting.push(format!("{}@{}", e.volume, e.version));
                needed.extend(e.data_chunks().filter(|h| !arrived.contains(h)));
            }
        }
        if waiting.is_empty() {
            continue; // everything it carried is published: nothing pending
        }
        let mut missing = 0;
        for h in needed {
            if !store.has_chunk(&h).await? {
                missing += 1;
            }
        }
        out.push(SessionStatus {
            sender: hex_id(&record.sender_id),
            session: record.session_id[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            created_unix_secs: record.created_unix_secs,
            waiting_versions: waiting,
            arrived_chunks: arrived.len() as u64,
            missing_chunks: missing,
        });
    }
    Ok(out)
}

/// The text (or JSON) `replicate status` prints.
pub async fn run_status(store: &str, json: bool) -> Result<String, BackupError> {
    let store = ChunkStore::open(store, false)?;
    let all = sessions(&store).await?;
    if json {
        return Ok(serde_json::json!({ "sessions": all }).to_string());
    }
    let mut lines: Vec<String> = all
        .iter()
        .map(|s| {
            format!(
                "session {} from {}: waiting {} arrived_chunks={} missing_chunks={}",
                s.session,
                s.sender,
                if s.waiting_versions.is_empty() {
                    "nothing".to_owned()
                } else {
                    s.waiting_versions.join(",")
                },
                s.arrived_chunks,
                s.missing_chunks
            )
        })
        .collect();
    lines.push(format!("replicate status: pending_sessions={}", all.len()));
    Ok(lines.join("\n"))
}
