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
