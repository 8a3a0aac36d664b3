//! The server side of the handshake.
//!
//! The machine decodes client messages ([`ServerHandshake::decode`]); for each option the
//! shell looks up what the option needs ([`needs`]: an export's details or the export
//! names, which may take I/O) and hands it to [`ServerHandshake::respond`], which queues
//! the reply bytes and says whether to go on, hang up, or enter transmission.
//!
//! With TLS required ([`ServerHandshake::requiring_tls`], the spec's FORCEDTLS mode),
//! every option before TLS but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is answered
//! `NBD_REP_ERR_TLS_REQD` (`NBD_OPT_EXPORT_NAME`, which cannot be refused, closes the
//! connection) and nothing is looked up; `STARTTLS` is acknowledged and the shell runs
//! the TLS handshake ([`ServerOutcome::StartTls`]) before the next option.

use super::Negotiated;
use crate::consts::*;
use crate::decode::Decoded;
use crate::error::ProtocolError;
use crate::option::{
    decode_client_flags, ClientOption, ExportNameReply, Greeting, InfoReply, MetaContextRequest,
    OptionReply, ReplyBody,
};

/// The metadata context id we hand out for `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the server knows about one export, enough to describe it on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Refuse writes, trims and write-zeroes.
    pub read_only: bool,
    /// Flushes are visible across connections (always true for read-only exports).
    pub can_multi_conn: bool,
    /// Optional text for `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST`.
    pub description: String,
    /// Smallest request alignment the export accepts (`NBD_INFO_BLOCK_SIZE` minimum):
    /// 1, or a power of two up to 64 KiB.
    pub min_block_bytes: u32,
}

impl ExportInfo {
    /// The transmission flags we advertise for this export.
    pub fn transmission_flags(&self, structured_replies: bool) -> TransmissionFlags {
        let mut flags = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA;
        if self.read_only {
            flags |= TransmissionFlags::READ_ONLY;
        } else {
            flags |= TransmissionFlags::SEND_TRIM | TransmissionFlags::SEND_WRITE_ZEROES;
        }
        if self.can_multi_conn || self.read_only {
            flags |= TransmissionFlags::CAN_MULTI_CONN;
        }
        // We always answer a read with exactly one content chunk, so DF costs nothing;
        // the spec forbids the flag without structured replies.
        if structured_replies {
            flags |= TransmissionFlags::SEND_DF;
        }
        flags
    }
}

/// What an option needs the shell to look up before [`ServerHandshake::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing; pass [`Lookup::Nothing`].
    Nothing,
    /// The details of this export; pass [`Lookup::Export`].
    Export(&'a str),
    /// The names of all exports; pass [`Lookup::List`].
    List,
}

/// What the shell found for a [`Need`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing was needed.
    Nothing,
    /// The export's details, or `None` if there is no such export.
    Export(Option<ExportInfo>),
    /// Export names with descriptions.
    List(Vec<(String, String)>),
    /// The export exists or not, but this client may not open it: the reason, sent
    /// with `NBD_REP_ERR_POLICY`.
    Refused(String),
    /// The export exists but cannot be opened; the text says why (e.g. its index is
    /// damaged). Answered `NBD_REP_ERR_UNKNOWN` with that text, never "no export".
    Unavailable(String),
}

/// What the shell must do after an option was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOutcome {
    /// Send the output and wait for the next option.
    Continue,
    /// Send the output, then close the connection.
    Close,
    /// Send the output; the transmission phase begins.
    Transmission(Negotiated),
    /// Send the output (the `STARTTLS` acknowledgement), then run the TLS handshake;
    /// every later byte goes through TLS. Feed the machine only after it succeeded.
    StartTls,
}

/// What an option needs looked up.
pub fn needs(option: &ClientOption) -> Need<'_> {
    match option {
        ClientOption::ExportName(name) => Need::Export(name),
        ClientOption::Info(go) | ClientOption::Go(go) => Need::Export(&go.name),
        ClientOption::ListMetaContext(meta) | ClientOption::SetMetaContext(meta) => {
            Need::Export(&meta.name)
        }
        ClientOption::List => Need::List,
        _ => Need::Nothing,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitClientFlags,
    Options,
    Finished,
}

/// Where the connection stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    /// Not offered: `STARTTLS` is answered `NBD_REP_ERR_UNSUP`.
    Unavailable,
    /// Required and not begun: only `STARTTLS` and `ABORT` are served.
    Required,
    /// Running: a second `STARTTLS` is invalid.
    Active,
}

/// The server's handshake state machine.
#[derive(Debug)]
pub struct ServerHandshake {
    state: State,
    out: Vec<u8>,
    no_zeroes: bool,
    structured: bool,
    /// Export name for which `base:allocation` was selected by the last SET_META_CONTEXT.
    meta_export: Option<String>,
    options_seen: u32,
    tls: Tls,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A new handshake; the greeting is already queued as output.
    pub fn new() -> Self {
        let mut out = Vec::with_capacity(GREETING_BYTES);
        Greeting {
            flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
        }
        .encode(&mut out);
        Self {
            state: State::AwaitClientFlags,
            out,
            no_zeroes: false,
            structured: false,
            meta_export: None,
            options_seen: 0,
            tls: Tls::Unavailable,
        }
    }

    /// A handshake that requires TLS before anything but `STARTTLS` and `ABORT`.
    pub fn requiring_tls() -> Self {
        Self {
            tls: Tls::Required,
            ..Self::new()
        }
    }

    /// Whether TLS is running on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls == Tls::Active
    }

    /// What this option needs looked up now: like [`needs`], but nothing while TLS is
    /// required and not yet running (the option will be refused unanswered).
    pub fn needs<'a>(&self, option: &'a ClientOption) -> Need<'a> {
        if self.tls == Tls::Required {
            Need::Nothing
        } else {
            needs(option)
        }
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Decode the next client message. `None` means the client flags were consumed and
    /// there is no option to answer yet.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded<Option<ClientOption>>, ProtocolError> {
        match self.state {
            State::AwaitClientFlags => {
                let decoded = decode_client_flags(buf)?;
                if let Decoded::Complete { message, .. } = &decoded {
                    self.no_zeroes = message.contains(ClientFlags::NO_ZEROES);
                    self.state = State::Options;
                }
                Ok(decoded.map(|_| None))
            }
            State::Options => {
                let decoded = ClientOption::decode(buf)?;
                if let Decoded::Complete { .. } = decoded {
                    self.options_seen += 1;
                    if self.options_seen > MAX_OPTIONS_PER_HANDSHAKE {
                        return Err(ProtocolError::TooManyOptions(MAX_OPTIONS_PER_HANDSHAKE));
                    }
                }
                Ok(decoded.map(Some))
            }
            State::Finished => Err(ProtocolError::Unexpected("handshake is over")),
        }
    }

    /// Answer one option, given what [`needs`] asked for.
    pub fn respond(&mut self, option: ClientOption, lookup: Lookup) -> ServerOutcome {
        let code = option.code();
        if self.tls == Tls::Required {
            return self.respond_before_tls(option);
        }
        let (export, names, unavailable) = match lookup {
            Lookup::Export(info) => (info, None, None),
            Lookup::List(names) => (None, Some(names), None),
            Lookup::Nothing => (None, None, None),
            Lookup::Unavailable(why) => (None, None, Some(why)),
            Lookup::Refused(reason) => return self.refuse(option, reason),
        };
        // Every option that names an export answers one that cannot be opened the same
        // way: unknown, with the reason (EXPORT_NAME has no error reply: hang up).
        if let Some(why) = unavailable {
            if matches!(option, ClientOption::ExportName(_)) {
                return self.finish(ServerOutcome::Close);
            }
            self.reply(OptionReply::error(code, REP_ERR_UNKNOWN, why));
            return ServerOutcome::Continue;
        }
        match option {
            ClientOption::ExportName(name) => match export {
                Some(info) => {
                    ExportNameReply {
                        size_bytes: info.size_bytes,
                        flags: info.transmission_flags(self.structured),
                    }
                    .encode(self.no_zeroes, &mut self.out);
                    self.enter_transmission(name, &info)
                }
                // NBD_OPT_EXPORT_NAME has no error reply: the spec says hang up.
                None => self.finish(ServerOutcome::Close),
            },
            ClientOption::Invalid {
                option: OPT_EXPORT_NAME,
                ..
            } => self.finish(ServerOutcome::Close),
            ClientOption::Abort => {
                self.reply(OptionReply::ack(code));
                self.finish(ServerOutcome::Close)
            }
            ClientOption::List => {
                let Some(names) = names else {
                    self.reply(OptionReply::error(
                        code,
                        REP_ERR_POLICY,
                        "export list unavailable",
                    ));
                    return ServerOutcome::Continue;
                };
                for (name, details) in names {
                    self.reply(OptionReply {
                        option: code,
                        body: ReplyBody::Server { name, details },
                    });
                }
                self.reply(OptionReply::ack(code));
                ServerOutcome::Continue
            }
            ClientOption::StartTls if self.tls == Tls::Active => {
                self.reply(OptionReply::error(
                    code,
                    REP_ERR_INVALID,
                    "TLS is already running",
                ));
                ServerOutcome::Continue
            }
            ClientOption::StartTls => {
                self.reply(OptionReply::error(
                    code,
                    REP_ERR_UNSUP,
                    "TLS is not supported by this server",
                ));
                ServerOutcome::Continue
            }
            ClientOption::Info(go) | ClientOption::Go(go) => {
                let Some(info) = export else {
                    self.reply(OptionReply::error(
                        code,
                        REP_ERR_UNKNOWN,
                        format!("no export named {:?}", go.name),
                    ));
                    return ServerOutcome::Continue;
                };
                self.reply_info(code, &info, &go.name, &go.info_requests);
                self.reply(OptionReply::ack(code));
                if code == OPT_GO {
                    self.enter_transmission(go.name, &info)
                } else {
                    ServerOutcome::Continue
                }
            }
            ClientOption::StructuredReply => {
                self.structured = true;
                self.reply(OptionReply::ack(code));
                ServerOutcome::Continue
            }
            ClientOption::ListMetaContext(meta) => {
                if export.is_none() {
                    self.reply(OptionReply::error(
                        code,
                        REP_ERR_UNKNOWN,
                        format!("no export named {:?}", meta.name),
                    ));
                    return ServerOutcome::Continue;
                }
                // No queries lists everything; `base:` is the namespace wildcard.
                if meta.queries.is_empty()
                    || meta
                        .queries
                        .iter()
                        .any(|q| q == "base:" || q == BASE_ALLOCATION)
                {
                    self.reply(OptionReply {
                        option: code,
                        body: ReplyBody::MetaContext {
                            id: 0,
                            name: BASE_ALLOCATION.to_owned(),
                        },
                    });
                }
                self.reply(OptionReply::ack(code));
                ServerOutcome::Continue
            }
            ClientOption::SetMetaContext(meta) => {
                self.set_meta_context(code, meta, export.is_some());
                ServerOutcome::Continue
            }
            ClientOption::Unknown { option, .. } => {
                self.reply(OptionReply::error(
                    option,
                    REP_ERR_UNSUP,
                    "option not supported",
                ));
                ServerOutcome::Continue
            }
            ClientOption::Invalid { option, reason } => {
                self.reply(OptionReply::error(option, REP_ERR_INVALID, reason));
                ServerOutcome::Continue
            }
        }
    }

    /// FORCEDTLS before TLS: only `STARTTLS` and `ABORT` are served.
    fn respond_before_tls(&mut self, option: ClientOption) -> ServerOutcome {
        let code = option.code();
        match option {
            ClientOption::StartTls => {
                self.reply(OptionReply::ack(code));
                self.tls = Tls::Active;
                ServerOutcome::StartTls
            }
            ClientOption::Abort => {
                self.reply(OptionReply::ack(code));
                self.finish(ServerOutcome::Close)
            }
            // NBD_OPT_EXPORT_NAME cannot be refused: the spec says terminate.
            ClientOption::ExportName(_)
            | ClientOption::Invalid {
                option: OPT_EXPORT_NAME,
                ..
            } => self.finish(ServerOutcome::Close),
            _ => {
                self.reply(OptionReply::error(
                    code,
                    REP_ERR_TLS_REQD,
                    "TLS is required: send NBD_OPT_STARTTLS first",
                ));
                ServerOutcome::Continue
            }
        }
    }

    /// Refuse an option about an export this client may not open.
    fn refuse(&mut self, option: ClientOption, reason: String) -> ServerOutcome {
        match option {
            // No error reply exists for NBD_OPT_EXPORT_NAME: hang up.
            ClientOption::ExportName(_) => self.finish(ServerOutcome::Close),
            other => {
                if matches!(other, ClientOption::SetMetaContext(_)) {
                    self.meta_export = None;
                }
                self.reply(OptionReply::error(other.code(), REP_ERR_POLICY, reason));
                ServerOutcome::Continue
            }
        }
    }

    fn set_meta_context(&mut self, code: u32, meta: MetaContextRequest, export_exists: bool) {
        // The spec: a SET replaces the selection even when it fails.
        self.meta_export = None;
        if !self.structured {
            self.reply(OptionReply::error(
                code,
                REP_ERR_INVALID,
                "structured replies must be negotiated first",
            ));
            return;
        }
        if !export_exists {
            self.reply(OptionReply::error(
                code,
                REP_ERR_UNKNOWN,
                format!("no export named {:?}", meta.name),
            ));
            return;
        }
        if meta.queries.iter().any(|q| q == BASE_ALLOCATION) {
            self.reply(OptionReply {
                option: code,
                body: ReplyBody::MetaContext {
                    id: BASE_ALLOCATION_ID,
                    name: BASE_ALLOCATION.to_owned(),
                },
            });
            self.meta_export = Some(meta.name);
        }
        self.reply(OptionReply::ack(code));
    }

    fn reply_info(&mut self, code: u32, info: &ExportInfo, name: &str, requested: &[u16]) {
        self.reply(OptionReply {
            option: code,
            body: ReplyBody::Info(InfoReply::Export {
                size_bytes: info.size_bytes,
                flags: info.transmission_flags(self.structured),
            }),
        });
        // Sent unasked: it tells clients our payload bound, and the spec allows it.
        self.reply(OptionReply {
            option: code,
            body: ReplyBody::Info(InfoReply::BlockSize {
                minimum: info.min_block_bytes.max(1),
                preferred: PREFERRED_BLOCK_BYTES,
                maximum: MAX_PAYLOAD_BYTES,
            }),
        });
        if requested.contains(&INFO_NAME) {
            self.reply(OptionReply {
                option: code,
                body: ReplyBody::Info(InfoReply::Name(name.to_owned())),
            });
        }
        if requested.contains(&INFO_DESCRIPTION) && !info.description.is_empty() {
            self.reply(OptionReply {
                option: code,
                body: ReplyBody::Info(InfoReply::Description(info.description.clone())),
            });
        }
    }

    fn enter_transmission(&mut self, name: String, info: &ExportInfo) -> ServerOutcome {
        let base_allocation = match &self.meta_export {
            Some(selected) if *selected == name => Some(BASE_ALLOCATION_ID),
            _ => None,
        };
        self.finish(ServerOutcome::Transmission(Negotiated {
            size_bytes: info.size_bytes,
            flags: info.transmission_flags(self.structured),
            structured_replies: self.structured,
            base_allocation,
            export_name: name,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            description: info.description.clone(),
        }))
    }

    fn finish(&mut self, outcome: ServerOutcome) -> ServerOutcome {
        if outcome != ServerOutcome::Continue {
            self.state = State::Finished;
        }
        outcome
    }

    fn reply(&mut self, reply: OptionReply) {
        reply.encode(&mut self.out);
    }
}
