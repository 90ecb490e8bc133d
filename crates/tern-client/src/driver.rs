//! The task that owns the transport and the [`ClientSession`].
//!
//! One loop: feed inputs (bytes read, commands, timer) → drain outputs
//! (packets to write, session events) → re-arm the timer. Nothing here knows
//! the protocol rules; they are all in `tern_proto::session`.
//!
//! ### Bounds
//! - Commands arrive on bounded channels; publishes are taken only while the
//!   session's queue has room, requests only while few are unanswered, so a
//!   full window makes `publish` wait ([MQTT-3.3.4-8]: other packets still flow).
//! - Application events wait in `app` (at most [`APP_HIGH_WATER`] plus one
//!   packet's worth) for room in the bounded events channel; while `app` is
//!   full the socket is not read and buffered bytes are not decoded.
//! - The write buffer stops taking new commands above [`WRITE_HIGH_WATER`].
//! - The read buffer holds at most one packet beyond what was decoded, and the
//!   decoder refuses packets above our Maximum Packet Size.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_proto::codec::{Decoded, Decoder};
use tern_proto::session::{
    ClientConfig, ClientSession, CloseReason, Event as SessionEvent, PublishOutcome, Token,
};
use tern_proto::{ByteString, Bytes, Disconnect, ReasonCode, SubAck, UnsubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{oneshot, watch};

use crate::backoff::{random, Reconnect};
use crate::command::{ControlCommand, PublishCommand, Reply, RequestCommand};
use crate::transport::{Connector, Endpoint, Transport};
use crate::{ClientError, Event, Message, Options};

/// Application events kept in the driver before the socket stops being read.
const APP_HIGH_WATER: usize = 16;
/// Encoded bytes waiting to be written before new commands are held back.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved for each read.
const READ_CHUNK: usize = 8 * 1024;
/// Outstanding request/response exchanges.
const MAX_RESPONDERS: usize = 1024;
/// Publish commands taken at once when several wait.
const PUBLISH_BATCH: usize = 64;
/// Time allowed to flush DISCONNECT and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels the driver serves.
pub(crate) struct Channels {
    pub publish: mpsc::Receiver<PublishCommand>,
    pub request: mpsc::Receiver<RequestCommand>,
    pub control: mpsc::Receiver<ControlCommand>,
    pub events: mpsc::Sender<Event>,
    pub client_id: watch::Sender<ByteString>,
}

struct Io {
    rd: ReadHalf<Box<dyn Transport>>,
    wr: WriteHalf<Box<dyn Transport>>,
}

/// What woke the driver up.
enum Input {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Flushed(io::Result<()>),
    Timer,
    Publish(Option<PublishCommand>),
    Request(Option<RequestCommand>),
    Control(Option<ControlCommand>),
    Slot(Result<OwnedPermit<Event>, SendError<()>>),
}

pub(crate) struct Driver {
    session: ClientSession,
    endpoint: Endpoint,
    connector: Arc<dyn Connector>,
    connect_timeout: Duration,
    reconnect: Reconnect,
    ch: Channels,
    publishes: HashMap<Token, Reply<PublishOutcome>>,
    subscribes: HashMap<Token, Reply<SubAck>>,
    unsubscribes: HashMap<Token, Reply<UnsubAck>>,
    responders: HashMap<Bytes, (ByteString, oneshot::Sender<Message>)>,
    app: VecDeque<Event>,
    events_open: bool,
    first: Option<oneshot::Sender<Result<(), ClientError>>>,
    stopping: bool,
    closed: Option<CloseReason>,
    disconnect_replies: Vec<oneshot::Sender<()>>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Bytes were written since the last flush (TLS and WebSocket hold them until then).
    needs_flush: bool,
    decoder: Decoder,
    attempt: u32,
}

impl Driver {
    pub(crate) fn new(
        options: &Options,
        connector: Arc<dyn Connector>,
        endpoint: Endpoint,
        config: ClientConfig,
        ch: Channels,
    ) -> Driver {
        let mut session = ClientSession::new(config);
        if let Some((user, password)) = &options.scram {
            session.set_auth_method(Box::new(crate::scram::ScramSha256::new(user, password)));
        }
        let decoder = Decoder::new(session.version(), session.max_incoming_packet_size());
        Driver {
            session,
            endpoint,
            connector,
            connect_timeout: options.connect_timeout,
            reconnect: options.reconnect.clone(),
            ch,
            publishes: HashMap::new(),
            subscribes: HashMap::new(),
            unsubscribes: HashMap::new(),
            responders: HashMap::new(),
            app: VecDeque::new(),
            events_open: true,
            first: None,
            stopping: false,
            closed: None,
            disconnect_replies: Vec::new(),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            needs_flush: false,
            decoder,
            attempt: 0,
        }
    }

    /// Connect, serve, reconnect until told to stop; then fail what is left.
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        self.first = Some(first);
        loop {
            match self.open().await {
                Ok(io) => self.serve(io).await,
                Err(error) => match self.first.take() {
                    Some(first) => {
                        let _ = first.send(Err(error));
                        self.stopping = true;
                    }
                    None => {
                        tracing::debug!(endpoint = %self.endpoint, "reconnection failed: {error}");
                        self.push_app(Event::ReconnectFailed { error });
                    }
                },
            }
            if self.stopping || !self.reconnect.is_enabled() {
                break;
            }
            self.attempt = self.attempt.saturating_add(1);
            let delay = self.reconnect.delay(self.attempt, random());
            self.push_app(Event::Reconnecting {
                attempt: self.attempt,
                delay,
            });
            if !self.wait_offline(delay).await {
                break;
            }
        }
        self.finish().await;
    }

    async fn open(&mut self) -> Result<Io, ClientError> {
        let connect = self.connector.connect(&self.endpoint);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(ClientError::Timeout("opening the transport")),
            Ok(Err(source)) => Err(ClientError::Transport {
                addr: self.endpoint.to_string(),
                source,
            }),
            Ok(Ok(io)) => {
                let (rd, wr) = tokio::io::split(io);
                Ok(Io { rd, wr })
            }
        }
    }

    /// One connection, from CONNECT until it closes.
    async fn serve(&mut self, mut io: Io) {
        self.read_buf.clear();
        self.write_buf.clear();
        self.needs_flush = false;
        self.closed = None;
        self.decoder = Decoder::new(self.session.version(), self.session.max_incoming_packet_size());
        self.session.start_connect(Instant::now());
        loop {
            self.decode_buffered();
            self.drain_session();
            if let Some(reason) = self.closed.take() {
                let flush = async {
                    io.wr.write_all(&self.write_buf).await?;
                    io.wr.shutdown().await
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, flush).await;
                self.write_buf.clear();
                self.after_close(reason);
                return;
            }
            let timer = self.session.poll_timeout();
            let input = self.wait_input(Some(&mut io), timer).await;
            let now = Instant::now();
            match input {
                Input::Read(Ok(0))
                | Input::Read(Err(_))
                | Input::Wrote(Ok(0))
                | Input::Wrote(Err(_))
                | Input::Flushed(Err(_)) => self.session.handle_connection_lost(now),
                Input::Wrote(Ok(_)) => self.needs_flush = true,
                Input::Flushed(Ok(())) => self.needs_flush = false,
                Input::Read(Ok(_)) => {}
                Input::Timer => self.session.handle_timeout(now),
                other => self.on_command(now, other),
            }
        }
    }

    /// Wait `delay` before reconnecting, still taking commands (they queue in
    /// the session) and delivering events. `false` when the client must stop.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            self.drain_session();
            if self.stopping {
                return false;
            }
            match self.wait_input(None, Some(deadline)).await {
                Input::Timer => return true,
                other => self.on_command(Instant::now(), other),
            }
        }
    }

    async fn wait_input(&mut self, io: Option<&mut Io>, timer: Option<Instant>) -> Input {
        let Driver {
            ch,
            read_buf,
            write_buf,
            needs_flush,
            app,
            session,
            events_open,
            ..
        } = self;
        let write_or_flush = !write_buf.is_empty() || *needs_flush;
        let can_read = app.len() < APP_HIGH_WATER;
        let take_commands = write_buf.len() < WRITE_HIGH_WATER;
        let can_publish = take_commands && session.can_publish();
        let can_request = take_commands && session.can_request();
        let deliver = *events_open && !app.is_empty();
        let has_io = io.is_some();
        let (rd, wr) = match io {
            Some(io) => (Some(&mut io.rd), Some(&mut io.wr)),
            None => (None, None),
        };
        let events = ch.events.clone();
        tokio::select! {
            biased;
            slot = events.reserve_owned(), if deliver => Input::Slot(slot),
            c = ch.control.recv() => Input::Control(c),
            r = read_some(rd, read_buf), if has_io && can_read => Input::Read(r),
            w = write_some(wr, write_buf), if has_io && write_or_flush => w,
            _ = sleep_until(timer), if timer.is_some() => Input::Timer,
            c = ch.request.recv(), if can_request => Input::Request(c),
            c = ch.publish.recv(), if can_publish => Input::Publish(c),
        }
    }

    /// Hand one publish command to the session.
    fn publish(&mut self, now: Instant, cmd: PublishCommand) {
        let queued = match cmd.relay {
            true => self.session.publish_as(now, cmd.publish),
            false => self.session.publish(now, cmd.publish),
        };
        match queued {
            Ok(token) => {
                self.publishes.insert(token, cmd.reply);
            }
            Err(e) => {
                let _ = cmd.reply.send(Err(e.into()));
            }
        }
    }

    /// Handle the control commands already waiting, before a publish that was just taken:
    /// one sent before that publish may have arrived after the driver looked at the control
    /// channel, and goes first all the same. So a [`crate::Client::release`] keeps its place
    /// before the publishes its task starts after it.
    fn take_control(&mut self, now: Instant) {
        while let Ok(c) = self.ch.control.try_recv() {
            self.on_command(now, Input::Control(Some(c)));
        }
    }

    fn on_command(&mut self, now: Instant, input: Input) {
        match input {
            Input::Publish(Some(cmd)) => {
                self.take_control(now);
                self.publish(now, cmd);
                // Take the publishes already waiting too, so that they go out in one write
                // rather than one write each (a program handing over a stream).
                for _ in 1..PUBLISH_BATCH {
                    if !self.session.can_publish() {
                        break;
                    }
                    match self.ch.publish.try_recv() {
                        Ok(cmd) => {
                            self.take_control(now);
                            self.publish(now, cmd);
                        }
                        Err(_) => break,
                    }
                }
            }
            Input::Request(Some(RequestCommand::Subscribe {
                filters,
                properties,
                reply,
            })) => match self.session.subscribe(now, filters, properties) {
                Ok(token) => {
                    self.subscribes.insert(token, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Input::Request(Some(RequestCommand::Unsubscribe {
                filters,
                properties,
                reply,
            })) => match self.session.unsubscribe(now, filters, properties) {
                Ok(token) => {
                    self.unsubscribes.insert(token, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Input::Control(Some(ControlCommand::Disconnect { disconnect, reply })) => {
                self.disconnect_replies.push(reply);
                self.stopping = true;
                self.session.disconnect(now, disconnect);
            }
            Input::Control(Some(ControlCommand::Ack { id, qos })) => self.session.ack(now, id, qos),
            Input::Control(Some(ControlCommand::Release { id, reply })) => {
                match self.session.release(now, id) {
                    Ok(token) => {
                        self.publishes.insert(token, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Input::Control(Some(ControlCommand::ExpectResponse {
                topic,
                correlation,
                reply,
            })) => {
                self.responders.retain(|_, (_, tx)| !tx.is_closed());
                if self.responders.len() < MAX_RESPONDERS {
                    self.responders.insert(correlation, (topic, reply));
                }
            }
            // Every Client handle is gone: disconnect normally.
            Input::Control(None) | Input::Publish(None) | Input::Request(None) => {
                self.stopping = true;
                self.session.disconnect(now, Disconnect::default());
            }
            Input::Slot(Ok(permit)) => {
                if let Some(ev) = self.app.pop_front() {
                    permit.send(ev);
                }
            }
            Input::Slot(Err(_)) => {
                // The application dropped its Events: discard from now on.
                self.events_open = false;
                self.app.clear();
            }
            Input::Read(_) | Input::Wrote(_) | Input::Flushed(_) | Input::Timer => {}
        }
    }

    /// Decode buffered packets while the application keeps up.
    fn decode_buffered(&mut self) {
        while self.app.len() < APP_HIGH_WATER && self.closed.is_none() {
            let now = Instant::now();
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Decoded::Packet(p)) => {
                    self.session.handle_packet(now, p);
                    self.drain_session();
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoint, "undecodable packet from the server: {e}");
                    self.session.handle_decode_error(now, &e);
                    self.drain_session();
                    break;
                }
            }
        }
    }

    /// Encode what the session wants sent; route its events.
    fn drain_session(&mut self) {
        let version = self.session.version();
        while let Some(p) = self.session.poll_transmit() {
            if let Err(e) = p.encode(version, &mut self.write_buf) {
                tracing::warn!("cannot encode {:?}: {e}", p.packet_type());
            }
        }
        while let Some(ev) = self.session.poll_event() {
            self.on_session_event(ev);
        }
    }

    fn on_session_event(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Connected {
                session_present,
                connack,
            } => {
                self.attempt = 0;
                let _ = self.ch.client_id.send(self.session.client_id().clone());
                if let Some(first) = self.first.take() {
                    let _ = first.send(Ok(()));
                }
                tracing::debug!(endpoint = %self.endpoint, session_present, "connected");
                self.push_app(Event::Connected {
                    session_present,
                    connack,
                });
            }
            SessionEvent::Message(p) => {
                if let Some(corr) = &p.properties.correlation_data {
                    let is_response = self.responders.get(corr).is_some_and(|(t, _)| *t == p.topic);
                    if is_response {
                        if let Some((_, tx)) = self.responders.remove(corr) {
                            let _ = tx.send(Message::from_publish(p));
                        }
                        return;
                    }
                }
                self.push_app(Event::Message(Message::from_publish(p)));
            }
            SessionEvent::PublishReceived { token } => {
                if let Some(r) = self.publishes.remove(&token) {
                    let _ = r.send(Ok(PublishOutcome::default()));
                }
            }
            SessionEvent::PublishDone { token, result } => {
                if let Some(r) = self.publishes.remove(&token) {
                    let _ = r.send(result.map_err(ClientError::from));
                }
            }
            SessionEvent::SubscribeDone { token, result } => {
                if let Some(r) = self.subscribes.remove(&token) {
                    let _ = r.send(result.map_err(ClientError::from));
                }
            }
            SessionEvent::UnsubscribeDone { token, result } => {
                if let Some(r) = self.unsubscribes.remove(&token) {
                    let _ = r.send(result.map_err(ClientError::from));
                }
            }
            SessionEvent::ResubscribeFailed { filter, reason_code } => {
                self.push_app(Event::ResubscribeFailed { filter, reason_code })
            }
            SessionEvent::Closed(reason) => self.closed = Some(reason),
            other => tracing::debug!("unhandled session event {other:?}"),
        }
    }

    fn push_app(&mut self, ev: Event) {
        if self.events_open {
            self.app.push_back(ev);
        }
    }

    /// Decide what follows the end of a connection.
    fn after_close(&mut self, reason: CloseReason) {
        tracing::debug!(endpoint = %self.endpoint, "connection closed: {reason}");
        if let Some(first) = self.first.take() {
            let _ = first.send(Err(ClientError::from_close(reason)));
            self.stopping = true;
            return;
        }
        match &reason {
            CloseReason::LocalDisconnect => self.stopping = true,
            // Reconnecting would take the session back from its new owner, forever.
            CloseReason::ServerDisconnect(d) if d.reason() == ReasonCode::SessionTakenOver => {
                self.stopping = true
            }
            _ => {}
        }
        self.push_app(Event::Disconnected { reason });
    }

    /// Fail everything still pending, answer disconnect calls, deliver the last events.
    async fn finish(mut self) {
        self.session.abandon();
        self.drain_session();
        self.write_buf.clear();
        for r in self.disconnect_replies.drain(..) {
            let _ = r.send(());
        }
        self.ch.publish.close();
        self.ch.request.close();
        self.ch.control.close();
        while let Ok(cmd) = self.ch.publish.try_recv() {
            let _ = cmd.reply.send(Err(ClientError::Closed));
        }
        if self.events_open {
            while let Some(ev) = self.app.pop_front() {
                if self.ch.events.send(ev).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn read_some(rd: Option<&mut ReadHalf<Box<dyn Transport>>>, buf: &mut BytesMut) -> io::Result<usize> {
    match rd {
        Some(rd) => {
            buf.reserve(READ_CHUNK);
            rd.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

/// Write buffered bytes, or flush once they are all written.
async fn write_some(wr: Option<&mut WriteHalf<Box<dyn Transport>>>, buf: &mut BytesMut) -> Input {
    match wr {
        Some(wr) if !buf.is_empty() => Input::Wrote(wr.write_buf(buf).await),
        Some(wr) => Input::Flushed(wr.flush().await),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
