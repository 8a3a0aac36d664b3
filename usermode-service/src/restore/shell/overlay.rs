//! The overlay mode's side of the shell (`rehydrate restore --overlay`): performs the
//! overlay engine's own actions (pieces of client requests on either file, copies
//! between them, flushes of the overlay) and runs cutovers asked for on the control
//! socket. Everything else the engine asks is an in-place engine's action and goes
//! through the shell as usual.

use std::sync::Arc;
use std::time::Instant;

use rehydrate_driver::engine::either::Core;
use rehydrate_driver::engine::overlay::MergeStart;
use rehydrate_driver::engine::{Action, Target as Device};
use rehydrate_driver::Status;
use tokio::sync::oneshot;

use super::Shell;
use crate::restore::overlay::control::{self, Answer, Command};
use crate::restore::target::Target;
use crate::source::Source;

/// The overlay file and the cutover in progress.
pub(in crate::restore) struct Side {
    file: Arc<Target>,
    commands: control::Receiver,
    /// The socket, removed with the side.
    _listening: control::Listening,
    /// The client waiting for the cutover's end, and when it began.
    waiting: Option<(oneshot::Sender<Answer>, Instant)>,
}

impl Side {
    /// The side of a restore writing `file` and taking commands from `commands`.
    pub(in crate::restore) fn new(
        file: Arc<Target>,
        commands: control::Receiver,
        listening: control::Listening,
    ) -> Side {
        Side {
            file,
            commands,
            _listening: listening,
            waiting: None,
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some((reply, _)) = self.waiting.take() {
            let _ = reply.send(Answer::Failed(
                "the restore stopped before the cutover finished; run the cutover again".into(),
            ));
        }
    }
}

/// The next cutover asked for; never, without an overlay.
pub(super) async fn next_command(side: &mut Option<Side>) -> Command {
    match side {
        Some(side) => match side.commands.recv().await {
            Some(command) => command,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Reads `[offset, offset + len)` of `from` and writes it at the same offset of `to`.
fn copy(from: &Target, to: &Target, offset: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; len as usize];
    from.read_at(offset, &mut buf)?;
    to.write_at(offset, &buf)
}

impl<S: Source> Shell<S> {
    /// Runs the overlay mode: `core` is its engine, `side` its overlay and controls.
    pub(in crate::restore) fn with_overlay(mut self, core: Core, side: Side) -> Shell<S> {
        debug_assert!(core.overlay().is_some());
        self.engine = core;
        self.overlay = Some(side);
        self
    }

    fn file(&self, device: Device) -> Option<Arc<Target>> {
        match device {
            Device::Destination => Some(Arc::clone(&self.target)),
            Device::Overlay => self.overlay.as_ref().map(|s| Arc::clone(&s.file)),
        }
    }

    /// Performs one of the overlay engine's own actions.
    pub(super) fn perform_overlay(&mut self, action: Action, more: &mut Vec<Action>) {
        match action {
            Action::Piece {
                id,
                lower,
                target,
                offset,
                len,
            } => match (self.file(target), &mut self.live) {
                (Some(file), Some(live)) => live.front.piece(id, lower, &file, offset, len),
                _ => self.engine.handle(
                    rehydrate_driver::engine::Event::LowerCompleted {
                        lower,
                        status: Status::INVALID_DEVICE_REQUEST,
                    },
                    more,
                ),
            },
            Action::Copy {
                lower,
                from,
                to,
                offset,
                len,
            } => {
                let (Some(from), Some(to)) = (self.file(from), self.file(to)) else {
                    return;
                };
                let tx = self.written_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let status = match copy(&from, &to, offset, len) {
                        Ok(()) => Status::SUCCESS,
                        Err(e) => {
                            tracing::error!(%e, offset, len, "restore: overlay-mode copy failed");
                            Status::IO_DEVICE_ERROR
                        }
                    };
                    let _ = tx.send((lower, status));
                });
            }
            Action::FlushOverlay { lower } => {
                let Some(file) = self.file(Device::Overlay) else {
                    return;
                };
                let tx = self.written_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let status = match file.flush() {
                        Ok(()) => Status::SUCCESS,
                        Err(e) => {
                            tracing::error!(%e, "restore: flushing the overlay failed");
                            Status::IO_DEVICE_ERROR
                        }
                    };
                    let _ = tx.send((lower, status));
                });
            }
            Action::DestinationRestored => tracing::info!(
                "restore: the target is completely restored; `rehydrate cutover` may merge the overlay"
            ),
            Action::Merged => {
                let copied = self
                    .engine
                    .overlay()
                    .map_or(0, |e| e.counters().merge_copied_bytes);
                tracing::info!(copied, "restore: cutover done; the volume is the target");
                if let Some((reply, began)) = self.overlay.as_mut().and_then(|s| s.waiting.take()) {
                    let _ = reply.send(Answer::Merged(format!(
                        "copied_bytes={copied} secs={:.3}",
                        began.elapsed().as_secs_f64()
                    )));
                }
            }
            Action::MergeFailed { status } => {
                let why = format!("I/O failed with status {:#010x}", status.0);
                tracing::error!(%why, "restore: the cutover stopped");
                if let Some((reply, _)) = self.overlay.as_mut().and_then(|s| s.waiting.take()) {
                    let _ = reply.send(Answer::Failed(why));
                }
            }
            other => tracing::warn!(?other, "restore: unexpected overlay action"),
        }
    }

    /// A cutover asked for on the control socket.
    pub(super) fn on_cutover(&mut self, command: Command) {
        let Some(engine) = self.engine.overlay_mut() else {
            let _ = command
                .reply
                .send(Answer::Refused("this restore has no overlay".into()));
            return;
        };
        let mut actions = Vec::new();
        match engine.merge(command.online, &mut actions) {
            Ok(MergeStart::Started) => {
                tracing::info!(online = command.online, "restore: cutover begins");
                if let Some(side) = self.overlay.as_mut() {
                    side.waiting = Some((command.reply, Instant::now()));
                }
            }
            Ok(MergeStart::AlreadyMerged) => {
                let _ = command.reply.send(Answer::Merged("already merged".into()));
            }
            Err(refused) => {
                let _ = command.reply.send(Answer::Refused(refused.to_string()));
            }
        }
        self.perform_engine(actions);
    }

    /// The overlay's part of the status snapshot.
    pub(super) fn overlay_status(&self) -> Option<crate::status::OverlayStatus> {
        let (side, engine) = (self.overlay.as_ref()?, self.engine.overlay()?);
        let state = if engine.is_merging() {
            "merging"
        } else {
            engine.durable_state().name()
        };
        Some(crate::status::OverlayStatus {
            path: std::path::absolute(side.file.path())
                .unwrap_or_else(|_| side.file.path().to_owned())
                .display()
                .to_string(),
            regions: engine.overlay_map().restored_count(),
            state: state.into(),
        })
    }
}
