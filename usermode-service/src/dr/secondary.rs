//! `rehydrate dr secondary`: the DR site. Its volume is served read-only over NBD at
//! once; the applier core (`rehydrate_driver::dr::secondary`) serves what it holds,
//! fetches what a read misses with priority over the sync, applies the primary's stream
//! in order, and after a restart trusts nothing it holds until the primary's first
//! session said what changed. A fresh DR site learns the volume's size from the first
//! primary that attaches and binds to it; any other primary or volume is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rehydrate_backup::replicate::conn::ConnError;
use rehydrate_driver::dr::bits::Bits;
use rehydrate_driver::dr::secondary::{
    CommitTicket, Secondary, SecondaryAction, SecondaryConfig, WriteTicket,
};
use rehydrate_driver::dr::wire::PAYLOAD_MAX_BYTES;
use rehydrate_driver::dr::{Binding, LocalData};
use rehydrate_driver::Geometry;
use rehydrate_nbd::ExportError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::export::{self, io_error, Op, Request};
use super::link::{self, Frame};
use super::meta::{self, Meta, Role};
use super::peer::{self, Peer};
use super::volume::Volume;
use super::{bind, DrRunError, SecondaryArgs};
use crate::restore::live::serve::stop_requested;

/// How often what was applied is made durable and acknowledged.
const ACK_EVERY: Duration = Duration::from_millis(100);
/// Runs of local writes at least this long start their writeback at once.
const WRITEBACK_RUN_MIN_BYTES: u64 = 1 << 20;
/// Frames taken from the link at most per wake-up of the core task.
const FRAMES_PER_WAKE: usize = 64;

struct Attach {
    peer: Peer,
    binding: Binding,
    session: u64,
}

/// A finished commit: its ticket and the metadata it wrote, or `None` when it failed.
type CommitResult = (CommitTicket, Option<Meta>);
/// A finished local write: its ticket and whether it succeeded.
type WriteResult = (WriteTicket, bool);

struct Site {
    core: Secondary,
    /// Shared with the commit running on a blocking thread.
    volume: Arc<Volume>,
    meta: Meta,
    meta_path: Arc<std::path::Path>,
    reads: HashMap<u64, oneshot::Sender<Result<Bytes, ExportError>>>,
    commits: mpsc::UnboundedSender<CommitResult>,
    writes: mpsc::UnboundedSender<WriteResult>,
}

/// Runs the DR site until SIGINT/SIGTERM.
pub async fn run(args: &SecondaryArgs) -> Result<String, DrRunError> {
    let meta_path = args
        .metadata
        .clone()
        .unwrap_or_else(|| meta::default_path(&args.target));
    // Locked before anything is written: one process per volume.
    let fresh = !meta_path.exists();
    let mut volume = match fresh {
        false => Volume::open(&args.target)?,
        true => Volume::open_or_create(&args.target)?,
    };
    // A fresh DR site overwrites its volume: one that already holds something (a file
    // with data, any block device) is taken only when asked for.
    if fresh && volume.size_bytes > 0 && !args.force {
        return Err(DrRunError::Usage(format!(
            "{} already holds {} bytes and has no DR metadata ({}): a new DR copy would \
             overwrite it; give a new path, or --force to overwrite it",
            args.target.display(),
            volume.size_bytes,
            meta_path.display()
        )));
    }
    let listener = bind(&args.listen).await?;
    let export_listener = bind(&args.export).await?;
    let (attach_tx, mut attaches) = mpsc::unbounded_channel::<Attach>();
    tokio::spawn(accept(listener, attach_tx));
    let mut stop = Box::pin(stop_requested());

    let mut pending_first: Option<Attach> = None;
    let meta = match Meta::load(&meta_path)? {
        Some(m) => m,
        None => {
            // A fresh DR site: the first primary says what the volume is.
            tracing::info!("dr secondary: waiting for the first primary");
            let a = tokio::select! {
                a = attaches.recv() => a.ok_or_else(|| DrRunError::Usage("listener ended".into()))?,
                _ = &mut stop => return Ok("dr secondary: stopped before any primary".into()),
            };
            let geometry = Geometry::new(a.binding.volume_size_bytes, a.binding.region_size_bytes)
                .map_err(|e| DrRunError::Usage(format!("the primary's volume: {e}")))?;
            volume.set_size(geometry.volume_size_bytes())?;
            let m = Meta {
                role: Role::Secondary,
                geometry,
                binding: None,
                promoted: false,
                generation: 0,
                map: Bits::new(geometry.region_count()),
                target: volume.pin(&args.target)?,
            };
            m.store(&meta_path)?;
            pending_first = Some(a);
            m
        }
    };
    if meta.role != Role::Secondary {
        return Err(DrRunError::Usage(format!(
            "{} is a primary's metadata, not a DR site's",
            meta_path.display()
        )));
    }
    if meta.promoted {
        return Err(DrRunError::Usage(format!(
            "{} was promoted: it is a primary volume now, not a DR copy",
            args.target.display()
        )));
    }
    meta.check_target(&volume.pin(&args.target)?, &meta_path, &args.target)?;
    if volume.size_bytes != meta.geometry.volume_size_bytes() {
        return Err(DrRunError::Usage(format!(
            "{} is {} bytes but its DR metadata says {}",
            args.target.display(),
            volume.size_bytes,
            meta.geometry.volume_size_bytes()
        )));
    }
    let core = Secondary::new(
        SecondaryConfig::new(meta.geometry),
        meta.core_binding(),
        meta.map.clone(),
        meta.generation,
    );
    let mut requests = export::start(
        export_listener,
        volume.size_bytes,
        true,
        format!("DR copy in {}", args.target.display()),
    );
    tracing::info!(export = %args.export, listen = %args.listen, "dr secondary: serving");
    let (commits_tx, mut commits) = mpsc::unbounded_channel::<CommitResult>();
    let (writes_tx, mut writes) = mpsc::unbounded_channel::<WriteResult>();
    let mut site = Site {
        core,
        volume: Arc::new(volume),
        meta,
        meta_path: meta_path.into(),
        reads: HashMap::new(),
        commits: commits_tx,
        writes: writes_tx,
    };
    let mut link: Option<Peer> = None;
    if let Some(a) = pending_first.take() {
        link = site.attach(a).await;
    }
    let mut tick = tokio::time::interval(ACK_EVERY);
    loop {
        tokio::select! {
            r = requests.recv() => {
                let Some(r) = r else { break };
                site.request(r);
            }
            a = attaches.recv() => {
                let Some(a) = a else { break };
                if link.take().is_some() {
                    site.core.detach();
                }
                link = site.attach(a).await;
            }
            _ = async { link.as_ref().expect("guarded").readable().await },
                if link.is_some() && site.core.has_room(PAYLOAD_MAX_BYTES as u64 + 64) => {
                // Whatever already arrived goes in before the stream is applied, so one
                // wake-up applies a batch rather than a frame.
                let peer = link.as_mut().expect("guarded");
                let mut ended = None;
                for _ in 0..FRAMES_PER_WAKE {
                    if ended.is_some() || !site.core.has_room(PAYLOAD_MAX_BYTES as u64 + 64) {
                        break;
                    }
                    let Some(f) = peer.try_recv() else { break };
                    ended = site.take_frame(f);
                }
                if let Some(why) = ended {
                    site.end_session(&mut link, &why);
                }
            }
            w = writes.recv() => {
                let mut done = w.into_iter().chain(std::iter::from_fn(|| writes.try_recv().ok()));
                // Those that finished together, in one pass.
                let ended = done.find_map(|(t, ok)| site.core.local_write_done(t, ok).err());
                if let Some(e) = ended {
                    site.end_session(&mut link, &e.to_string());
                }
            }
            c = commits.recv() => {
                let (t, stored) = c.expect("the site holds a sender");
                let ok = stored.is_some();
                if let Some(m) = stored {
                    site.meta = m;
                }
                site.core.commit_done(t, ok);
            }
            _ = async { link.as_ref().expect("guarded").writable().await },
                if link.as_ref().is_some_and(Peer::wants_write) => {}
            _ = tick.tick() => {
                site.core.tick();
                if link.as_ref().is_some_and(Peer::is_silent) {
                    site.end_session(&mut link, "the primary went silent");
                }
            }
            _ = &mut stop => break,
        }
        if let Err(why) = site.drive(link.as_mut()) {
            site.end_session(&mut link, &why);
        }
    }
    let c = site.core.counters();
    Ok(format!(
        "dr secondary: stopped present={}/{} generation={} regions_applied={} writes_applied={} fetches={} reads={}",
        site.core.present().count(),
        site.meta.geometry.region_count(),
        site.core.generation(),
        c.regions_applied,
        c.writes_applied,
        c.fetches,
        c.reads
    ))
}

impl Site {
    /// Hands a frame from the primary to the core; why the session ends, if it does.
    fn take_frame(&mut self, f: Result<Frame, ConnError>) -> Option<String> {
        peer::dr_message(f, "the primary")
            .and_then(|m| self.core.received(m).map_err(|e| e.to_string()))
            .err()
    }

    /// Ends the session with the primary for `why` (its next hello starts another).
    fn end_session(&mut self, link: &mut Option<Peer>, why: &str) {
        tracing::warn!(%why, "dr secondary: session ended");
        self.core.detach();
        *link = None;
    }

    /// Answers a primary's hello: a session, or a refusal said to the primary.
    async fn attach(&mut self, mut a: Attach) -> Option<Peer> {
        match self.core.attach(a.session, a.binding) {
            Ok(()) => {
                let id = self.meta.binding.map_or([0; 16], |b| b.1);
                a.peer.queue(link::secondary_hello(id));
                tracing::info!(
                    session = a.session,
                    "dr secondary: session with the primary"
                );
                Some(a.peer)
            }
            Err(e) => {
                tracing::warn!(error = %e, "dr secondary: refused a primary");
                a.peer.queue(Frame::Error(e.to_string()));
                let _ = a.peer.flush().await;
                None
            }
        }
    }

    fn request(&mut self, r: Request) {
        match r.op {
            Op::Read { offset, len } => match self.core.read(offset, len) {
                Ok(t) => {
                    self.reads.insert(t.0, r.reply);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(io_error(e)));
                }
            },
            Op::Flush | Op::Trim { .. } => {
                let _ = r.reply.send(Ok(Bytes::new()));
            }
            Op::Write { .. } | Op::Zeroes { .. } => {
                let _ = r.reply.send(Err(ExportError::ReadOnly));
            }
        }
    }

    /// Performs what the core asks and sends what it says, until it says nothing.
    /// Fetches go on the wire here, as soon as the core asked for them.
    fn drive(&mut self, mut link: Option<&mut Peer>) -> Result<(), String> {
        loop {
            let mut progress = false;
            let mut writes = Vec::new();
            while let Some(a) = self.core.poll_action() {
                progress = true;
                self.perform(a, &mut writes);
            }
            self.start_writes(writes);
            if let Some(peer) = link.as_deref_mut() {
                while peer.has_room() {
                    let Some(m) = self.core.poll_send() else {
                        break;
                    };
                    progress = true;
                    peer.queue(Frame::Dr(m));
                }
                peer.flush_now().map_err(|e| e.to_string())?;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Starts the local writes the core asked for, in the order asked, each run of
    /// adjacent byte writes as one vectored write on one blocking thread (the sync's
    /// regions arrive in order, so a pass gathers runs of them).
    ///
    /// Why off this task: receiving, decoding and writing every region on the one task
    /// kept the initial sync at the speed of that task's core; and why in runs: the
    /// file's writers take its lock one at a time, so one call per run moves the same
    /// bytes with a fraction of the calls and of the waiting for that lock. The core's
    /// gate holds anything touching these bytes until each write is reported done,
    /// wherever it runs, and counts an item applied only then; the results come back on
    /// `writes`, a run's one result for each of its items.
    fn start_writes(&self, writes: Vec<(WriteTicket, u64, LocalData)>) {
        let mut writes = writes.into_iter().peekable();
        while let Some((ticket, offset, data)) = writes.next() {
            let (volume, done) = (self.volume.clone(), self.writes.clone());
            let data = match data {
                LocalData::Zeroes(len) => {
                    tokio::task::spawn_blocking(move || {
                        let _ = done.send((ticket, volume.zero(offset, len).is_ok()));
                    });
                    continue;
                }
                LocalData::Bytes(data) => data,
            };
            let mut end = offset + data.len() as u64;
            let mut run = vec![(ticket, data)];
            while let Some((_, at, LocalData::Bytes(next))) = writes.peek() {
                if *at != end {
                    break;
                }
                end += next.len() as u64;
                if let Some((t, _, LocalData::Bytes(next))) = writes.next() {
                    run.push((t, next));
                }
            }
            tokio::task::spawn_blocking(move || {
                let parts: Vec<&[u8]> = run.iter().map(|(_, d)| &d[..]).collect();
                let ok = volume.write_run(offset, &parts).is_ok();
                // A bulk run (the sync at full speed) starts going to the disk now, so
                // the commit that ends the sync finds little left to write. Single
                // regions (fetches a reader waits for, a throttled sync) are left to
                // the commit's flush: device writes started for each competed with the
                // clients' reads (a DR miss's p99 rose by half).
                if ok && end - offset >= WRITEBACK_RUN_MIN_BYTES {
                    volume.start_writeback(offset, end - offset);
                }
                for (t, _) in run {
                    let _ = done.send((t, ok));
                }
            });
        }
    }

    /// Performs `a`; a local write is gathered into `writes` for
    /// [`Site::start_writes`].
    fn perform(&mut self, a: SecondaryAction, writes: &mut Vec<(WriteTicket, u64, LocalData)>) {
        match a {
            SecondaryAction::WriteLocal {
                ticket,
                offset,
                data,
            } => writes.push((ticket, offset, data)),
            SecondaryAction::ReadLocal {
                ticket,
                offset,
                len,
            } => {
                let data = self.volume.read(offset, len);
                self.core.read_done(ticket);
                if let Some(reply) = self.reads.remove(&ticket.0) {
                    let _ = reply.send(data.map(Bytes::from).map_err(ExportError::Io));
                }
            }
            SecondaryAction::ReadServed { ticket, data } => {
                if let Some(reply) = self.reads.remove(&ticket.0) {
                    let _ = reply.send(Ok(Bytes::from(data)));
                }
            }
            SecondaryAction::Commit(t) => {
                // The flush and the metadata write run on a blocking thread so the
                // stream keeps being applied meanwhile. Every item the state counts
                // as applied was written before this point, so the flush covers it;
                // writes applied later are only in a later commit's state.
                let state = self.core.commit_state(t);
                let meta = Meta {
                    map: state.present.clone(),
                    generation: state.generation,
                    binding: state.binding.map(|b| (b.primary_id, b.volume_id)),
                    ..self.meta.clone()
                };
                let (volume, path, done) = (
                    self.volume.clone(),
                    self.meta_path.clone(),
                    self.commits.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let ok = volume.sync().is_ok() && meta.store(&path).is_ok();
                    if !ok {
                        tracing::warn!("dr secondary: the present map could not be written");
                    }
                    let _ = done.send((t, ok.then_some(meta)));
                });
            }
        }
    }
}

/// Accepts primaries: reads each one's hello and hands it over.
async fn accept(listener: TcpListener, attaches: mpsc::UnboundedSender<Attach>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = attaches.clone();
        tokio::spawn(async move {
            if let Some(a) = hello(stream).await {
                let _ = tx.send(a);
            }
        });
    }
}

async fn hello(stream: TcpStream) -> Option<Attach> {
    let mut peer = Peer::new(stream);
    let first = tokio::time::timeout(Duration::from_secs(10), peer.recv())
        .await
        .ok()?
        .ok()?;
    let Frame::Hello(h) = first else {
        return None;
    };
    match link::parse_primary_hello(&h) {
        Ok((binding, session)) => Some(Attach {
            peer,
            binding,
            session,
        }),
        Err(reason) => {
            peer.queue(Frame::Error(reason.into()));
            let _ = peer.flush().await;
            None
        }
    }
}
