//! Server -> client bytes: the client handshake machine, the reply decoders (whole, and
//! header only for data placed straight into a buffer) and the reply assembler must
//! never panic, whatever a server sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rehydrate_nbd::assemble::{Assembly, Expect};
use rehydrate_nbd::handshake::client::{ClientHandshake, ClientStep};
use rehydrate_nbd::transmission::{decode_data_header, decode_reply, DataHeader, Reply};
use rehydrate_nbd::Decoded;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };

    // Handshake: feed everything through the machine as a server stream would arrive.
    let mut machine = if mode & 1 == 0 {
        ClientHandshake::go("export")
    } else {
        ClientHandshake::list()
    };
    // Bit 5 asks for TLS first; a STARTTLS acknowledgement is taken as a finished TLS
    // handshake and the machine carries on.
    if mode & 32 != 0 {
        machine = machine.with_starttls();
    }
    let mut rest = bytes;
    // Each step consumes at least one byte, so this is bounded by the input length.
    while let Ok(Decoded::Complete { message, consumed }) = machine.receive(rest) {
        let _ = machine.take_output();
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
        match message {
            ClientStep::Continue => {}
            ClientStep::StartTls => {
                if machine.tls_started().is_err() {
                    break;
                }
            }
            _ => break,
        }
    }

    // Transmission: decode replies and assemble them against a plausible request.
    let expect = match mode >> 1 & 3 {
        0 => Expect::Read {
            offset: 0,
            length: 4096,
        },
        1 => Expect::BlockStatus {
            length: 1 << 20,
            context_id: 1,
        },
        _ => Expect::Nothing,
    };
    let mut assembly = Some(Assembly::new(expect));
    let mut rest = bytes;
    while let Ok(Decoded::Complete { message, consumed }) =
        decode_reply(rest, |_| u32::from(mode >> 3) * 16)
    {
        assert!(consumed > 0 && consumed <= rest.len());
        match (message, assembly.take()) {
            (Reply::Simple { error, data, .. }, Some(a)) => {
                let _ = a.simple(error, data);
                assembly = Some(Assembly::new(expect));
            }
            (Reply::Chunk(chunk), Some(mut a)) => {
                if a.chunk(&chunk).is_err() {
                    break;
                }
                if chunk.done {
                    let _ = a.finish();
                    assembly = Some(Assembly::new(expect));
                } else {
                    assembly = Some(a);
                }
            }
            (_, None) => break,
        }
        rest = &rest[consumed..];
    }

    // The client's direct path: data headers, their data placed as the client does.
    let mut assembly = Assembly::new(expect);
    let mut rest = bytes;
    while let Ok(Decoded::Complete { message, consumed }) = decode_data_header(rest) {
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
        let Some(DataHeader::OffsetData {
            offset, data_len, ..
        }) = message
        else {
            continue;
        };
        let Ok(at) = assembly.data_chunk(offset, data_len) else {
            break;
        };
        let mut buffer = assembly.take_buffer();
        let n = (data_len as usize).min(rest.len());
        buffer[at..at + n].copy_from_slice(&rest[..n]);
        assembly.put_buffer(buffer);
        rest = &rest[n..];
    }
    let _ = assembly.finish();
});
