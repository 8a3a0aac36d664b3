//! Our client against our server over real loopback sockets, plus raw-protocol checks of
//! the server's error answers (built with the sans-IO codec, so we can send what our own
//! client never would).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rehydrate_nbd::consts::*;
use rehydrate_nbd::option::{ClientOption, GoRequest, OptionReply, ReplyBody};
use rehydrate_nbd::transmission::{decode_reply, Command, Reply, Request};
use rehydrate_nbd::{
    Client, ClientOptions, Decoded, Error, Export, Extent, MapCatalog, MemExport,
    ReconnectingClient, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut data = vec![0u8; size];
    for (i, block) in data.chunks_mut(64 * 1024).enumerate() {
        if i % 3 != 2 {
            rng.fill(block);
        }
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_writes_and_block_status() {
    let size = 5 * 1024 * 1024 + 4000;
    let data = image(size, 7);
    let mem = Arc::new(MemExport::new(data.clone(), false));
    let ro: Arc<dyn Export> = Arc::new(MemExport::new(data.clone(), true));
    let rw: Arc<dyn Export> = mem.clone();
    let (addr, server) =
        start_server(Arc::new(MapCatalog::new().with("rw", rw).with("ro", ro))).await;

    for structured in [true, false] {
        let options = ClientOptions {
            structured_replies: structured,
            max_in_flight: 8,
            ..ClientOptions::default()
        };
        let client = Client::connect_with(addr, "ro", options).await.unwrap();
        assert_eq!(client.size_bytes(), size as u64);
        assert_eq!(client.info().structured_replies, structured);
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let c = client.clone();
            let offset = (i * 81_234) % (size - 70_000);
            tasks.push(tokio::spawn(async move {
                (offset, c.read(offset as u64, 70_000).await.unwrap())
            }));
        }
        for t in tasks {
            let (offset, got) = t.await.unwrap();
            assert_same(&got, &data[offset..offset + 70_000], "pipelined read");
        }
        let extents = client.block_status(0, size as u64).await.unwrap();
        assert_eq!(
            extents.iter().map(|e| e.length_bytes).sum::<u64>(),
            size as u64
        );
        if structured {
            // MemExport reports zero 4 KiB blocks as holes: every third 64 KiB block.
            assert_eq!(extents[0], Extent::data(128 * 1024));
            assert_eq!(extents[1], Extent::hole(64 * 1024));
        }
        client.disconnect().await.unwrap();
    }

    // Writes from several connections, then read back from a fresh one.
    let mut writers = Vec::new();
    for w in 0..4u8 {
        writers.push(tokio::spawn(async move {
            let c = Client::connect(addr, "rw").await.unwrap();
            c.write(u64::from(w) * 100_000, vec![w + 1; 50_000])
                .await
                .unwrap();
            c.flush().await.unwrap();
            c.disconnect().await.unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let snapshot = mem.snapshot();
    for w in 0..4usize {
        assert!(snapshot[w * 100_000..w * 100_000 + 50_000]
            .iter()
            .all(|&b| b == w as u8 + 1));
    }
    let c = Client::connect(addr, "rw").await.unwrap();
    c.write_zeroes(0, 8192).await.unwrap();
    c.trim(8192, 4096).await.unwrap();
    assert!(c.read(0, 8192).await.unwrap().iter().all(|&b| b == 0));
    assert!(matches!(
        Client::connect(addr, "missing").await,
        Err(Error::UnknownExport { .. })
    ));
    let names = Client::list_exports(addr).await.unwrap();
    assert_eq!(
        names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["ro", "rw"]
    );
    server.abort();
}

/// Open a raw session: GO with structured replies, on export `name`.
async fn raw_session(
    addr: std::net::SocketAddr,
    name: &str,
    structured: bool,
) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; GREETING_BYTES];
    s.read_exact(&mut greeting).await.unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(
        &(ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES)
            .bits()
            .to_be_bytes(),
    );
    ClientOption::Unknown {
        option: 77,
        data: vec![1, 2, 3],
    }
    .encode(&mut out);
    ClientOption::StartTls.encode(&mut out);
    if structured {
        ClientOption::StructuredReply.encode(&mut out);
    }
    ClientOption::Go(GoRequest {
        name: name.into(),
        info_requests: vec![INFO_NAME],
    })
    .encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut codes = Vec::new();
    loop {
        match OptionReply::decode(&buf).unwrap() {
            Decoded::Incomplete { .. } => {
                let mut tmp = [0u8; 4096];
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0, "server hung up during the handshake");
                buf.extend_from_slice(&tmp[..n]);
            }
            Decoded::Complete { message, consumed } => {
                buf.drain(..consumed);
                codes.push((message.option, message.code()));
                if message.option == OPT_GO && !matches!(message.body, ReplyBody::Info(_)) {
                    break;
                }
            }
        }
    }
    assert_eq!(codes[0], (77, REP_ERR_UNSUP), "unknown option");
    assert_eq!(codes[1], (OPT_STARTTLS, REP_ERR_UNSUP), "no TLS");
    assert!(codes.contains(&(OPT_GO, REP_INFO)));
    assert_eq!(codes.last(), Some(&(OPT_GO, REP_ACK)));
    (s, buf)
}

async fn raw_request(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: Request,
    payload: &[u8],
) -> (u32, Vec<u8>) {
    let mut out = Vec::new();
    req.encode(&mut out);
    out.extend_from_slice(payload);
    s.write_all(&out).await.unwrap();
    let mut data = Vec::new();
    loop {
        let read_len = if req.command == Command::Read {
            req.length
        } else {
            0
        };
        match decode_reply(buf, |_| read_len).unwrap() {
            Decoded::Incomplete { .. } => {
                let mut tmp = vec![0u8; 65536];
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0, "server hung up");
                buf.extend_from_slice(&tmp[..n]);
            }
            Decoded::Complete { message, consumed } => {
                let (error, done) = match message {
                    Reply::Simple {
                        cookie,
                        error,
                        data: d,
                    } => {
                        assert_eq!(cookie, req.cookie);
                        data.extend_from_slice(d);
                        (error, true)
                    }
                    Reply::Chunk(c) => {
                        assert_eq!(c.cookie, req.cookie);
                        let error = c.body.error().map(|(e, _)| e).unwrap_or(0);
                        (error, c.done)
                    }
                };
                buf.drain(..consumed);
                if done || error != 0 {
                    return (error, data);
                }
            }
        }
    }
}

fn req(command: Command, offset: u64, length: u32, cookie: u64) -> Request {
    Request {
        flags: CommandFlags::empty(),
        command,
        cookie,
        offset,
        length,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_bad_requests_with_spec_errors() {
    let ro: Arc<dyn Export> = Arc::new(MemExport::new(vec![1u8; 100_000], true));
    let rw: Arc<dyn Export> = Arc::new(MemExport::new(vec![1u8; 100_000], false));
    let (addr, server) =
        start_server(Arc::new(MapCatalog::new().with("ro", ro).with("rw", rw))).await;

    for structured in [true, false] {
        let (mut s, mut buf) = raw_session(addr, "ro", structured).await;
        let cases = [
            (req(Command::Read, 99_999, 2, 1), EINVAL),
            (req(Command::Read, 0, MAX_PAYLOAD_BYTES + 1, 2), EINVAL),
            (req(Command::Write, 0, 16, 3), EPERM),
            (req(Command::Trim, 0, 16, 4), EPERM),
            (req(Command::Unknown(200), 0, 0, 5), EINVAL),
            (req(Command::Cache, 0, 16, 6), EINVAL),
            (req(Command::Read, 0, 16, 7), 0),
        ];
        for (r, want) in cases {
            let payload = vec![9u8; r.payload_len() as usize];
            let (error, _) = raw_request(&mut s, &mut buf, r, &payload).await;
            assert_eq!(error, want, "{r:?} structured={structured}");
        }
        let mut bad_flags = req(Command::Read, 0, 16, 8);
        bad_flags.flags = CommandFlags::from_bits_retain(0x4000);
        assert_eq!(
            raw_request(&mut s, &mut buf, bad_flags, &[]).await.0,
            EINVAL
        );
        let bs = req(Command::BlockStatus, 0, 100, 9);
        // Block status needs SET_META_CONTEXT, which this session did not send.
        assert_eq!(raw_request(&mut s, &mut buf, bs, &[]).await.0, EINVAL);
    }

    let (mut s, mut buf) = raw_session(addr, "rw", true).await;
    assert_eq!(
        raw_request(
            &mut s,
            &mut buf,
            req(Command::Write, 99_990, 16, 1),
            &[0u8; 16]
        )
        .await
        .0,
        ENOSPC
    );
    // An oversized write: the server skips the payload and stays in sync.
    let huge = MAX_PAYLOAD_BYTES as usize + 4096;
    let (error, _) = raw_request(
        &mut s,
        &mut buf,
        req(Command::Write, 0, huge as u32, 2),
        &vec![0u8; huge],
    )
    .await;
    assert_eq!(error, EINVAL);
    let (error, data) = raw_request(&mut s, &mut buf, req(Command::Read, 10, 4, 3), &[]).await;
    assert_eq!(error, 0);
    assert!(
        data.is_empty(),
        "structured read data arrives in chunks, not as a simple payload"
    );
    // A clean disconnect: the server closes its side.
    let mut out = Vec::new();
    req(Command::Disconnect, 0, 0, 4).encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_client_is_survived() {
    let export: Arc<dyn Export> = Arc::new(MemExport::new(vec![3u8; 8192], true));
    let (addr, server) = start_server(Arc::new(MapCatalog::new().with("", export))).await;
    let mut rng = Rng::new(99);
    for i in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut junk = vec![0u8; 64 + i * 13];
        rng.fill(&mut junk);
        if i % 2 == 0 {
            // A valid prefix, then junk, to reach the option and request decoders.
            let mut valid = Vec::new();
            valid.extend_from_slice(&ClientFlags::FIXED_NEWSTYLE.bits().to_be_bytes());
            ClientOption::Go(GoRequest {
                name: String::new(),
                info_requests: vec![],
            })
            .encode(&mut valid);
            valid.extend_from_slice(&junk);
            junk = valid;
        }
        let _ = s.write_all(&junk).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    // Still serving.
    let c = Client::connect(addr, "").await.unwrap();
    assert_eq!(c.read(0, 10).await.unwrap(), vec![3u8; 10]);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_client_redials_after_the_connection_drops() {
    let export: Arc<dyn Export> = Arc::new(MemExport::new(image(1024 * 1024, 4), true));
    let expected = image(1024 * 1024, 4);
    let catalog: Arc<dyn rehydrate_nbd::Catalog> = Arc::new(MapCatalog::new().with("d", export));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Serve connections one at a time so the test can cut the live one.
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<()>>(8);
    let acceptor = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let catalog = Arc::clone(&catalog);
            let task = tokio::spawn(async move {
                let _ = rehydrate_nbd::serve_connection(stream, catalog, &ServerConfig::default())
                    .await;
            });
            if conn_tx.send(task).await.is_err() {
                return;
            }
        }
    });
    let client = ReconnectingClient::new(addr.to_string(), "d", ClientOptions::default())
        .with_retries(3, Duration::from_millis(20));
    assert_same(
        &client.read(0, 4096).await.unwrap(),
        &expected[..4096],
        "first read",
    );
    let first = conn_rx.recv().await.unwrap();
    first.abort();
    let _ = first.await;
    // Give the client's reader a moment to see the close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_same(
        &client.read(4096, 8192).await.unwrap(),
        &expected[4096..12288],
        "read after redial",
    );
    assert!(
        conn_rx.recv().await.is_some(),
        "a second connection was made"
    );
    client.disconnect().await.unwrap();
    acceptor.abort();
}

/// A server that answers every read with its data cut into pieces sent last-first, a
/// hole among them, each piece in its own write: the client must place each piece in
/// the caller's buffer at its offset, zero the hole, and finish only at DONE.
async fn scattering_server(data: Arc<Vec<u8>>) -> std::net::SocketAddr {
    use rehydrate_nbd::handshake::server::{
        needs, ExportInfo, Lookup, Need, ServerHandshake, ServerOutcome,
    };
    use rehydrate_nbd::transmission::{Chunk, ChunkBody};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut machine = ServerHandshake::new();
        let mut buf = bytes::BytesMut::new();
        'handshake: loop {
            stream.write_all(&machine.take_output()).await.unwrap();
            let (option, consumed) = match machine.decode(&buf).unwrap() {
                Decoded::Incomplete { .. } => {
                    assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
                    continue;
                }
                Decoded::Complete { message, consumed } => (message, consumed),
            };
            let _ = buf.split_to(consumed);
            let Some(option) = option else { continue };
            let info = ExportInfo {
                size_bytes: data.len() as u64,
                read_only: true,
                can_multi_conn: true,
                description: String::new(),
                min_block_bytes: 1,
            };
            let lookup = match needs(&option) {
                Need::Export(_) => Lookup::Export(Some(info)),
                _ => Lookup::Nothing,
            };
            if let ServerOutcome::Transmission(_) = machine.respond(option, lookup) {
                stream.write_all(&machine.take_output()).await.unwrap();
                break 'handshake;
            }
        }
        loop {
            while buf.len() < REQUEST_HEADER_BYTES {
                if stream.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            }
            let header = buf.split_to(REQUEST_HEADER_BYTES);
            let Decoded::Complete { message: r, .. } = Request::decode_header(&header).unwrap()
            else {
                return;
            };
            if r.command == Command::Disconnect {
                return;
            }
            let (start, len) = (r.offset as usize, r.length as usize);
            let quarter = (len / 4).max(1);
            let mut pieces: Vec<(usize, usize)> = (0..len)
                .step_by(quarter)
                .map(|at| (at, quarter.min(len - at)))
                .collect();
            pieces.reverse();
            let last = pieces.len() - 1;
            for (i, (at, n)) in pieces.into_iter().enumerate() {
                let offset = (start + at) as u64;
                let body = if i == 1 && data[start + at..start + at + n].iter().all(|&b| b == 0) {
                    ChunkBody::OffsetHole {
                        offset,
                        length: n as u32,
                    }
                } else {
                    ChunkBody::OffsetData {
                        offset,
                        data: &data[start + at..start + at + n],
                    }
                };
                let mut out = Vec::new();
                Chunk {
                    done: i == last,
                    cookie: r.cookie,
                    body,
                }
                .encode(&mut out);
                stream.write_all(&out).await.unwrap();
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_into_fills_the_callers_buffer_from_scattered_chunks_and_holes() {
    let mut data = image(1 << 20, 11);
    // A zero quarter of the first read, sent as a hole.
    data[2 * 16384..3 * 16384].fill(0);
    let data = Arc::new(data);
    let addr = scattering_server(Arc::clone(&data)).await;
    let client = Client::connect(addr, "").await.unwrap();
    for (offset, len) in [(0usize, 65_536usize), (5000, 40_000), (123_457, 3)] {
        // Old bytes in the buffer must all be overwritten.
        let dirty = bytes::BytesMut::from(&vec![0xA5u8; len][..]);
        let got = client.read_into(offset as u64, dirty).await.unwrap();
        assert_same(&got, &data[offset..offset + len], "scattered read");
    }
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_into_our_server_simple_and_structured_above_the_payload_bound() {
    // Larger than one request may carry, so the read is split and joined again.
    let size = MAX_PAYLOAD_BYTES as usize + 3 * 65_536;
    let data = image(size, 5);
    let ro: Arc<dyn Export> = Arc::new(MemExport::new(data.clone(), true));
    let (addr, _server) = start_server(Arc::new(MapCatalog::new().with("ro", ro))).await;
    for structured in [true, false] {
        let options = ClientOptions {
            structured_replies: structured,
            ..ClientOptions::default()
        };
        let client = Client::connect_with(addr, "ro", options).await.unwrap();
        let got = client
            .read_into(1000, bytes::BytesMut::from(&vec![0x5Au8; size - 1000][..]))
            .await
            .unwrap();
        assert_same(&got, &data[1000..], "split read_into");
        // Every third 64 KiB block is zero: our server answers it with a hole.
        let zero_block = 2 * 65_536;
        let got = client
            .read_into(zero_block, bytes::BytesMut::from(&[0xFFu8; 65_536][..]))
            .await
            .unwrap();
        assert!(got.iter().all(|&b| b == 0), "a hole zeroes old bytes");
        client.disconnect().await.unwrap();
    }
}
