//! `rehydrate cutover`: asks the running overlay restore whose metadata is given to
//! merge the overlay into the target, and waits until the merge is durable. The
//! restore refuses (one line, nothing changed) unless every region of the target is
//! durably restored; a cutover that stopped (a crash, a kill) is run again the same way
//! once the restore runs again, and ends in the same volume.

use std::path::PathBuf;
use std::time::Duration;

use super::control::{self, Answer};
use super::OverlayError;

/// The long help of `rehydrate cutover`.
pub const CUTOVER_HELP: &str =
    "Merge the overlay of a running `rehydrate restore --overlay` into its target, \
once the target is completely and durably restored: the application's writes are copied \
into the target, the target is flushed, the metadata records the merge, and from then on the \
export serves the target itself (the overlay may be deleted). Refused, with nothing changed, \
while the target is incomplete. By default the merge runs online: it copies while the volume \
is used and holds requests only for the regions written since; --offline holds the volume \
for the whole merge. A merge that was interrupted is finished by running the cutover again.\
\n\nExample:\n  rehydrate cutover --metadata /srv/disk.img.rehydrate-meta\n\nThe last line is \
`cutover: merged copied_bytes=N secs=S`.";

/// Arguments of `rehydrate cutover`.
#[derive(Clone, Debug, clap::Args)]
pub struct CutoverArgs {
    /// The restore's metadata (TARGET.rehydrate-meta unless given otherwise).
    #[arg(long, value_name = "PATH")]
    pub metadata: PathBuf,
    /// Hold the volume for the whole merge instead of merging while it is used.
    #[arg(long)]
    pub offline: bool,
    /// Seconds to wait for the merge to end.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub timeout: u64,
}

impl CutoverArgs {
    /// Runs the cutover; returns the line to print.
    pub fn run(&self) -> Result<String, OverlayError> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        match control::request(&self.metadata, !self.offline, timeout)? {
            Answer::Merged(summary) => Ok(format!("cutover: merged {summary}")),
            Answer::Refused(why) => Err(OverlayError::Refused(why)),
            Answer::Failed(why) => Err(OverlayError::Failed(why)),
        }
    }
}
