//! Who is to blame, and whether everything can still make progress.
//!
//! **Blame.** The oracle judges each failed request on its own (rule 5): a status is
//! explained only by a fault that hit that request while it was alive. The simulator
//! knows where it injected each fault and tells the oracle whom it hit:
//! * a fetch the service gave up on hits the live requests that need a region of its
//!   range that the driver had asked for and not received — never one whose data was
//!   on its way (a hydrate write or an overwriting write at the device), there already,
//!   or not waited for yet ([`fetch_failed`]);
//! * a hydrate write that failed hits the live requests that need its regions, and a
//!   failed flush of the filter's own hits the FUA writes waiting on it
//!   ([`lower_reported`]); media errors on a request's own I/O, failed metadata commits
//!   and cancels are reported where they happen (`device.rs`, `sim.rs`).
//!
//! **Liveness**, checked after every step while the restore runs ([`check_progress`]):
//! every held request waits behind an earlier request or on a region somebody is
//! getting (the engine's own account); every region the engine asked for is known to
//! the service (queued at the filter for it, or busy or queued in the hydrator); every
//! region whose data the service delivered but the filter dropped, and which is missing
//! again, is asked for again; no held request waits longer than a bound without a fault
//! to blame; and the engine keeps its stated bounds (it asks only for regions a held
//! request still needs, a window of them per request).

use std::ops::Range;

use rehydrate_driver::abi::DriverState;
use rehydrate_driver::filter::Filter;
use rehydrate_driver::{FailReason, Status};

use crate::oracle::OpKind;
use crate::service::Service;
use crate::wdf::{LowerUse, SimWdf};

/// Faults this long before a request was issued may still delay it (an outage lasts up
/// to three hydrator deadlines, a restart of the service a few seconds).
pub const FAULT_SHADOW_NS: u64 = 30_000_000_000;

/// Regions `[first, first + count)` of a volume of `sectors`, as a sector range.
fn region_sectors(region: u64, region_sectors: u64, volume_sectors: u64) -> Range<u64> {
    let start = region * region_sectors;
    start..(start + region_sectors).min(volume_sectors)
}

/// True when the filter has a hydrate write of `region` at the device.
fn hydrating(wdf: &SimWdf, sectors: &Range<u64>) -> bool {
    wdf.lowers.values().any(|l| {
        matches!(*l, LowerUse::Hydrate { first_sector, sectors: n }
            if first_sector < sectors.end && sectors.start < first_sector + n)
    })
}

/// True when a file-system write or trim at the device (as the filter sees it)
/// overwrites the sectors wholly.
fn claimed(wdf: &SimWdf, sectors: &Range<u64>) -> bool {
    let oracle = &wdf.k.oracle;
    wdf.lowers.values().any(|l| match *l {
        LowerUse::App { op } => {
            let o = oracle.op(op);
            o.live
                && matches!(o.kind, OpKind::Write { .. } | OpKind::Trim)
                && o.sector <= sectors.start
                && sectors.end <= o.sector + o.count
        }
        _ => false,
    })
}

/// True when the filter's write capture holds a write (not sent yet) that covers
/// `sectors` wholly: it claims them as a write at the device does.
fn capture_holds(f: &Filter<SimWdf>, sectors: &Range<u64>) -> bool {
    f.capture().is_some_and(|t| {
        t.held_writes().any(|(offset, len)| {
            offset / 512 <= sectors.start && sectors.end <= (offset + len) / 512
        })
    })
}

/// The service gives up on `[offset, offset+len)`: the live requests that need a region
/// of it that the driver had asked for and not received may fail with the reason's
/// status. Regions of the range nobody asked for (the service reported a wider range,
/// a whole chunk) hit nobody: their data was on its way (hydrating, overwritten),
/// there already, or not waited for yet.
pub fn fetch_failed(
    wdf: &mut SimWdf,
    filter: &Option<Filter<SimWdf>>,
    offset: u64,
    len: u64,
    reason: FailReason,
) {
    let Some(f) = filter.as_ref() else { return };
    let rs = wdf.k.oracle.region_sectors();
    let first = offset / 512 / rs;
    let end = ((offset + len) / 512).div_ceil(rs);
    let hits: Vec<Range<u64>> = f
        .engine()
        .requested_runs()
        .map(|r| r.start.max(first)..r.end.min(end))
        .filter(|r| !r.is_empty())
        .collect();
    for r in hits {
        debug_assert!(r.clone().all(|region| {
            let sectors = region_sectors(region, rs, wdf.k.oracle.sectors());
            !f.engine().map().is_restored(region)
                && !hydrating(wdf, &sectors)
                && !claimed(wdf, &sectors)
        }));
        wdf.k.oracle.excuse_needing(r, reason.status());
    }
}

/// The filter is about to hear that its lower I/O `lower` completed with `status`:
/// from now on the engine no longer sees it at the device.
pub fn lower_reported(wdf: &mut SimWdf, lower: u64, status: Status) {
    let Some(use_) = wdf.lowers.remove(&lower) else {
        return;
    };
    if status.is_success() {
        return;
    }
    let rs = wdf.k.oracle.region_sectors();
    match use_ {
        LowerUse::Hydrate {
            first_sector,
            sectors,
        } => {
            let regions = first_sector / rs..(first_sector + sectors).div_ceil(rs);
            wdf.k
                .oracle
                .excuse_needing(regions, Status::IO_DEVICE_ERROR);
        }
        LowerUse::Flush => wdf.k.oracle.excuse_durability(Status::IO_DEVICE_ERROR),
        LowerUse::App { .. } => {}
    }
}

/// What the liveness checks need to know about the run.
pub struct Progress<'a> {
    /// The filter (absent while the machine is down).
    pub filter: &'a Option<Filter<SimWdf>>,
    /// The service.
    pub service: &'a Service,
    /// The most recent fault that can delay a held request (link, service, media).
    pub last_delay_fault_ns: Option<u64>,
    /// A held request may wait this long with no fault to blame.
    pub wait_bound_ns: u64,
    /// Also check that the service knows what the engine asked for (costlier; a region
    /// nobody will fetch stays so, so checking every few steps finds it as surely).
    pub service_knowledge: bool,
}

/// The checks of the module comment; `Err` says what is stuck.
pub fn check_progress(wdf: &SimWdf, p: &Progress<'_>) -> Result<(), String> {
    let Some(f) = p.filter.as_ref() else {
        return Ok(());
    };
    let engine = f.engine();
    if let Err(stall) = engine.check_progress() {
        return Err(format!("held request cannot make progress: {stall:?}"));
    }
    let oracle = &wdf.k.oracle;
    let now = wdf.k.now_ns();
    let rs = oracle.region_sectors();
    let volume = oracle.sectors();
    // Called after every step: only the ops in flight are walked (in the table's
    // order, which the seed fixes, so the first op reported is the same each run).
    let held_ops = || oracle.live_unordered().filter(|o| o.held && !o.forwarded);
    let mut held_count = 0u64;
    for op in held_ops() {
        held_count += 1;
        let waited = now.saturating_sub(op.issued_ns);
        let blamed = p
            .last_delay_fault_ns
            .is_some_and(|t| t + FAULT_SHADOW_NS >= op.issued_ns);
        if waited > p.wait_bound_ns && !blamed {
            return Err(format!(
                "{:?} #{} of sectors {}+{} has been held for {} ms with no fault to blame",
                op.kind,
                op.seq,
                op.sector,
                op.count,
                waited / 1_000_000
            ));
        }
    }
    // Every region asked for is still needed by a held request, within the window.
    let window = engine.config().ask_window_regions;
    let mut asked = 0u64;
    let needs = |o: &crate::oracle::Op, regions: &Range<u64>| {
        o.needed_regions(rs, volume)
            .into_iter()
            .flatten()
            .any(|n| n.start <= regions.start && regions.end <= n.end)
    };
    for run in engine.requested_runs() {
        asked += run.end - run.start;
        // Usually one held request needs the whole run; else region by region.
        if held_ops().any(|o| needs(o, &run)) {
            continue;
        }
        for region in run.clone() {
            if !held_ops().any(|o| needs(o, &(region..region + 1))) {
                return Err(format!(
                    "region {region} is still asked of the service but no held request needs it"
                ));
            }
        }
    }
    if asked > held_count * window {
        return Err(format!(
            "{asked} regions asked of the service for {held_count} held requests (window {window})"
        ));
    }
    if asked == 0 && p.service.delivered_but_dropped().next().is_none() {
        return Ok(());
    }
    // The service knows every region it was asked for, and every region whose data it
    // delivered but which is missing again.
    let service_runs = p.service.is_running() && f.state() == DriverState::Running;
    if !service_runs || !p.service_knowledge {
        return Ok(());
    }
    let known = |region: u64| {
        let bytes = region * rs * 512;
        p.service.tracks(region..region + 1) || f.missing_ranges().any(|m| m.contains(&bytes))
    };
    for run in engine.requested_runs() {
        if let Some(region) = run.clone().find(|&r| !known(r)) {
            return Err(format!(
                "region {region} is asked of the service but the service does not know it"
            ));
        }
    }
    for region in p.service.delivered_but_dropped() {
        if engine.map().is_restored(region) {
            continue;
        }
        let sectors = region_sectors(region, rs, volume);
        let got = engine.requested_runs().any(|r| r.contains(&region))
            || hydrating(wdf, &sectors)
            || claimed(wdf, &sectors)
            || capture_holds(f, &sectors)
            || p.service.hydrating(region)
            || known(region);
        if !got {
            return Err(format!(
                "region {region} is missing again after the filter dropped the data the service delivered for it, and nobody will fetch it"
            ));
        }
    }
    Ok(())
}
