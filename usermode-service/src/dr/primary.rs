//! `rehydrate dr primary`: the application uses the volume through this process's NBD
//! export; every write goes through the sender core
//! (`rehydrate_driver::dr::primary`), which streams it to the DR site or keeps it local,
//! and the core's sync sends every region once. The core task performs the core's
//! actions on the volume; a connector task keeps a session with the DR site.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rehydrate_driver::dr::primary::{
    CommitTicket, HotExtents, Primary, PrimaryAction, PrimaryConfig, ReadTicket, Written,
};
use rehydrate_driver::dr::Binding;
use rehydrate_nbd::ExportError;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::export::{self, io_error, Op, Request};
use super::link::{self, Frame};
use super::meta::{self, Meta, Role};
use super::peer::{self, Peer};
use super::volume::Volume;
use super::{bind, DrRunError, PrimaryArgs};
use crate::restore::live::serve::stop_requested;

/// How often the durable sent map catches up with acknowledgements.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The activity set (see `HotExtents`): 4 MiB extents, as many as cover 4 GiB, cooled
/// after 2 s unwritten. A crash resends at most that much.
const HOT_EXTENT_BYTES: u64 = 4 << 20;
const HOT_EXTENTS_MAX: usize = 1024;
const HOT_COOL_TICKS: u64 = 10;
/// How often the background sync gets its share of `--sync-rate`.
const GRANT_EVERY: Duration = Duration::from_millis(20);
/// Wait between attempts to reach the DR site.
const RECONNECT_AFTER: Duration = Duration::from_millis(300);
/// Frames from the DR site (acknowledgements, fetches) taken at most per wake-up.
const FRAMES_PER_WAKE: usize = 64;

enum LinkEvent {
    Up(Peer, u64),
    Refused(String),
}

struct PendingWrite {
    data: Option<Bytes>,
    len: u64,
    fua: bool,
    reply: oneshot::Sender<Result<Bytes, ExportError>>,
}

/// Runs the primary until SIGINT/SIGTERM or a refusal by the DR site.
pub async fn run(args: &PrimaryArgs) -> Result<String, DrRunError> {
    let volume = Arc::new(Volume::open(&args.target)?);
    let meta_path = args
        .metadata
        .clone()
        .unwrap_or_else(|| meta::default_path(&args.target));
    let meta = match Meta::load(&meta_path)? {
        Some(m) => {
            if m.role != Role::Primary {
                return Err(DrRunError::Usage(format!(
                    "{} is a DR site's metadata, not a primary's",
                    meta_path.display()
                )));
            }
            m.check_target(&volume.pin(&args.target)?, &meta_path, &args.target)?;
            if m.geometry.volume_size_bytes() != volume.size_bytes {
                return Err(DrRunError::Usage(format!(
                    "{} is {} bytes but its DR metadata says {}",
                    args.target.display(),
                    volume.size_bytes,
                    m.geometry.volume_size_bytes()
                )));
            }
            m
        }
        None => {
            let geometry = rehydrate_driver::Geometry::new(volume.size_bytes, args.region_size)
                .map_err(|e| DrRunError::Usage(format!("{}: {e}", args.target.display())))?;
            let salt = args.target.display().to_string();
            let m = Meta {
                role: Role::Primary,
                geometry,
                binding: Some((meta::new_id(&salt), meta::new_id(&(salt + "volume")))),
                promoted: false,
                generation: 0,
                map: rehydrate_driver::dr::bits::Bits::new(geometry.region_count()),
                target: volume.pin(&args.target)?,
            };
            m.store(&meta_path)?;
            m
        }
    };
    let binding = meta.core_binding().expect("a primary is always bound");
    let geometry = meta.geometry;
    let mut core = Primary::new(PrimaryConfig::new(geometry), meta.map.clone());
    core.set_hot_extents(HotExtents::new(
        geometry,
        HOT_EXTENT_BYTES,
        HOT_EXTENTS_MAX,
        HOT_COOL_TICKS,
    ));
    core.limit_sync(args.sync_rate.is_some());
    let mut grants = tokio::time::interval(GRANT_EVERY);
    let listener = bind(&args.export).await?;
    let mut requests = export::start(
        listener,
        volume.size_bytes,
        false,
        format!("DR primary of {}", args.target.display()),
    );
    tracing::info!(export = %args.export, peer = %args.peer, "dr primary: serving");

    let (connect_tx, connect_rx) = mpsc::unbounded_channel::<()>();
    let (events_tx, mut events) = mpsc::unbounded_channel::<LinkEvent>();
    tokio::spawn(connector(args.peer.clone(), binding, connect_rx, events_tx));
    let _ = connect_tx.send(());

    let mut link: Option<Peer> = None;
    let mut writes: HashMap<u64, PendingWrite> = HashMap::new();
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut tick = tokio::time::interval(COMMIT_EVERY);
    let mut synced_said = core.is_synced();
    let mut stop = Box::pin(stop_requested());
    let (commits_tx, mut commits) = mpsc::unbounded_channel::<(CommitTicket, bool)>();
    let (region_reads_tx, mut region_reads) =
        mpsc::unbounded_channel::<(ReadTicket, Option<Vec<u8>>)>();
    let sync_reader = SyncReader {
        volume: volume.clone(),
        done: region_reads_tx,
    };
    let committer = Committer {
        volume: volume.clone(),
        meta: meta.clone(),
        path: meta_path.clone().into(),
        done: commits_tx,
    };
    loop {
        tokio::select! {
            r = requests.recv() => {
                let Some(r) = r else { break };
                waiting.push_back(r);
            }
            _ = async { link.as_ref().expect("guarded").writable().await },
                if link.as_ref().is_some_and(Peer::wants_write) => {}
            e = events.recv() => match e {
                Some(LinkEvent::Up(peer, session)) => {
                    tracing::info!(session, "dr primary: session with the DR site");
                    core.start_session(session);
                    link = Some(peer);
                }
                Some(LinkEvent::Refused(reason)) => return Err(DrRunError::Refused(reason)),
                None => break,
            },
            _ = async { link.as_ref().expect("guarded").readable().await }, if link.is_some() => {
                let peer = link.as_mut().expect("guarded");
                let mut ended = None;
                for _ in 0..FRAMES_PER_WAKE {
                    let Some(f) = peer.try_recv() else { break };
                    ended = peer::dr_message(f, "the DR site")
                        .and_then(|m| core.received(m).map_err(|e| e.to_string()))
                        .err();
                    if ended.is_some() {
                        break;
                    }
                }
                if let Some(why) = ended {
                    end_session(&mut core, &mut link, &connect_tx, &why);
                }
            }
            r = region_reads.recv() => {
                let (t, data) = r.expect("the sync reader holds a sender");
                core.region_read_owned(t, data);
                // The others that finished too: one pass below sends them all.
                while let Ok((t, data)) = region_reads.try_recv() {
                    core.region_read_owned(t, data);
                }
            }
            c = commits.recv() => {
                let (t, ok) = c.expect("the committer holds a sender");
                core.commit_done(t, ok);
            }
            _ = tick.tick() => {
                core.request_commit();
                if link.as_ref().is_some_and(Peer::is_silent) {
                    end_session(&mut core, &mut link, &connect_tx, "the DR site went silent");
                }
            }
            _ = grants.tick(), if args.sync_rate.is_some() => {
                let rate = u64::from(args.sync_rate.unwrap_or(0));
                let share = rate * GRANT_EVERY.as_millis() as u64 / 1000;
                core.grant_sync(share, share.max(u64::from(geometry.region_size_bytes())) * 2);
            }
            _ = &mut stop => break,
        }
        // Client requests, in arrival order, while the sender has room.
        while let Some(r) = waiting.front() {
            if matches!(r.op, Op::Write { .. } | Op::Zeroes { .. }) && !core.has_room() {
                break;
            }
            let r = waiting.pop_front().expect("front");
            take_request(&mut core, &volume, &mut writes, r);
        }
        // Everything the core asks for, until it asks for nothing; what it sends goes on
        // the wire at once (a fetched region's data too, without a hand-over).
        loop {
            let mut progress = false;
            while let Some(a) = core.poll_action() {
                progress = true;
                perform(&mut core, &volume, &mut writes, a, &committer, &sync_reader);
            }
            if let Some(peer) = link.as_mut() {
                let mut ended = None;
                while peer.has_room() {
                    match core.poll_send() {
                        Ok(Some(m)) => {
                            progress = true;
                            peer.queue(Frame::Dr(m));
                        }
                        Ok(None) => break,
                        Err(e) => {
                            ended = Some(e.to_string());
                            break;
                        }
                    }
                }
                if ended.is_none() {
                    ended = peer.flush_now().err().map(|e| e.to_string());
                }
                if let Some(why) = ended {
                    end_session(&mut core, &mut link, &connect_tx, &why);
                }
            }
            if !progress {
                break;
            }
        }
        if core.is_synced() != synced_said {
            synced_said = core.is_synced();
            if synced_said {
                tracing::info!("dr primary: every region is durably at the DR site");
            }
        }
    }
    let c = core.counters();
    Ok(format!(
        "dr primary: stopped durably_sent={}/{} regions_sent={} writes_streamed={} writes_local={} sessions={}",
        core.committed().count(),
        geometry.region_count(),
        c.regions_sent,
        c.writes_streamed,
        c.writes_local,
        c.sessions
    ))
}

/// Ends the session with the DR site for `why`; the connector starts the next one.
fn end_session(
    core: &mut Primary,
    link: &mut Option<Peer>,
    reconnect: &mpsc::UnboundedSender<()>,
    why: &str,
) {
    tracing::warn!(%why, "dr primary: session ended");
    core.end_session();
    *link = None;
    let _ = reconnect.send(());
}

fn take_request(
    core: &mut Primary,
    volume: &Volume,
    writes: &mut HashMap<u64, PendingWrite>,
    r: Request,
) {
    match r.op {
        Op::Read { offset, len } => {
            let _ = r.reply.send(
                volume
                    .read(offset, len)
                    .map(Bytes::from)
                    .map_err(ExportError::Io),
            );
        }
        Op::Flush => {
            let ok = volume.sync();
            core.flush_completed(ok.is_ok());
            let _ = r
                .reply
                .send(ok.map(|()| Bytes::new()).map_err(ExportError::Io));
        }
        Op::Write { offset, data, fua } => {
            let len = data.len() as u64;
            begin(core, writes, offset, len, Some(data), fua, r.reply);
        }
        Op::Zeroes { offset, len, fua } => begin(core, writes, offset, len, None, fua, r.reply),
        Op::Trim { .. } => {
            let _ = r.reply.send(Ok(Bytes::new()));
        }
    }
}

fn begin(
    core: &mut Primary,
    writes: &mut HashMap<u64, PendingWrite>,
    offset: u64,
    len: u64,
    data: Option<Bytes>,
    fua: bool,
    reply: oneshot::Sender<Result<Bytes, ExportError>>,
) {
    match core.begin_write(offset, len) {
        Ok(t) => {
            writes.insert(
                t.0,
                PendingWrite {
                    data,
                    len,
                    fua,
                    reply,
                },
            );
        }
        Err(e) => {
            let _ = reply.send(Err(io_error(e)));
        }
    }
}

fn perform(
    core: &mut Primary,
    volume: &Volume,
    writes: &mut HashMap<u64, PendingWrite>,
    action: PrimaryAction,
    committer: &Committer,
    sync_reader: &SyncReader,
) {
    match action {
        PrimaryAction::DispatchWrite(t) => {
            let w = writes.remove(&t.0).expect("a pending write");
            let offset = core.write_offset(t).expect("a known write");
            let mut result = match &w.data {
                Some(d) => volume.write(offset, d),
                None => volume.zero(offset, w.len),
            };
            let written = match &w.data {
                Some(d) => Written::Bytes(d),
                None => Written::Zeroes,
            };
            core.write_completed(t, written, result.is_ok());
            if result.is_ok() && w.fua {
                result = volume.sync();
            }
            let _ = w
                .reply
                .send(result.map(|()| Bytes::new()).map_err(ExportError::Io));
        }
        PrimaryAction::ReadRegion {
            ticket,
            offset,
            len,
            fetched: true,
            ..
        } => {
            // A DR read waits for it: read here, at once, and send it next.
            core.region_read_owned(ticket, volume.read(offset, len).ok());
        }
        PrimaryAction::ReadRegion {
            ticket,
            offset,
            len,
            fetched: false,
            ..
        } => sync_reader.start(ticket, offset, len),
        PrimaryAction::Commit(t) => committer.start(core, t),
    }
}

/// Reads the background sync's regions on blocking threads, so this task goes on
/// sending what was read meanwhile: reading and sending every region on the one task
/// that also writes the socket took the sync at about half the speed. The core's gate
/// orders each read after the writes admitted before it and holds later writes to the
/// region until it completes, wherever it runs; the result comes back on `done`.
struct SyncReader {
    volume: Arc<Volume>,
    done: mpsc::UnboundedSender<(ReadTicket, Option<Vec<u8>>)>,
}

impl SyncReader {
    fn start(&self, ticket: ReadTicket, offset: u64, len: u64) {
        let (volume, done) = (self.volume.clone(), self.done.clone());
        tokio::task::spawn_blocking(move || {
            let _ = done.send((ticket, volume.read(offset, len).ok()));
        });
    }
}

/// Runs commits of the durable sent map on a blocking thread, so client writes and the
/// sync go on during the flush and the metadata write; the result comes back on
/// `done`. The core has one commit in flight at most and holds every write to a region
/// the commit may mark until it finished, so nothing the flush must cover is written
/// meanwhile: the map was computed from writes that had completed, and they completed
/// before the flush starts here.
struct Committer {
    volume: Arc<Volume>,
    meta: Meta,
    path: Arc<std::path::Path>,
    done: mpsc::UnboundedSender<(CommitTicket, bool)>,
}

impl Committer {
    fn start(&self, core: &Primary, t: CommitTicket) {
        let flush = core.commit_needs_data_flush(t);
        let meta = Meta {
            map: core.commit_map(t).clone(),
            ..self.meta.clone()
        };
        let (volume, path, done) = (self.volume.clone(), self.path.clone(), self.done.clone());
        tokio::task::spawn_blocking(move || {
            let ok = (!flush || volume.sync().is_ok()) && meta.store(&path).is_ok();
            if !ok {
                tracing::warn!("dr primary: the durable sent map could not be written");
            }
            let _ = done.send((t, ok));
        });
    }
}

/// Keeps a session with the DR site: connects when asked, says hello, and reports a
/// session or a refusal.
async fn connector(
    peer: String,
    binding: Binding,
    mut asked: mpsc::UnboundedReceiver<()>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    while asked.recv().await.is_some() {
        loop {
            session += 1;
            match handshake(&peer, &binding, session).await {
                Ok(Ok(p)) => {
                    let _ = events.send(LinkEvent::Up(p, session));
                    break;
                }
                Ok(Err(reason)) => {
                    let _ = events.send(LinkEvent::Refused(reason));
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dr primary: DR site not reachable");
                    tokio::time::sleep(RECONNECT_AFTER).await;
                }
            }
        }
    }
}

/// `Ok(Ok(peer))`: a session; `Ok(Err(reason))`: refused; `Err`: not reachable.
async fn handshake(
    addr: &str,
    binding: &Binding,
    session: u64,
) -> Result<Result<Peer, String>, String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut p = Peer::new(stream);
    p.queue(link::primary_hello(binding, session));
    p.flush().await.map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(10), p.recv())
        .await
        .map_err(|_| "no answer to hello".to_string())?;
    match answer {
        Ok(Frame::Hello(h)) if h.protocol == link::PROTOCOL => Ok(Ok(p)),
        Ok(Frame::Error(reason)) => Ok(Err(reason)),
        Ok(_) => Ok(Err("the DR site answered hello with something else".into())),
        Err(e) => Err(e.to_string()),
    }
}
