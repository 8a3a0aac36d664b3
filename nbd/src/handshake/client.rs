//! The client side of the handshake.
//!
//! Sequence against a fixed-newstyle server, each step falling back when refused:
//!
//! ```text
//! greeting -> client flags
//!   -> NBD_OPT_STRUCTURED_REPLY      (refused: simple replies, no block status)
//!   -> NBD_OPT_SET_META_CONTEXT base:allocation   (refused or empty: no block status)
//!   -> NBD_OPT_GO                    (ERR_UNSUP: fall back to NBD_OPT_EXPORT_NAME)
//! ```
//!
//! A server without fixed newstyle gets `NBD_OPT_EXPORT_NAME` straight away. Listing
//! sends `NBD_OPT_LIST`, collects the names, then `NBD_OPT_ABORT`.
//!
//! With TLS ([`ClientHandshake::with_starttls`]) the first option is `NBD_OPT_STARTTLS`;
//! on its acknowledgement the machine says [`ClientStep::StartTls`], the shell runs the
//! TLS handshake and calls [`ClientHandshake::tls_started`], and the sequence above
//! follows inside TLS. A refusal, or a server without fixed newstyle, is an error:
//! a client that asked for TLS never falls back to plain text.

use super::Negotiated;
use crate::consts::*;
use crate::decode::Decoded;
use crate::error::{Error, ProtocolError};
use crate::option::{
    encode_client_flags, ClientOption, ExportNameReply, GoRequest, Greeting, InfoReply,
    MetaContextRequest, OptionReply, ReplyBody,
};

/// Most names we collect from one `NBD_OPT_LIST` (a bound on what a server can make us hold).
pub const MAX_LISTED_EXPORTS: usize = 65_536;

/// Most `NBD_REP_INFO`/`NBD_REP_META_CONTEXT` replies we accept to one option.
const MAX_REPLIES_PER_OPTION: u32 = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Goal {
    Go(String),
    List,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    StartTls,
    /// STARTTLS acknowledged; waiting for the shell's TLS handshake.
    AwaitTls,
    Structured,
    Meta,
    Go,
    ExportName,
    List,
    Finished,
}

/// What one step of the client handshake produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Send the output and feed more bytes.
    Continue,
    /// The transmission phase begins.
    Done(Negotiated),
    /// The export list (name, details); the output holds `NBD_OPT_ABORT`; then close.
    Listed(Vec<(String, String)>),
    /// The server acknowledged `STARTTLS`: run the TLS handshake on the stream, then
    /// call [`ClientHandshake::tls_started`] and go on over TLS.
    StartTls,
}

/// The client's handshake state machine.
#[derive(Debug)]
pub struct ClientHandshake {
    goal: Goal,
    state: State,
    out: Vec<u8>,
    want_structured: bool,
    want_block_status: bool,
    no_zeroes: bool,
    structured: bool,
    base_allocation: Option<u32>,
    export: Option<(u64, TransmissionFlags)>,
    max_payload_bytes: u32,
    listed: Vec<(String, String)>,
    replies_this_option: u32,
    want_tls: bool,
    description: String,
}

impl ClientHandshake {
    /// Negotiate entry to `export_name`, asking for structured replies and block status.
    pub fn go(export_name: &str) -> Self {
        Self::new(Goal::Go(export_name.to_owned()))
    }

    /// List the server's exports, then abort.
    pub fn list() -> Self {
        Self::new(Goal::List)
    }

    fn new(goal: Goal) -> Self {
        Self {
            goal,
            state: State::Greeting,
            out: Vec::new(),
            want_structured: true,
            want_block_status: true,
            no_zeroes: false,
            structured: false,
            base_allocation: None,
            export: None,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            listed: Vec::new(),
            replies_this_option: 0,
            want_tls: false,
            description: String::new(),
        }
    }

    /// Negotiate TLS first (`NBD_OPT_STARTTLS`) and refuse to go on without it.
    pub fn with_starttls(mut self) -> Self {
        self.want_tls = true;
        self
    }

    /// The TLS handshake the last [`ClientStep::StartTls`] asked for succeeded: queue
    /// the next option (its bytes go out over TLS).
    pub fn tls_started(&mut self) -> Result<(), Error> {
        if self.state != State::AwaitTls {
            return Err(ProtocolError::Unexpected("TLS started without STARTTLS").into());
        }
        self.first_option(true);
        Ok(())
    }

    /// Do not ask for structured replies (and so not for block status either).
    pub fn simple_replies_only(mut self) -> Self {
        self.want_structured = false;
        self.want_block_status = false;
        self
    }

    /// Bytes to send to the server now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feed bytes from the server; on `Complete`, drop `consumed` bytes and act on the step.
    pub fn receive(&mut self, buf: &[u8]) -> Result<Decoded<ClientStep>, Error> {
        match self.state {
            State::Greeting => {
                let decoded = Greeting::decode(buf)?;
                if let Decoded::Complete { message, .. } = &decoded {
                    if self.want_tls && !message.flags.contains(HandshakeFlags::FIXED_NEWSTYLE) {
                        return Err(Error::TlsRefused(
                            "server does not speak fixed newstyle, which TLS needs".into(),
                        ));
                    }
                }
                Ok(decoded.map(|g| self.on_greeting(g)))
            }
            State::AwaitTls => {
                Err(ProtocolError::Unexpected("data before the TLS handshake").into())
            }
            State::ExportName => {
                let decoded = ExportNameReply::decode(buf, self.no_zeroes)?;
                Ok(decoded.map(|reply| {
                    self.export = Some((reply.size_bytes, reply.flags));
                    self.done()
                }))
            }
            State::Finished => Err(ProtocolError::Unexpected("handshake is over").into()),
            State::StartTls | State::Structured | State::Meta | State::Go | State::List => {
                match OptionReply::decode(buf)? {
                    Decoded::Incomplete { needed } => Ok(Decoded::Incomplete { needed }),
                    Decoded::Complete { message, consumed } => Ok(Decoded::Complete {
                        message: self.on_reply(message)?,
                        consumed,
                    }),
                }
            }
        }
    }

    fn on_greeting(&mut self, greeting: Greeting) -> ClientStep {
        let fixed = greeting.flags.contains(HandshakeFlags::FIXED_NEWSTYLE);
        self.no_zeroes = greeting.flags.contains(HandshakeFlags::NO_ZEROES);
        let mut flags = ClientFlags::empty();
        if fixed {
            flags |= ClientFlags::FIXED_NEWSTYLE;
        }
        if self.no_zeroes {
            flags |= ClientFlags::NO_ZEROES;
        }
        encode_client_flags(flags, &mut self.out);
        if self.want_tls {
            // Fixed newstyle was checked in `receive`.
            self.send(ClientOption::StartTls, State::StartTls);
            return ClientStep::Continue;
        }
        self.first_option(fixed);
        ClientStep::Continue
    }

    /// The first option toward the goal (after TLS, if any, is running).
    fn first_option(&mut self, fixed: bool) {
        match (&self.goal, fixed) {
            (Goal::List, _) => self.send(ClientOption::List, State::List),
            (Goal::Go(_), false) => self.send_export_name(),
            (Goal::Go(_), true) if self.want_structured => {
                self.send(ClientOption::StructuredReply, State::Structured)
            }
            (Goal::Go(_), true) => self.send_go(),
        }
    }

    fn on_reply(&mut self, reply: OptionReply) -> Result<ClientStep, Error> {
        let expected = match self.state {
            State::StartTls => OPT_STARTTLS,
            State::Structured => OPT_STRUCTURED_REPLY,
            State::Meta => OPT_SET_META_CONTEXT,
            State::Go => OPT_GO,
            _ => OPT_LIST,
        };
        if reply.option != expected {
            return Err(ProtocolError::Unexpected("reply to an option we did not send").into());
        }
        self.replies_this_option += 1;
        if self.replies_this_option > MAX_REPLIES_PER_OPTION {
            return Err(ProtocolError::Unexpected("too many replies to one option").into());
        }
        if let ReplyBody::Unknown { .. } = reply.body {
            return Err(ProtocolError::Unexpected("unknown option reply type").into());
        }
        match (self.state, reply.body) {
            (State::StartTls, ReplyBody::Ack) => {
                self.state = State::AwaitTls;
                return Ok(ClientStep::StartTls);
            }
            (State::StartTls, ReplyBody::Error { message, .. }) => {
                return Err(Error::TlsRefused(message));
            }
            (_, ReplyBody::Error { code, .. }) if code == REP_ERR_TLS_REQD => {
                return Err(Error::TlsRequired);
            }
            (State::Go, ReplyBody::Error { code, message }) if code == REP_ERR_POLICY => {
                return Err(Error::Forbidden {
                    export: self.export_name().to_owned(),
                    message,
                });
            }
            (State::Structured, ReplyBody::Ack) => {
                self.structured = true;
                if self.want_block_status {
                    let name = self.export_name().to_owned();
                    self.send(
                        ClientOption::SetMetaContext(MetaContextRequest {
                            name,
                            queries: vec![BASE_ALLOCATION.to_owned()],
                        }),
                        State::Meta,
                    );
                } else {
                    self.send_go();
                }
            }
            (State::Structured, ReplyBody::Error { .. }) => self.send_go(),
            (State::Meta, ReplyBody::MetaContext { id, name }) => {
                if name == BASE_ALLOCATION {
                    self.base_allocation = Some(id);
                }
            }
            (State::Meta, ReplyBody::Ack) => self.send_go(),
            (State::Meta, ReplyBody::Error { .. }) => {
                // Block status is optional: carry on without it.
                self.base_allocation = None;
                self.send_go();
            }
            (State::Go, ReplyBody::Info(info)) => self.on_info(info),
            (State::Go, ReplyBody::Ack) => {
                if self.export.is_none() {
                    return Err(ProtocolError::Malformed(
                        "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT",
                    )
                    .into());
                }
                return Ok(self.done());
            }
            (State::Go, ReplyBody::Error { code, .. }) if code == REP_ERR_UNSUP => {
                self.send_export_name();
            }
            (State::Go, ReplyBody::Error { code, message }) if code == REP_ERR_UNKNOWN => {
                return Err(Error::UnknownExport {
                    name: self.export_name().to_owned(),
                    message,
                });
            }
            (State::List, ReplyBody::Server { name, details }) => {
                if self.listed.len() >= MAX_LISTED_EXPORTS {
                    return Err(ProtocolError::Unexpected("server listed too many exports").into());
                }
                self.listed.push((name, details));
            }
            (State::List, ReplyBody::Ack) => {
                ClientOption::Abort.encode(&mut self.out);
                self.state = State::Finished;
                return Ok(ClientStep::Listed(std::mem::take(&mut self.listed)));
            }
            (_, ReplyBody::Error { code, message }) => {
                return Err(Error::OptionRefused {
                    option: expected,
                    reply: code,
                    message,
                });
            }
            _ => return Err(ProtocolError::Unexpected("option reply of the wrong type").into()),
        }
        Ok(ClientStep::Continue)
    }

    fn on_info(&mut self, info: InfoReply) {
        match info {
            InfoReply::Export { size_bytes, flags } => self.export = Some((size_bytes, flags)),
            // Honour a smaller advertised maximum; ignore nonsense below one sector.
            InfoReply::BlockSize { maximum, .. } if maximum >= 512 => {
                self.max_payload_bytes = maximum.min(MAX_PAYLOAD_BYTES);
            }
            InfoReply::Description(text) => self.description = text,
            // The spec says to ignore what we did not ask for or do not know.
            _ => {}
        }
    }

    fn export_name(&self) -> &str {
        match &self.goal {
            Goal::Go(name) => name,
            Goal::List => "",
        }
    }

    fn send(&mut self, option: ClientOption, state: State) {
        option.encode(&mut self.out);
        self.state = state;
        self.replies_this_option = 0;
    }

    fn send_go(&mut self) {
        let name = self.export_name().to_owned();
        self.send(
            ClientOption::Go(GoRequest {
                name,
                // The description says what the export is (`rehydrate serve` pins its
                // version there); servers without one simply do not send it.
                info_requests: vec![INFO_DESCRIPTION],
            }),
            State::Go,
        );
    }

    fn send_export_name(&mut self) {
        let name = self.export_name().to_owned();
        self.send(ClientOption::ExportName(name), State::ExportName);
    }

    fn done(&mut self) -> ClientStep {
        self.state = State::Finished;
        let (size_bytes, flags) = self.export.unwrap_or((0, TransmissionFlags::HAS_FLAGS));
        ClientStep::Done(Negotiated {
            export_name: self.export_name().to_owned(),
            size_bytes,
            flags,
            structured_replies: self.structured,
            // Block status needs structured replies; a server that granted one without
            // the other is ignored rather than trusted.
            base_allocation: self.base_allocation.filter(|_| self.structured),
            max_payload_bytes: self.max_payload_bytes,
            description: std::mem::take(&mut self.description),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::server::{
        needs, ExportInfo, Lookup, Need, ServerHandshake, ServerOutcome,
    };

    fn info() -> ExportInfo {
        ExportInfo {
            size_bytes: 12345,
            read_only: true,
            can_multi_conn: true,
            description: "test".into(),
            min_block_bytes: 1,
        }
    }

    /// Drive both machines against each other through byte buffers only.
    fn run(
        mut client: ClientHandshake,
        exports: &[&str],
    ) -> (Result<ClientStep, String>, Option<ServerOutcome>) {
        let mut server = ServerHandshake::new();
        let mut to_client = Vec::new();
        let mut to_server = Vec::new();
        let mut server_outcome = None;
        for _ in 0..100 {
            to_client.extend(server.take_output());
            loop {
                match client.receive(&to_client) {
                    Err(e) => return (Err(e.to_string()), server_outcome),
                    Ok(Decoded::Incomplete { .. }) => break,
                    Ok(Decoded::Complete { message, consumed }) => {
                        to_client.drain(..consumed);
                        to_server.extend(client.take_output());
                        if message != ClientStep::Continue {
                            // Let the server see the client's last bytes (e.g. ABORT).
                            while let Ok(Decoded::Complete {
                                message: Some(opt),
                                consumed,
                            }) = server.decode(&to_server)
                            {
                                to_server.drain(..consumed);
                                server_outcome = Some(server.respond(opt, Lookup::Nothing));
                            }
                            return (Ok(message), server_outcome);
                        }
                    }
                }
            }
            to_server.extend(client.take_output());
            while server_outcome.is_none() {
                let Decoded::Complete { message, consumed } = server.decode(&to_server).unwrap()
                else {
                    break;
                };
                to_server.drain(..consumed);
                let Some(opt) = message else { continue };
                let lookup = match needs(&opt) {
                    Need::Nothing => Lookup::Nothing,
                    Need::Export(name) => Lookup::Export(exports.contains(&name).then(info)),
                    Need::List => Lookup::List(
                        exports
                            .iter()
                            .map(|n| (n.to_string(), String::new()))
                            .collect(),
                    ),
                };
                let outcome = server.respond(opt, lookup);
                if outcome != ServerOutcome::Continue {
                    server_outcome = Some(outcome);
                }
            }
        }
        (Err("no progress".into()), server_outcome)
    }

    #[test]
    fn go_negotiates_structured_and_block_status() {
        let (step, server) = run(ClientHandshake::go("disk"), &["disk"]);
        let Ok(ClientStep::Done(n)) = step else {
            panic!("{step:?}")
        };
        assert_eq!(n.size_bytes, 12345);
        assert!(n.structured_replies);
        assert!(n
            .flags
            .contains(TransmissionFlags::READ_ONLY | TransmissionFlags::CAN_MULTI_CONN));
        let Some(ServerOutcome::Transmission(s)) = server else {
            panic!("{server:?}")
        };
        assert_eq!(s.base_allocation, n.base_allocation);
        assert!(n.base_allocation.is_some());
    }

    #[test]
    fn simple_only_client_gets_no_block_status() {
        let (step, _) = run(ClientHandshake::go("disk").simple_replies_only(), &["disk"]);
        let Ok(ClientStep::Done(n)) = step else {
            panic!("{step:?}")
        };
        assert!(!n.structured_replies);
        assert_eq!(n.base_allocation, None);
        assert!(!n.flags.contains(TransmissionFlags::SEND_DF));
    }

    #[test]
    fn unknown_export_is_typed() {
        let (step, _) = run(ClientHandshake::go("nope"), &["disk"]);
        assert!(step.unwrap_err().contains("no export named"));
    }

    #[test]
    fn list_returns_names_then_aborts() {
        let (step, server) = run(ClientHandshake::list(), &["a", "b"]);
        assert_eq!(
            step,
            Ok(ClientStep::Listed(vec![
                ("a".into(), String::new()),
                ("b".into(), String::new())
            ]))
        );
        assert_eq!(server, Some(ServerOutcome::Close));
    }

    #[test]
    fn unknown_option_gets_err_unsup() {
        let mut server = ServerHandshake::new();
        server.take_output();
        let mut input = Vec::new();
        encode_client_flags(ClientFlags::FIXED_NEWSTYLE, &mut input);
        ClientOption::Unknown {
            option: 99,
            data: vec![1, 2],
        }
        .encode(&mut input);
        let Decoded::Complete { consumed, .. } = server.decode(&input).unwrap() else {
            panic!()
        };
        let Decoded::Complete {
            message: Some(opt), ..
        } = server.decode(&input[consumed..]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            server.respond(opt, Lookup::Nothing),
            ServerOutcome::Continue
        );
        let out = server.take_output();
        let Decoded::Complete { message, .. } = OptionReply::decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(message.option, 99);
        assert_eq!(message.code(), REP_ERR_UNSUP);
    }

    #[test]
    fn go_unsupported_falls_back_to_export_name() {
        let mut client = ClientHandshake::go("x").simple_replies_only();
        let mut greeting = Vec::new();
        Greeting {
            flags: HandshakeFlags::FIXED_NEWSTYLE,
        }
        .encode(&mut greeting);
        assert!(matches!(
            client.receive(&greeting).unwrap(),
            Decoded::Complete { .. }
        ));
        client.take_output();
        let mut refusal = Vec::new();
        OptionReply::error(OPT_GO, REP_ERR_UNSUP, "").encode(&mut refusal);
        assert!(matches!(
            client.receive(&refusal).unwrap(),
            Decoded::Complete {
                message: ClientStep::Continue,
                ..
            }
        ));
        let out = client.take_output();
        let Decoded::Complete { message, .. } = ClientOption::decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(message, ClientOption::ExportName("x".into()));
        let mut answer = Vec::new();
        ExportNameReply {
            size_bytes: 7,
            flags: TransmissionFlags::HAS_FLAGS,
        }
        .encode(false, &mut answer);
        let Decoded::Complete {
            message: ClientStep::Done(n),
            consumed,
        } = client.receive(&answer).unwrap()
        else {
            panic!()
        };
        assert_eq!(consumed, answer.len());
        assert_eq!(n.size_bytes, 7);
    }

    /// Feed one client option to a server machine; its outcome and the reply's code.
    fn answer(server: &mut ServerHandshake, option: ClientOption) -> (ServerOutcome, u32) {
        let mut input = Vec::new();
        option.encode(&mut input);
        let Decoded::Complete {
            message: Some(opt), ..
        } = server.decode(&input).unwrap()
        else {
            panic!("option not decoded")
        };
        if !server.tls_active() {
            // Nothing is looked up for a client that has not started TLS.
            assert_eq!(server.needs(&opt), Need::Nothing);
        }
        let outcome = server.respond(opt, Lookup::Nothing);
        let out = server.take_output();
        let code = match OptionReply::decode(&out).unwrap() {
            Decoded::Complete { message, .. } => message.code(),
            Decoded::Incomplete { .. } => 0,
        };
        (outcome, code)
    }

    fn tls_server() -> ServerHandshake {
        let mut server = ServerHandshake::requiring_tls();
        let mut flags = Vec::new();
        encode_client_flags(ClientFlags::FIXED_NEWSTYLE, &mut flags);
        assert!(matches!(
            server.decode(&flags).unwrap(),
            Decoded::Complete { message: None, .. }
        ));
        server.take_output();
        server
    }

    #[test]
    fn forced_tls_refuses_everything_before_starttls() {
        let mut server = tls_server();
        for option in [
            ClientOption::List,
            ClientOption::StructuredReply,
            ClientOption::Go(GoRequest {
                name: "disk".into(),
                info_requests: vec![],
            }),
            ClientOption::Unknown {
                option: 99,
                data: vec![],
            },
        ] {
            assert_eq!(
                answer(&mut server, option),
                (ServerOutcome::Continue, REP_ERR_TLS_REQD)
            );
        }
        assert_eq!(
            answer(&mut server, ClientOption::StartTls),
            (ServerOutcome::StartTls, REP_ACK)
        );
        assert!(server.tls_active());
        // Once TLS runs: a second STARTTLS is invalid, and options are served.
        assert_eq!(
            answer(&mut server, ClientOption::StartTls),
            (ServerOutcome::Continue, REP_ERR_INVALID)
        );
        assert_eq!(
            answer(&mut server, ClientOption::StructuredReply),
            (ServerOutcome::Continue, REP_ACK)
        );
    }

    #[test]
    fn forced_tls_allows_abort_and_hangs_up_on_export_name() {
        let mut server = tls_server();
        assert_eq!(
            answer(&mut server, ClientOption::Abort),
            (ServerOutcome::Close, REP_ACK)
        );
        let mut server = tls_server();
        assert_eq!(
            answer(&mut server, ClientOption::ExportName("disk".into())).0,
            ServerOutcome::Close
        );
    }

    #[test]
    fn both_machines_agree_through_starttls() {
        let mut client = ClientHandshake::go("disk").with_starttls();
        let mut server = ServerHandshake::requiring_tls();
        let mut to_server = Vec::new();
        let mut to_client = server.take_output();
        let mut tls_seen = (false, false);
        let mut server_done = false;
        for _ in 0..50 {
            while let Decoded::Complete { message, consumed } = client.receive(&to_client).unwrap()
            {
                to_client.drain(..consumed);
                match message {
                    ClientStep::Continue => {}
                    ClientStep::StartTls => {
                        // The TLS handshake would run here, on both sides.
                        tls_seen.0 = true;
                        client.tls_started().unwrap();
                    }
                    ClientStep::Done(n) => {
                        assert!(tls_seen.0 && tls_seen.1);
                        assert_eq!(n.size_bytes, 12345);
                        return;
                    }
                    ClientStep::Listed(_) => panic!("listed"),
                }
                to_server.extend(client.take_output());
            }
            to_server.extend(client.take_output());
            while !server_done {
                let Decoded::Complete { message, consumed } = server.decode(&to_server).unwrap()
                else {
                    break;
                };
                to_server.drain(..consumed);
                let Some(opt) = message else { continue };
                let lookup = match server.needs(&opt) {
                    Need::Export(_) => Lookup::Export(Some(info())),
                    _ => Lookup::Nothing,
                };
                match server.respond(opt, lookup) {
                    ServerOutcome::StartTls => tls_seen.1 = true,
                    ServerOutcome::Transmission(_) => server_done = true,
                    _ => {}
                }
                to_client.extend(server.take_output());
            }
        }
        panic!("no agreement");
    }

    #[test]
    fn a_tls_client_does_not_fall_back() {
        let mut client = ClientHandshake::go("disk").with_starttls();
        let mut greeting = Vec::new();
        Greeting {
            flags: HandshakeFlags::FIXED_NEWSTYLE,
        }
        .encode(&mut greeting);
        client.receive(&greeting).unwrap();
        let mut refusal = Vec::new();
        OptionReply::error(OPT_STARTTLS, REP_ERR_UNSUP, "no TLS here").encode(&mut refusal);
        assert!(
            matches!(client.receive(&refusal), Err(Error::TlsRefused(m)) if m == "no TLS here")
        );
        let mut old = Vec::new();
        Greeting {
            flags: HandshakeFlags::empty(),
        }
        .encode(&mut old);
        let mut client = ClientHandshake::go("disk").with_starttls();
        assert!(matches!(client.receive(&old), Err(Error::TlsRefused(_))));
    }
}
