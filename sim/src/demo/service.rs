//! The demo's service: `rehydrate attach`'s own session (the real hydrator with a real
//! NBD source, talking to the filter only through the driver link, as the Windows
//! service does through `DeviceIoControl`), with the status file `rehydrate status`
//! reads. The only difference is how it ends: the simulated machine, not Ctrl-C, says
//! when it is gone, and whether it saw every region restored first.

use std::sync::Arc;
use std::time::Duration;

use rehydrate_driver::abi::Attach;
use rehydrate_driver::Geometry;
use rehydrate_service::attach::session::{self, SessionConfig, SessionReport, Stop};
use rehydrate_service::hydrator::HydratorConfig;
use rehydrate_service::link::ChannelLink;
use rehydrate_service::restore::StatusReport;
use rehydrate_service::source::NbdSource;
use rehydrate_service::status::StatusFile;
use tokio::sync::oneshot;

/// `GET_MISSING` requests kept pended at the driver.
const GET_MISSING_PENDED: usize = 4;

/// What the service needs to know.
pub struct ServiceSetup {
    /// The volume.
    pub geometry: Geometry,
    /// The restore it attaches to.
    pub attach: Attach,
    /// The hydrator's settings.
    pub hydrator: HydratorConfig,
    /// Where `rehydrate status` looks, if it could be prepared.
    pub status: Option<StatusFile>,
    /// The source's URL, for the status file.
    pub source_url: String,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress_bar: bool,
}

/// Runs the service until the machine is gone (`stop` fires, `true` when it saw every
/// region restored) or the session fails.
pub async fn run(
    link: ChannelLink,
    source: Arc<NbdSource>,
    setup: ServiceSetup,
    stop: oneshot::Receiver<bool>,
) -> Result<SessionReport, session::SessionError> {
    let config = SessionConfig {
        geometry: setup.geometry,
        attach: setup.attach,
        hydrator: setup.hydrator,
        pended: GET_MISSING_PENDED,
        pend_retry: Duration::from_millis(100),
        progress_bar: setup.progress_bar,
    };
    let status = StatusReport::with_file(
        setup.status,
        &setup.source_url,
        "simulated volume (rehydrate-sim demo)",
    );
    let gone = async {
        Stop::DriverGone {
            restored: stop.await.unwrap_or(false),
        }
    };
    session::run(link, source, config, status, gone).await
}
