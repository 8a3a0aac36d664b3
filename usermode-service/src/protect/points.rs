//! `rehydrate points`: the recovery points of a volume's journals, read from the store.

use std::path::PathBuf;

use rehydrate_backup::journal::format::Kind;
use rehydrate_backup::journal::{bases, Journal};
use rehydrate_backup::name::format_rfc3339;
use rehydrate_backup::{ChunkStore, VolumeName};

use super::error::ProtectError;

/// Arguments of `rehydrate points`.
#[derive(Clone, Debug, clap::Args)]
#[command(
    about = "List the recovery points of a protected volume",
    long_about = "List the recovery points of a protected volume's journals: every completed \
flush and every mark outside a gap, oldest first, each with the export name that serves it \
(`rehydrate serve` exports NAME@BASE+SEQ, NAME@mark:LABEL and NAME@time:RFC3339). Gaps \
(capture fell behind; no point inside) and damage are listed too.\n\nExample:\n  rehydrate \
points --store /var/backups --volume sys\n\nThe last line is `points: volume=NAME journals=J \
points=P marks=M gaps=G`."
)]
pub struct PointsArgs {
    /// The store (a local directory).
    #[arg(long, value_name = "STORE")]
    pub store: String,
    /// The volume.
    #[arg(long, value_name = "NAME", value_parser = parse_volume)]
    pub volume: VolumeName,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_volume(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

#[derive(serde::Serialize)]
struct PointLine<'a> {
    name: String,
    base: u32,
    seq: u64,
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    time: String,
}

/// The listing: every line but the last, then the summary line.
pub fn run(args: &PointsArgs) -> Result<(Vec<String>, String), ProtectError> {
    let store = ChunkStore::open(&args.store, false)?;
    let root: PathBuf = store
        .local_root()
        .ok_or_else(|| {
            rehydrate_backup::journal::JournalError::NeedsLocalStore(args.store.clone())
        })?
        .to_owned();
    let volume = &args.volume;
    let found = bases(&root, volume)?;
    if found.is_empty() {
        return Err(rehydrate_backup::journal::JournalError::Point(format!(
            "volume {volume} has no journal in {}",
            args.store
        ))
        .into());
    }
    let mut lines = Vec::new();
    let (mut points, mut marks, mut gaps) = (0u64, 0u64, 0u64);
    for base in &found {
        let j = Journal::open(&root, volume, *base)?;
        for p in j.points() {
            let name = match &p.label {
                Some(label) => format!("{volume}@mark:{label}"),
                None => format!("{volume}@{base}+{}", p.seq),
            };
            let time = format_rfc3339(p.time_unix_ns);
            lines.push(if args.json {
                serde_json::to_string(&PointLine {
                    name: format!("{volume}@{base}+{}", p.seq),
                    base: *base,
                    seq: p.seq,
                    kind: p.kind,
                    label: p.label.as_deref(),
                    time,
                })
                .unwrap_or_default()
            } else {
                match &p.label {
                    Some(_) => format!("{volume}@{base}+{}  mark   {time}  {name}", p.seq),
                    None => format!("{volume}@{base}+{}  flush  {time}", p.seq),
                }
            });
            points += 1;
            marks += u64::from(p.label.is_some());
        }
        for g in j.gaps() {
            gaps += 1;
            let end = g.end.map_or("open".to_owned(), |e| e.to_string());
            lines.push(if args.json {
                serde_json::json!({"gap": {"base": base, "begin": g.begin, "end": g.end}})
                    .to_string()
            } else {
                format!(
                    "gap {volume}@{base}: sequences {} to {end} (no point inside)",
                    g.begin
                )
            });
        }
        if let Some(e) = j.damage_error() {
            lines.push(if args.json {
                serde_json::json!({"damage": e.to_string()}).to_string()
            } else {
                format!("damage: {e}")
            });
        }
    }
    let summary = if args.json {
        serde_json::json!({
            "volume": volume.as_str(), "journals": found.len(), "points": points,
            "marks": marks, "gaps": gaps,
        })
        .to_string()
    } else {
        format!(
            "points: volume={volume} journals={} points={points} marks={marks} gaps={gaps}",
            found.len()
        )
    };
    Ok((lines, summary))
}
