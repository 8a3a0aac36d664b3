//! The server's transmission rules as pure functions: which error a request gets before it
//! reaches storage, and how an export's extents become block status descriptors.

use crate::consts::*;
use crate::export::Extent;
use crate::handshake::Negotiated;
use crate::transmission::{BlockDescriptor, Command, Request};

/// Check a request against the negotiated session. `Err` holds the NBD error value to
/// answer with; `Ok` means storage may be called with the request as is.
///
/// Errors follow the spec's "Error values" section: unknown commands and flags and reads,
/// trims or block status past the end get `NBD_EINVAL`; writes past the end
/// `NBD_ENOSPC`; anything that modifies a read-only export `NBD_EPERM`.
pub fn check_request(request: &Request, session: &Negotiated) -> Result<(), u32> {
    let allowed = allowed_flags(request.command, session).ok_or(EINVAL)?;
    if !allowed.contains(request.flags) {
        return Err(EINVAL);
    }
    let read_only = session.flags.contains(TransmissionFlags::READ_ONLY);
    let end = request.offset.checked_add(request.length.into());
    let past_end = end.is_none_or(|end| end > session.size_bytes);
    match request.command {
        Command::Read if request.length > session.max_payload_bytes || past_end => Err(EINVAL),
        Command::Write | Command::Trim | Command::WriteZeroes if read_only => Err(EPERM),
        Command::Write if request.length > session.max_payload_bytes => Err(EINVAL),
        Command::Write | Command::WriteZeroes if past_end => Err(ENOSPC),
        Command::Trim if past_end => Err(EINVAL),
        Command::BlockStatus if request.length == 0 || past_end => Err(EINVAL),
        _ => Ok(()),
    }
}

/// Flags valid for a command in this session, or `None` for a command we do not serve.
fn allowed_flags(command: Command, session: &Negotiated) -> Option<CommandFlags> {
    // FUA is valid on every command once advertised (the spec: "even by ignoring the bit").
    let fua = if session.flags.contains(TransmissionFlags::SEND_FUA) {
        CommandFlags::FUA
    } else {
        CommandFlags::empty()
    };
    let extra = match command {
        Command::Read if session.flags.contains(TransmissionFlags::SEND_DF) => CommandFlags::DF,
        Command::Read | Command::Write | Command::Flush | Command::Trim | Command::Disconnect => {
            CommandFlags::empty()
        }
        Command::WriteZeroes => CommandFlags::NO_HOLE,
        Command::BlockStatus if session.base_allocation.is_some() => CommandFlags::REQ_ONE,
        // Block status without a selected context, CACHE (not advertised) and unknown types.
        Command::BlockStatus | Command::Cache | Command::Unknown(_) => return None,
    };
    Some(fua | extra)
}

/// Turn an export's extents for a request of `length` bytes into descriptors: zero-length
/// extents dropped, neighbours with equal status merged, the total clipped to `length`
/// (so no descriptor runs past the request), at most [`MAX_BLOCK_STATUS_DESCRIPTORS`],
/// and only the first with `req_one`. An empty result means the export said nothing.
pub fn block_descriptors(extents: &[Extent], length: u32, req_one: bool) -> Vec<BlockDescriptor> {
    let mut out: Vec<BlockDescriptor> = Vec::new();
    let mut left = length;
    for extent in extents {
        if left == 0 {
            break;
        }
        let take = u32::try_from(extent.length_bytes)
            .unwrap_or(u32::MAX)
            .min(left);
        if take == 0 {
            continue;
        }
        left -= take;
        let status = extent.status();
        let full = out.len() >= MAX_BLOCK_STATUS_DESCRIPTORS;
        match out.last_mut() {
            Some(last) if last.status == status => last.length += take,
            _ if full => break,
            _ => out.push(BlockDescriptor {
                length: take,
                status,
            }),
        }
    }
    if req_one {
        out.truncate(1);
    }
    debug_assert!(out.iter().map(|d| u64::from(d.length)).sum::<u64>() <= u64::from(length));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(read_only: bool) -> Negotiated {
        let info = crate::handshake::server::ExportInfo {
            size_bytes: 10_000,
            read_only,
            can_multi_conn: false,
            description: String::new(),
            min_block_bytes: 1,
        };
        Negotiated {
            export_name: String::new(),
            size_bytes: 10_000,
            flags: info.transmission_flags(true),
            structured_replies: true,
            base_allocation: Some(1),
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            description: String::new(),
        }
    }

    fn req(command: Command, offset: u64, length: u32, flags: CommandFlags) -> Request {
        Request {
            flags,
            command,
            cookie: 0,
            offset,
            length,
        }
    }

    #[test]
    fn spec_error_values() {
        let rw = session(false);
        let ro = session(true);
        let none = CommandFlags::empty();
        assert_eq!(
            check_request(&req(Command::Read, 0, 10_000, none), &rw),
            Ok(())
        );
        assert_eq!(
            check_request(&req(Command::Read, 1, 10_000, none), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Read, u64::MAX, 2, none), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Write, 9_999, 2, none), &rw),
            Err(ENOSPC)
        );
        assert_eq!(
            check_request(&req(Command::Write, 0, 2, none), &ro),
            Err(EPERM)
        );
        assert_eq!(
            check_request(&req(Command::Trim, 0, 2, none), &ro),
            Err(EPERM)
        );
        assert_eq!(
            check_request(&req(Command::Trim, 9_999, 2, none), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Unknown(42), 0, 0, none), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Read, 0, 1, CommandFlags::REQ_ONE), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(&req(Command::Read, 0, 1, CommandFlags::DF), &rw),
            Ok(())
        );
        assert_eq!(
            check_request(&req(Command::BlockStatus, 0, 0, none), &rw),
            Err(EINVAL)
        );
        assert_eq!(
            check_request(
                &req(Command::Read, 0, MAX_PAYLOAD_BYTES + 1, none),
                &session(false)
            ),
            Err(EINVAL)
        );
        let mut no_meta = session(true);
        no_meta.base_allocation = None;
        assert_eq!(
            check_request(&req(Command::BlockStatus, 0, 1, none), &no_meta),
            Err(EINVAL)
        );
    }

    proptest! {
        #[test]
        fn descriptors_never_exceed_request(
            lens in proptest::collection::vec((0u64..100_000, any::<bool>()), 0..50),
            length in 1u32..1_000_000,
            req_one in any::<bool>(),
        ) {
            let extents: Vec<Extent> = lens.iter().map(|&(l, h)| if h { Extent::hole(l) } else { Extent::data(l) }).collect();
            let d = block_descriptors(&extents, length, req_one);
            let total: u64 = d.iter().map(|d| u64::from(d.length)).sum();
            prop_assert!(total <= u64::from(length));
            prop_assert!(d.iter().all(|d| d.length > 0));
            prop_assert!(d.windows(2).all(|w| w[0].status != w[1].status));
            if req_one { prop_assert!(d.len() <= 1); }
            let given: u64 = extents.iter().map(|e| e.length_bytes).sum();
            if !req_one {
                prop_assert_eq!(total, given.min(u64::from(length)));
            }
        }
    }
}
