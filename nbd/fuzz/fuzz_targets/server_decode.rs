//! Client -> server bytes: the server handshake machine, the request decoder and the
//! request rules must never panic, whatever a client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_nbd::handshake::server::{ExportInfo, Lookup, Need, ServerHandshake, ServerOutcome};
use rehydrate_nbd::rules::{block_descriptors, check_request};
use rehydrate_nbd::transmission::Request;
use rehydrate_nbd::{Decoded, Extent};

fuzz_target!(|data: &[u8]| {
    let info = ExportInfo {
        size_bytes: 1 << 30,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        can_multi_conn: true,
        description: "fuzz".into(),
        min_block_bytes: if data.get(1).is_some_and(|b| b & 1 == 1) { 512 } else { 1 },
    };

    // Handshake, then transmission on whatever bytes remain. The second input bit picks
    // a server that requires TLS; STARTTLS is then taken as succeeded at once.
    let mut machine = if data.first().is_some_and(|b| b & 2 == 2) {
        ServerHandshake::requiring_tls()
    } else {
        ServerHandshake::new()
    };
    let mut rest = data;
    let mut session = None;
    while let Ok(Decoded::Complete { message, consumed }) = machine.decode(rest) {
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
        let Some(option) = message else { continue };
        let lookup = match machine.needs(&option) {
            Need::Nothing => Lookup::Nothing,
            Need::Export(name) if name.len() % 3 == 1 => Lookup::Refused("policy".into()),
            Need::Export(name) if name.len() % 3 == 2 => Lookup::Unavailable("damaged".into()),
            Need::Export(name) => Lookup::Export((name.len() % 2 == 0).then(|| info.clone())),
            Need::List => Lookup::List(vec![("a".into(), String::new())]),
        };
        match machine.respond(option, lookup) {
            ServerOutcome::Continue | ServerOutcome::StartTls => {}
            ServerOutcome::Close => return,
            ServerOutcome::Transmission(s) => {
                session = Some(s);
                break;
            }
        }
        let _ = machine.take_output();
    }
    let Some(session) = session else { return };
    while let Ok(Decoded::Complete {
        message: (request, payload),
        consumed,
    }) = Request::decode(rest, 1 << 16)
    {
        assert_eq!(payload.len(), request.payload_len() as usize);
        let _ = check_request(&request, &session);
        let extents = [
            Extent::data(request.offset & 0xffff),
            Extent::hole(u64::from(request.length)),
        ];
        let d = block_descriptors(&extents, request.length, request.flags.bits() & 8 != 0);
        assert!(d.iter().map(|d| u64::from(d.length)).sum::<u64>() <= u64::from(request.length));
        rest = &rest[consumed..];
    }
});
