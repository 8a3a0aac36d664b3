//! `forget`: remove version indexes of a volume that no keep rule keeps ([`crate::keep`]).
//!
//! Only indexes go; the chunks they alone referenced stay until `gc` deletes them. Each
//! version gets one line, `keep` or `remove` (`would remove` with `--dry-run`), with its
//! creation time, volume size and index size; the last line sums up.

use clap::Args;

use crate::error::BackupError;
use crate::keep::{decide, rfc3339, Dated, KeepPolicy};
use crate::name::VolumeName;
use crate::store::{version_path, ChunkStore};

/// Remove old versions of a volume, keeping those the rules name.
#[derive(Args, Clone, Debug)]
pub struct ForgetArgs {
    /// The store: a directory path or an object store URL (s3://bucket/prefix).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The volume whose versions to thin out.
    #[arg(long, value_name = "NAME", value_parser = parse_volume)]
    pub volume: VolumeName,
    /// Keep the N newest versions.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest version of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... of each of the last N days (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_volume(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

impl ForgetArgs {
    /// The keep rules given.
    pub fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }
}

/// What `forget` did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgetSummary {
    /// Versions kept.
    pub kept: Vec<u32>,
    /// Versions removed (or that would be).
    pub removed: Vec<u32>,
    /// Bytes of the removed index objects.
    pub removed_index_bytes: u64,
}

/// Run `forget`, printing one line per version through `print`; the last line is the
/// summary `forget: volume=NAME kept=K removed=R index_bytes=B dry_run=D`.
pub async fn run_forget(
    args: &ForgetArgs,
    print: &mut (dyn FnMut(&str) + Send),
) -> Result<ForgetSummary, BackupError> {
    let policy = args.policy();
    if policy.is_empty() {
        return Err(BackupError::EmptyKeepPolicy);
    }
    let store = ChunkStore::open(&args.store, false)?;
    let volume = &args.volume;
    let mut dated = Vec::new();
    let mut sizes = std::collections::HashMap::new();
    for version in store.versions(volume).await? {
        let index = store.read_index(volume, version).await?;
        dated.push(Dated {
            version,
            created_unix_secs: index.created_unix_secs,
        });
        let index_bytes = crate::index::HEADER_BYTES as u64
            + crate::index::ENTRY_BYTES as u64 * index.chunks.len() as u64;
        sizes.insert(
            version,
            (
                index.volume_size_bytes,
                index_bytes,
                index.created_unix_secs,
            ),
        );
    }
    let mut summary = ForgetSummary::default();
    for decision in decide(&policy, &dated) {
        let (volume_bytes, index_bytes, created) = sizes[&decision.version];
        let what = if decision.keep() {
            summary.kept.push(decision.version);
            format!("keep ({})", decision.kept_by.join(","))
        } else {
            if !args.dry_run {
                let path = version_path(volume, decision.version);
                match store.objects().delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(BackupError::store(&path, e)),
                }
            }
            summary.removed.push(decision.version);
            summary.removed_index_bytes += index_bytes;
            if args.dry_run {
                "would remove"
            } else {
                "removed"
            }
            .to_owned()
        };
        print(&format!(
            "{what} {volume}@{} created={} volume_bytes={volume_bytes} index_bytes={index_bytes}",
            decision.version,
            rfc3339(created)
        ));
    }
    print(&format!(
        "forget: volume={volume} kept={} removed={} index_bytes={} dry_run={}",
        summary.kept.len(),
        summary.removed.len(),
        summary.removed_index_bytes,
        args.dry_run
    ));
    Ok(summary)
}
