//! The broker core: what all connections share (router, retained messages, sessions, the
//! scheduler, budgets, the `Durability` and `Backplane` seams) and the operations that touch
//! several of them (publish, subscribe, retain, end of session). Named "core" so that
//! "shared" means `$share` subscriptions only; variables holding it are still often called
//! `shared`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tern_proto::session::server::Routed;
use tern_proto::topic;
use tern_proto::QoS;

use crate::durability::{Change, SessionSnapshot};
use crate::message::{Message, Outgoing};
use crate::retained_cache::{Retained, RetainedIndex};
use crate::router::{Match, Router, SubEntry, TrieFull};
use crate::session::{Enqueued, Queueing, Registry, RetainedCursor, SessionCell};
use crate::store::record;
use crate::Config;

/// Deliveries: a session and the message on its way to it.
pub(crate) type Deliveries = Vec<(Arc<SessionCell>, Outgoing)>;

/// Largest scratch capacity kept for reuse.
const MAX_KEPT_SCRATCH: usize = 4096;

/// (session, publisher) pairs one [`Core::route_batch`] reports as pressed, at most.
pub(crate) const MAX_PRESSED: usize = 1024;

/// Deliveries of one message looked through one by one; beyond, `SEEN_SCRATCH` indexes them.
const FEW_DELIVERIES: usize = 8;

thread_local! {
    /// The deliveries of one message in `route`, kept per worker thread so that
    /// routing does not allocate a new list for every message.
    static ROUTE_SCRATCH: std::cell::Cell<Deliveries> = const { std::cell::Cell::new(Vec::new()) };
    /// [`Core::collect`]'s session → position of its delivery, for the message being
    /// routed (emptied after each), and its shared-subscription deliveries: kept per
    /// worker thread, so that routing allocates neither per message.
    static SEEN_SCRATCH: std::cell::Cell<rustc_hash::FxHashMap<usize, usize>> =
        std::cell::Cell::new(Default::default());
    static SHARED_SCRATCH: std::cell::Cell<Deliveries> = const { std::cell::Cell::new(Vec::new()) };
}

/// Counters published under `$SYS/broker/...`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections accepted since start.
    pub connections: AtomicU64,
    /// Clients connected now.
    pub connected: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Everything connections share.
#[derive(Debug)]
pub(crate) struct Core {
    pub config: Config,
    /// The protocol rules of every session, read off `config` once.
    pub rules: Arc<tern_proto::session::server::ServerRules>,
    /// The rules of the CONNECT phase, read off `config` once.
    pub connect_rules: tern_proto::session::server::ConnectRules,
    router: RwLock<Router>,
    retained: RwLock<RetainedIndex>,
    pub sessions: Registry,
    /// Serializes attaching connections to sessions (see `connect::attach_session`).
    pub attach_lock: std::sync::Mutex<()>,
    /// Most deliveries a publisher's connection collects before queueing them (see
    /// [`Core::publish_deferred`]): small enough that every worker thread at once
    /// cannot take a session from half its limits past twice them.
    pub deliver_batch: usize,
    next_conn_id: AtomicU64,
    pub counters: Counters,
    pub authenticators: Vec<Arc<dyn crate::Authenticator>>,
    /// Set when the broker shuts down (see [`Core::begin_shutdown`]).
    shutting_down: std::sync::atomic::AtomicBool,
    pub started: Instant,
    /// Password file, ACL and authentication counters (reloadable).
    pub security: Arc<crate::security::Security>,
    /// The time of protocol deadlines.
    pub clock: crate::clock::Clock,
    /// Session expiry and delayed wills of offline sessions.
    pub scheduler: crate::scheduler::Scheduler,
    /// Bytes held in partially received packets, all connections together.
    pub partial: Arc<crate::budget::PartialBudget>,
    /// What protocol handling keeps on disk (a no-op without a store).
    pub durability: crate::durability::Persistence,
    /// Bytes queued for sessions, all sessions together.
    pub queued: crate::budget::QueueBudget,
    /// Other brokers (a cluster's nodes, a bridge), when there are any.
    pub backplane: Option<Arc<dyn crate::backplane::Backplane>>,
    /// The backplane delivers shared subscriptions' messages
    /// ([`crate::backplane::Backplane::delivers_shared`]): routing leaves them out.
    pub shared_elsewhere: bool,
    /// The backplane keeps the QoS 2 deliveries in flight of sessions that outlive their
    /// connection ([`crate::backplane::Backplane::keeps_qos2`]).
    pub qos2_elsewhere: bool,
    /// Figures for the metrics endpoint beyond `counters` (see `metrics.rs`).
    pub metrics: crate::metrics::Metrics,
    /// Topics seen recently, for the admin API (only with an HTTP endpoint and
    /// `http.recent_topics` > 0).
    pub recent: Option<crate::recent::RecentTopics>,
    /// The embedded store's commit figures, when the broker uses it.
    pub store_metrics: Option<Arc<crate::metrics::StoreMetrics>>,
    /// Live traces of clients' packets (see `trace.rs`).
    pub trace: Arc<crate::trace::Tracer>,
    /// Watches of topic filters (see `watch.rs`).
    pub watch: Arc<crate::watch::Watcher>,
}

impl std::fmt::Debug for dyn crate::Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.method())
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    pub fn new(
        config: Config,
        authenticators: Vec<Arc<dyn crate::Authenticator>>,
        durability: crate::durability::Persistence,
        security: Arc<crate::security::Security>,
        clock: crate::clock::Clock,
    ) -> Core {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let deliver_batch = (config.max_queued_messages / (2 * workers)).clamp(1, 256);
        let recent = match (config.http.listen, config.http.recent_topics) {
            (Some(_), n) if n > 0 => Some(crate::recent::RecentTopics::new(n, recent_seed())),
            _ => None,
        };
        Core {
            security,
            authenticators,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            clock,
            scheduler: crate::scheduler::Scheduler::default(),
            partial: crate::budget::PartialBudget::new(config.max_partial_bytes),
            queued: crate::budget::QueueBudget::new(config.max_queued_bytes_total),
            backplane: None,
            qos2_elsewhere: false,
            shared_elsewhere: false,
            durability,
            rules: Arc::new(config.server_rules()),
            connect_rules: config.connect_rules(),
            config,
            router: RwLock::default(),
            retained: RwLock::default(),
            sessions: Registry::default(),
            attach_lock: std::sync::Mutex::new(()),
            deliver_batch,
            next_conn_id: AtomicU64::new(1),
            counters: Counters::default(),
            metrics: crate::metrics::Metrics::default(),
            recent,
            store_metrics: None,
            trace: Arc::default(),
            watch: Arc::default(),
        }
    }

    /// What queueing a message for a session depends on.
    pub fn queueing(&self) -> Queueing<'_> {
        Queueing {
            config: &self.config,
            durability: &self.durability,
            clock: &self.clock,
            budget: &self.queued,
            stored_elsewhere: false,
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Store or clear the retained message for its topic ([MQTT-3.3.1-5], [MQTT-3.3.1-10]).
    /// Returns `false` when the store is full and the message was not kept.
    pub fn retain(&self, msg: &Arc<Message>) -> bool {
        let mut r = write(&self.retained);
        // $SYS statistics are regenerated at start; they are not worth a disk write.
        let durable = !msg.topic.starts_with("$SYS/");
        if msg.payload.is_empty() {
            if r.remove(&msg.topic).is_some() && durable {
                self.durability.submit(Change::DelRetained(msg.topic.to_string()));
            }
            return true;
        }
        if r.store.len() >= self.config.max_retained && !r.store.contains(&msg.topic) {
            return false;
        }
        // Kept for long: a copy that owns its bytes, the same for memory and the store.
        let kept = Arc::new(msg.detached());
        let ticket = match durable {
            true => self.durability.submit(Change::PutRetained(kept.clone())),
            false => None,
        };
        let version = r.version();
        r.insert(&msg.topic, Retained::resident(kept, version), ticket);
        // With a store that reads back, what passes the cache's budget leaves memory.
        if self.durability.reads_back() {
            r.evict(self.config.retained_cache_bytes, self.durability.committed());
        }
        true
    }

    /// Put the retained messages back at start (they are in the store already).
    pub(crate) fn restore_retained(&self, entries: Vec<RestoredRetained>) {
        let mut r = write(&self.retained);
        let entries = entries.into_iter().map(|e| match e {
            RestoredRetained::Resident(msg) => {
                let version = r.version();
                (Box::from(&*msg.topic), Retained::resident(msg, version))
            }
            RestoredRetained::OnDisk(d) => {
                let version = r.version();
                let entry = Retained::on_disk(&d, version);
                (d.topic.into_boxed_str(), entry)
            }
        });
        let entries: Vec<(Box<str>, Retained)> = entries.collect();
        r.restore(entries);
    }

    /// The message of the index entry `e` of `topic`: its own, or read from the store.
    fn load_retained(&self, topic: &str, e: &Retained) -> Option<Arc<Message>> {
        if let Some(m) = &e.msg {
            return Some(m.clone());
        }
        match self.durability.read_retained(topic) {
            Ok(m) => m,
            Err(err) => {
                tracing::error!(topic, "cannot read a retained message from the store: {err}");
                None
            }
        }
    }

    /// Number of subscriptions and of retained messages.
    pub fn sizes(&self) -> (usize, usize) {
        (read(&self.router).len(), read(&self.retained).store.len())
    }

    /// Route a message to every matching session; returns how many sessions it reached.
    /// Sessions whose queues are over their limits are added to `pressure`: the
    /// publisher should wait until they have room.
    ///
    /// [`Routed::OverQuota`] when every session it matched dropped it for a limit of what it
    /// keeps while its client is away (5.0 PUBACK 0x97).
    /// `sent` numbers a client's QoS 0 message for the backplane
    /// ([`Backplane::published_qos0`](crate::backplane::Backplane::published_qos0)).
    pub fn publish(
        &self,
        msg: &Arc<Message>,
        pressure: &mut Vec<Arc<SessionCell>>,
        sent: Option<crate::backplane::Sent>,
    ) -> Routed {
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        let (n, over_limit) = self.route(msg, Some(pressure), !self.shared_elsewhere);
        self.count_unrouted(n);
        self.to_backplane(msg, sent);
        match n.saturating_sub(over_limit) {
            // With a backplane the message went on to other servers too: not 0x97.
            0 if n > 0 && self.backplane.is_none() => Routed::OverQuota,
            0 if n > 0 => Routed::Elsewhere,
            reached => self.reached(reached),
        }
    }

    /// What `n` local deliveries say to the publisher: with a backplane, none here is not
    /// "no matching subscribers" (v5 0x10), as other servers may have some.
    #[inline]
    pub fn reached(&self, n: usize) -> Routed {
        match n {
            0 if self.backplane.is_some() => Routed::Elsewhere,
            n => Routed::Reached(n),
        }
    }

    /// Route a message into `pending` without queueing it yet: a publisher's
    /// connection collects the messages of one read this way and hands them to
    /// [`Core::deliver_all`], so that each session is locked once per batch
    /// rather than once per message. Returns how many sessions it reaches. The
    /// caller counts the messages in `messages_in` (once per batch: the counter is
    /// shared by every connection).
    ///
    /// A numbered QoS 0 message (`sent`) that is not retained waits in `later` for the
    /// backplane too ([`Core::hand_later`], with the deliveries); anything else for the
    /// backplane goes at once, after what waits there, so that a connection's messages reach
    /// the backplane in their order.
    pub fn publish_deferred(
        &self,
        msg: &Arc<Message>,
        pending: &mut Deliveries,
        sent: Option<crate::backplane::Sent>,
        later: &mut Vec<(Arc<Message>, crate::backplane::Sent)>,
    ) -> usize {
        let n = self.collect(msg, pending, !self.shared_elsewhere);
        self.count_unrouted(n);
        match (&self.backplane, sent) {
            (None, _) => {}
            (Some(_), Some(s)) if !msg.retain => later.push((msg.clone(), s)),
            (Some(_), _) => {
                self.hand_later(later);
                self.to_backplane(msg, sent);
            }
        }
        n
    }

    /// Hand the QoS 0 messages [`Core::publish_deferred`] kept back to the backplane, in one
    /// call ([`Backplane::published_qos0_all`](crate::backplane::Backplane::published_qos0_all)).
    pub fn hand_later(&self, later: &mut Vec<(Arc<Message>, crate::backplane::Sent)>) {
        if later.is_empty() {
            return;
        }
        match &self.backplane {
            Some(b) => b.published_qos0_all(later),
            None => later.clear(),
        }
    }

    /// Hand a client's message to the backplane, if there is one (`sent`: a QoS 0
    /// message's number among its connection's).
    #[inline]
    fn to_backplane(&self, msg: &Arc<Message>, sent: Option<crate::backplane::Sent>) {
        match (&self.backplane, sent) {
            (Some(b), Some(sent)) => b.published_qos0(msg, sent),
            (Some(b), None) => b.published(msg),
            (None, _) => {}
        }
    }

    /// Count a client's message that reached no session (one branch otherwise).
    #[inline]
    fn count_unrouted(&self, reached: usize) {
        if reached == 0 {
            self.metrics.no_subscribers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many retained messages match `filter` (a valid filter), and the topics of those
    /// from `offset` on (at most `limit`), in topic order.
    pub fn retained_topics(&self, filter: &str, offset: usize, limit: usize) -> (usize, Vec<String>) {
        let mut total = 0;
        let mut page = Vec::new();
        read(&self.retained).store.for_each_match(filter, |t, _| {
            if total >= offset && page.len() < limit {
                page.push(t.to_string());
            }
            total += 1;
        });
        (total, page)
    }

    /// Payload bytes of the retained messages matching `filter`, and of those resident.
    pub fn retained_bytes(&self, filter: &str) -> (u64, u64) {
        let r = read(&self.retained);
        let mut total = 0;
        r.store.for_each_match(filter, |_, e| total += u64::from(e.size));
        (total, r.resident_bytes() as u64)
    }

    /// The retained message of `topic` (read from the store if it is not in memory).
    pub fn retained_get(&self, topic: &str) -> Option<Arc<Message>> {
        let entry = read(&self.retained).store.get(topic).cloned()?;
        self.load_retained(topic, &entry)
    }

    /// Tell every attached connection to close with v5 0x8B Server shutting down:
    /// the flag first, then each session's waker (a connection attaching meanwhile
    /// checks the flag when it starts).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for cell in self.sessions.all() {
            let waker = cell.lock().waker.clone();
            if let Some(w) = waker {
                w.notify_one();
            }
        }
    }

    /// Whether [`Core::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Route without counting the message as received and without backpressure (`$SYS`, wills).
    pub fn publish_internal(&self, msg: &Arc<Message>) -> usize {
        self.route(msg, None, true).0
    }

    /// Like [`Core::publish_internal`], for a message the backplane also has: shared
    /// subscriptions are left to it when it delivers them ([`Core::shared_elsewhere`]).
    pub fn publish_beside_backplane(&self, msg: &Arc<Message>) -> usize {
        self.route(msg, None, !self.shared_elsewhere).0
    }

    /// How many sessions `msg` matched, and how many of them dropped it for their offline
    /// limits.
    fn route(
        &self,
        msg: &Arc<Message>,
        pressure: Option<&mut Vec<Arc<SessionCell>>>,
        local_shared: bool,
    ) -> (usize, usize) {
        let mut deliveries = ROUTE_SCRATCH.with(|s| s.take());
        let n = self.collect(msg, &mut deliveries, local_shared);
        let over_limit = self.deliver_all(&mut deliveries, pressure);
        if deliveries.capacity() <= MAX_KEPT_SCRATCH {
            ROUTE_SCRATCH.with(|s| s.set(deliveries));
        }
        (n, usize::try_from(over_limit).unwrap_or(usize::MAX))
    }

    /// Route several messages (tagged by the caller) like [`Core::publish_beside_backplane`],
    /// queueing them together: each session's under one lock, in order. Returns each tag
    /// with how many sessions its message reached.
    /// Messages a backplane stored (QoS 1/2 of another node) are kept for a slow subscriber
    /// beyond twice its queue limits ([`Queueing::stored_elsewhere`]). With `pressed`, the
    /// sessions these messages took to half their limits or beyond are added to it, each
    /// with the publishers whose messages were queued for it then ([`MAX_PRESSED`] pairs at
    /// most).
    pub(crate) fn route_batch<T>(
        &self,
        messages: impl Iterator<Item = (T, Arc<Message>)>,
        pressed: Option<&mut Vec<(Arc<SessionCell>, Arc<str>)>>,
    ) -> Vec<(T, usize)> {
        let mut deliveries = ROUTE_SCRATCH.with(|s| s.take());
        let reached: Vec<(T, usize)> = messages
            .map(|(tag, msg)| {
                let n = self.collect(&msg, &mut deliveries, !self.shared_elsewhere);
                (tag, n)
            })
            .collect();
        let q = Queueing {
            stored_elsewhere: true,
            ..self.queueing()
        };
        self.deliver_with(&mut deliveries, None, pressed, &q);
        if deliveries.capacity() <= MAX_KEPT_SCRATCH {
            ROUTE_SCRATCH.with(|s| s.set(deliveries));
        }
        reached
    }

    /// Queue `pending` (emptied), each session's messages under one lock and in
    /// the order they were routed; sessions over their limits are added to `pressure`.
    /// Returns how many messages sessions dropped for their offline limits.
    pub fn deliver_all(&self, pending: &mut Deliveries, pressure: Option<&mut Vec<Arc<SessionCell>>>) -> u64 {
        self.deliver_with(pending, pressure, None, &self.queueing())
    }

    fn deliver_with(
        &self,
        pending: &mut Deliveries,
        mut pressure: Option<&mut Vec<Arc<SessionCell>>>,
        mut pressed: Option<&mut Vec<(Arc<SessionCell>, Arc<str>)>>,
        q: &Queueing<'_>,
    ) -> u64 {
        if pending.len() > 1 {
            // Stable: each session keeps its messages in routing order.
            pending.sort_by_key(|(c, _)| c.order);
        }
        let mut it = pending.drain(..).peekable();
        let mut over_limit = 0;
        let track = pressed.is_some();
        // The publishers of one session's run (only with `pressed`).
        let mut publishers: Vec<Arc<str>> = Vec::new();
        while let Some((cell, first)) = it.next() {
            let rest = std::iter::from_fn(|| it.next_if(|(c, _)| Arc::ptr_eq(c, &cell)).map(|(_, o)| o));
            let run = std::iter::once(first).chain(rest);
            // Two calls rather than one with a test per message: a connection's publish path
            // (no `pressed`) stays as it was.
            let offered = if track {
                cell.enqueue_all(
                    run.inspect(|o| {
                        if let Some(p) = &o.msg.publisher {
                            if !publishers.iter().any(|q| q == p) {
                                publishers.push(p.clone());
                            }
                        }
                    }),
                    q,
                )
            } else {
                cell.enqueue_all(run, q)
            };
            // Reported from half the limits on: a publisher elsewhere hears of it one round
            // trip later, which the other half and more may take.
            if let Some(by) = pressed
                .as_deref_mut()
                .filter(|_| offered.pressure || cell.is_near_full())
            {
                for p in publishers.drain(..) {
                    if by.len() < MAX_PRESSED && !by.iter().any(|(c, q)| Arc::ptr_eq(c, &cell) && *q == p) {
                        by.push((cell.clone(), p));
                    }
                }
            }
            if track {
                publishers.clear();
            }
            if offered.dropped > 0 {
                self.counters
                    .messages_dropped
                    .fetch_add(offered.dropped, Ordering::Relaxed);
                over_limit += offered.over_limit;
            }
            if offered.pressure {
                if let Some(p) = pressure.as_deref_mut() {
                    if !p.iter().any(|c| Arc::ptr_eq(c, &cell)) {
                        p.push(cell);
                        self.metrics.slowdowns.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        over_limit
    }

    /// Append to `out` one delivery per matching session (shared subscriptions last, and
    /// only with `local_shared`); returns how many.
    fn collect(&self, msg: &Arc<Message>, out: &mut Deliveries, local_shared: bool) -> usize {
        if self.watch.on() {
            self.watch.offer(msg);
        }
        let start = out.len();
        let normal = out;
        // Taken from their per-thread scratch only when needed: most messages reach few
        // sessions and no shared subscription.
        let mut seen: Option<rustc_hash::FxHashMap<usize, usize>> = None;
        let mut shared: Option<Deliveries> = None;
        {
            let router = read(&self.router);
            router.for_each_match(&msg.topic, |m| match m {
                Match::Normal(e) => {
                    // [MQTT-3.8.3-3] No Local.
                    if e.options.no_local && msg.publisher.as_deref() == Some(&*e.session.client_id) {
                        return;
                    }
                    let qos = msg.qos.min(e.options.qos);
                    // [MQTT-3.3.1-12], [MQTT-3.3.1-13]: RETAIN is kept only with Retain As Published.
                    let retain = msg.retain && e.options.retain_as_published;
                    // Overlapping subscriptions of one session collapse while the trie is
                    // walked, into one delivery at the highest QoS with every subscription
                    // identifier (v5 section 3.3.4, 3.1.1 section 3.3.5). The session's
                    // delivery is found by a scan while this message has few, then in
                    // one probe of `seen`, however many of its filters match.
                    let key = Arc::as_ptr(&e.session) as usize;
                    let mine = &normal[start..];
                    let found = match &mut seen {
                        None if mine.len() <= FEW_DELIVERIES => mine
                            .iter()
                            .position(|(c, _)| Arc::as_ptr(c) as usize == key)
                            .map(|i| start + i),
                        _ => seen
                            .get_or_insert_with(|| {
                                let mut index = SEEN_SCRATCH.with(std::cell::Cell::take);
                                index.extend(
                                    mine.iter()
                                        .enumerate()
                                        .map(|(i, (c, _))| (Arc::as_ptr(c) as usize, start + i)),
                                );
                                index
                            })
                            .get(&key)
                            .copied(),
                    };
                    let at = found.unwrap_or_else(|| {
                        normal.push((
                            e.session.clone(),
                            Outgoing {
                                msg: msg.clone(),
                                qos,
                                retain,
                                sub_ids: Vec::new(),
                                shared: None,
                                seq: 0,
                                commit_seq: 0,
                                settle: None,
                            },
                        ));
                        if let Some(index) = &mut seen {
                            index.insert(key, normal.len() - 1);
                        }
                        normal.len() - 1
                    });
                    let slot = &mut normal[at].1;
                    slot.qos = slot.qos.max(qos);
                    slot.retain |= retain;
                    if let Some(id) = e.id {
                        slot.sub_ids.push(id);
                    }
                }
                Match::Shared(_) if !local_shared => {}
                Match::Shared(e) => {
                    let out = Outgoing {
                        msg: msg.clone(),
                        qos: msg.qos.min(e.options.qos),
                        retain: msg.retain && e.options.retain_as_published,
                        sub_ids: e.id.into_iter().collect(),
                        shared: e.shared.clone(),
                        seq: 0,
                        commit_seq: 0,
                        settle: None,
                    };
                    shared
                        .get_or_insert_with(|| SHARED_SCRATCH.with(std::cell::Cell::take))
                        .push((e.session.clone(), out));
                }
            });
        }
        if let Some(mut shared) = shared {
            normal.append(&mut shared);
            if shared.capacity() <= MAX_KEPT_SCRATCH {
                SHARED_SCRATCH.with(|s| s.set(shared));
            }
        }
        if let Some(mut index) = seen {
            index.clear();
            if index.capacity() <= MAX_KEPT_SCRATCH {
                SEEN_SCRATCH.with(|s| s.set(index));
            }
        }
        // A message waiting for an offline session may wait for long: it gets a copy that
        // owns its bytes rather than pinning the publisher's read buffer (one copy per
        // message, shared by all its deliveries).
        let kept_offline = |(c, out): &(Arc<SessionCell>, Outgoing)| {
            !c.is_connected() && (out.qos != QoS::AtMostOnce || self.config.queue_qos0_offline)
        };
        if normal[start..].iter().any(kept_offline) {
            // It reached this broker when the original did: a cluster's floors and the
            // delivery latency count from there for every delivery of it (without, a session
            // holding such a copy could not say how far back its messages go, and its floor
            // stayed where it was for as long as its subscriptions matched an offline session's).
            let mut copy = msg.detached();
            copy.received_at = msg.received_at;
            let owned = Arc::new(copy);
            for (_, out) in &mut normal[start..] {
                out.msg = owned.clone();
            }
        }
        normal.len() - start
    }

    fn deliver(&self, cell: &SessionCell, out: Outgoing) -> Enqueued {
        let r = cell.enqueue(out, &self.queueing());
        if matches!(r, Enqueued::Dropped | Enqueued::OverLimit) {
            self.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Add a subscription to the router; `true` when it replaced an existing one.
    pub fn subscribe(
        &self,
        full_filter: &str,
        cell: &Arc<SessionCell>,
        entry_opts: SubEntry,
    ) -> Result<bool, TrieFull> {
        let Ok(parsed) = topic::parse_filter(full_filter) else {
            return Ok(false);
        };
        let replaced =
            write(&self.router).subscribe(parsed.filter, parsed.share_group, &cell.client_id, entry_opts)?;
        if let (Some(b), false) = (&self.backplane, replaced) {
            b.subscribed(full_filter);
        }
        Ok(replaced)
    }

    /// Remove a subscription from the router; `true` when it existed.
    pub fn unsubscribe(&self, full_filter: &str, cell: &Arc<SessionCell>) -> bool {
        let Ok(parsed) = topic::parse_filter(full_filter) else {
            return false;
        };
        let existed = write(&self.router).unsubscribe(parsed.filter, parsed.share_group, &cell.client_id);
        if let (Some(b), true) = (&self.backplane, existed) {
            b.unsubscribed(full_filter);
        }
        existed
    }

    /// Queue the retained messages matching `filter` for `cell` (always with RETAIN set,
    /// [MQTT-3.3.1-8]): a cursor of the session reads them from the index in topic order, a
    /// batch at a time, as its queue drains ([`Core::stream_retained`]). A new SUBSCRIBE of
    /// a filter whose messages are still being sent starts that filter over.
    pub fn send_retained(
        &self,
        filter: &str,
        cell: &SessionCell,
        qos: QoS,
        sub_id: Option<u32>,
        now: Instant,
    ) {
        let up_to = {
            let r = read(&self.retained);
            if r.store.len() == 0 {
                return;
            }
            r.last_version()
        };
        {
            let mut st = cell.lock();
            if st.ended {
                return;
            }
            let cursors = st.retained.get_or_insert_with(Default::default);
            cursors.retain(|c| *c.filter != *filter);
            if cursors.len() >= MAX_RETAINED_CURSORS {
                tracing::warn!(client_id = %cell.client_id, filter, "retained messages not sent: the session is still sending those of {MAX_RETAINED_CURSORS} other subscriptions");
            } else {
                cursors.push_back(RetainedCursor {
                    filter: filter.into(),
                    after: None,
                    up_to,
                    qos,
                    sub_id,
                });
            }
            cell.note_streaming(&st);
        }
        self.stream_retained(cell, now);
    }

    /// Move retained messages waiting for `cell` into its queue while the queue is under half
    /// its limits. Called when a SUBSCRIBE adds them and by the session's connection each time
    /// it looks at the queue, so that they flow at the pace the client acknowledges.
    ///
    /// A retained message retained, replaced or cleared since the SUBSCRIBE is not sent: its
    /// newer state was published after the subscription and reached the client as a live
    /// message. The retained index is read-locked while the messages are queued (lock order:
    /// retained, then session), so a newer retained message cannot be queued between the
    /// check and the queueing.
    pub fn stream_retained(&self, cell: &SessionCell, now: Instant) {
        if !cell.is_streaming() {
            return;
        }
        let cfg = &self.config;
        // The first cursor that still has messages, and a batch of its entries.
        let (batch, qos, sub_id) = loop {
            let (room, bytes_room, filter, after, up_to, qos, sub_id) = {
                let st = cell.lock();
                // At least one at a time, and always into an empty queue (see `refill`: with
                // the smallest limits half of them is 0, and a connection whose SUBSCRIBE
                // matched retained messages spun for ever).
                let room = (cfg.max_queued_messages / 2)
                    .max(1)
                    .saturating_sub(st.queue.len());
                let bytes_room = (cfg.max_queued_bytes / 2).saturating_sub(st.queued_bytes);
                let Some(c) = st.retained.as_ref().and_then(|r| r.front()) else {
                    return;
                };
                if room == 0 || (bytes_room == 0 && !st.queue.is_empty()) {
                    return;
                }
                (
                    room,
                    bytes_room,
                    c.filter.clone(),
                    c.after.clone(),
                    c.up_to,
                    c.qos,
                    c.sub_id,
                )
            };
            let mut batch: Vec<(Box<str>, Retained)> = Vec::new();
            let (done, last) = {
                let r = read(&self.retained);
                let mut bytes = 0;
                let mut last: Option<&str> = None;
                let done = r.store.scan(&filter, after.as_deref(), |t, e| {
                    if e.version <= up_to && !e.is_expired(now) {
                        let size = e.size as usize;
                        // At least one message goes, however large, once there is room at all.
                        if !batch.is_empty() && (batch.len() >= room || bytes + size > bytes_room) {
                            return false;
                        }
                        bytes += size;
                        batch.push((Box::from(t), e.clone()));
                    }
                    last = Some(t);
                    true
                });
                (done, last.map(Box::<str>::from))
            };
            let mut st = cell.lock();
            let Some(cursors) = st.retained.as_mut() else {
                return;
            };
            match cursors.front_mut() {
                // Still this SUBSCRIBE's cursor (not started over meanwhile).
                Some(c) if c.up_to == up_to && c.filter == filter && c.after == after => {
                    if done {
                        cursors.pop_front();
                    } else if last.is_some() {
                        c.after = last;
                    }
                }
                _ => return,
            }
            if cursors.is_empty() {
                st.retained = None;
            }
            cell.note_streaming(&st);
            if !batch.is_empty() {
                break (batch, qos, sub_id);
            }
            if st.retained.is_none() {
                return;
            }
        };
        // Messages no longer in memory are read from the store before the index is locked.
        let loaded: Vec<Option<Arc<Message>>> = batch.iter().map(|(t, e)| self.load_retained(t, e)).collect();
        let retained = read(&self.retained);
        let outs = batch
            .into_iter()
            .zip(loaded)
            .filter(|((t, e), _)| retained.store.get(t).is_some_and(|c| c.version == e.version))
            .filter_map(|((_, e), msg)| {
                Some(Outgoing {
                    qos: e.qos.min(qos),
                    msg: msg?,
                    retain: true,
                    sub_ids: sub_id.into_iter().collect(),
                    shared: None,
                    seq: 0,
                    commit_seq: 0,
                    settle: None,
                })
            });
        let dropped = cell.enqueue_all(outs, &self.queueing()).dropped;
        drop(retained);
        if dropped > 0 {
            self.counters
                .messages_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Read messages that `cell` keeps on disk (see [`crate::session::Spill`]) into its
    /// queue while the queue is under half its limits, a batch at a time. Returns the durable
    /// ticket seen when the next ones are not durable yet (the connection then waits for a
    /// commit past it).
    pub fn refill(&self, cell: &SessionCell, now: Instant) -> Option<u64> {
        if !cell.is_streaming() {
            return None;
        }
        let cfg = &self.config;
        let (after, max) = {
            let st = cell.lock();
            let spill = st.spill.as_deref()?;
            // At least one at a time, and always into an empty queue: with
            // `max_queued_messages = 1` (or a byte limit of 1) half the limit is 0, and the
            // connection spun for ever without reading anything back.
            let room = (cfg.max_queued_messages / 2)
                .max(1)
                .saturating_sub(st.queue.len());
            if room == 0 || (!st.queue.is_empty() && st.queued_bytes >= cfg.max_queued_bytes / 2) {
                return None;
            }
            let count = usize::try_from(spill.count).unwrap_or(usize::MAX);
            (spill.after, room.min(count).min(REFILL_BATCH))
        };
        // What is durable before the read is visible to it.
        let observed = self.durability.committed();
        let read = match self.durability.read_queued(&cell.client_id, after, max) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(client_id = %cell.client_id, "cannot read queued messages back from the store: {e}");
                return None;
            }
        };
        let mut guard = cell.lock();
        let st = &mut *guard;
        let spill = st.spill.as_deref_mut()?;
        if spill.after != after || st.ended {
            // Another turn read them meanwhile.
            return None;
        }
        if read.is_empty() {
            if observed >= spill.ticket {
                tracing::warn!(client_id = %cell.client_id, missing = spill.count, "queued messages expected in the store are not there; going on without them");
                st.spill = None;
                cell.note_streaming(st);
                return None;
            }
            return Some(observed);
        }
        let mut expired = 0;
        for d in read {
            let size = d.message.payload.len();
            spill.count = spill.count.saturating_sub(1);
            spill.bytes = spill.bytes.saturating_sub(size as u64);
            spill.after = d.seq;
            if d.message.is_expired(now) {
                // [MQTT-3.3.2-5]: not delivered once expired.
                self.durability.forget_delivery(true, &cell.client_id, d.seq);
                expired += 1;
                continue;
            }
            st.queued_bytes += size;
            self.queued.grew(size);
            st.queue.push_back(Outgoing::from_stored(d));
        }
        if spill.count == 0 {
            st.spill = None;
        }
        if expired > 0 {
            self.metrics.dropped_expired.fetch_add(expired, Ordering::Relaxed);
        }
        cell.note_streaming(st);
        cell.note_fullness(st, cfg);
        None
    }

    /// End a session: remove its subscriptions and registry entry; messages it held
    /// through shared subscriptions go to another member of their group.
    pub fn end_session(&self, cell: &Arc<SessionCell>) {
        let (subs, orphans, will) = {
            let mut st = cell.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            let will = st.pending_will.take();
            let subs: Vec<String> = st.proto.subscriptions.drain().map(|(f, _)| f).collect();
            // A QoS 2 delivery that had started is never passed to another member (v5 [MQTT-4.8.2-5]):
            // its source, when a backplane delivered it, is told it is finished.
            let mut orphans: Vec<Outgoing> = st
                .proto
                .drain_inflight()
                .into_iter()
                .map(|i| i.message)
                .filter(|o| {
                    let again = o.qos != QoS::ExactlyOnce;
                    if let (false, Some(s)) = (again, &o.settle) {
                        s.done();
                    }
                    again
                })
                .collect();
            orphans.extend(st.queue.drain(..));
            st.retained = None;
            cell.note_streaming(&st);
            self.queued.shrank(st.queued_bytes);
            st.queued_bytes = 0;
            orphans.retain(|o| o.shared.is_some());
            (subs, orphans, will)
        };
        self.scheduler.cancel(cell);
        for f in &subs {
            self.unsubscribe(f, cell);
        }
        self.sessions.remove_if_same(cell);
        self.durability.submit(Change::DelSession(cell.client_id.clone()));
        if let Some(b) = &self.backplane {
            b.session_ended(&cell.client_id);
        }
        for out in orphans {
            if let Some(filter) = out.shared.clone() {
                self.redeliver_shared(&filter, out);
            }
        }
        // A delayed will is sent when the session ends first (v5 section 3.1.2.5).
        if let Some(w) = will {
            self.publish_will(&w);
        }
        tracing::debug!(client_id = %cell.client_id, "session ended");
    }

    /// Write the session's durable part (when persistence is on and the session outlives its
    /// connection).
    pub fn persist_session(&self, cell: &SessionCell, disconnected: bool) {
        self.save_session(cell, disconnected, false);
    }

    /// Tell the backplane that the session of `cell`, resumed by a connection with Session
    /// Expiry 0, now ends with that connection (its durable part with expiry 0: a broker
    /// that recovers sessions of a dead one leaves it out). Nothing for the store, which
    /// forgets the session when it ends. The backplane's ticket for the write.
    pub fn save_session_ending(&self, cell: &SessionCell) -> Option<crate::durability::Ticket> {
        let b = self.backplane.as_ref()?;
        let st = cell.lock();
        if st.ended || st.expiry_interval != 0 {
            return None;
        }
        let mut snapshot = self.snapshot(&st);
        snapshot.disconnected_at = 0;
        b.session_saved(&cell.client_id, &snapshot, false, held(&st), true)
    }

    /// [`Core::persist_session`]; with `awaited` (a SUBACK or UNSUBACK waits for it), the
    /// backplane's ticket for it, if it gives one.
    pub fn save_session(
        &self,
        cell: &SessionCell,
        disconnected: bool,
        awaited: bool,
    ) -> Option<crate::durability::Ticket> {
        let to_store = self.durability.enabled();
        let to_backplane = self.backplane.is_some();
        if !to_store && !to_backplane {
            return None;
        }
        let st = cell.lock();
        if st.ended || st.expiry_interval == 0 || (!st.persistent && !to_backplane) {
            return None;
        }
        let mut snapshot = self.snapshot(&st);
        if !disconnected {
            snapshot.disconnected_at = 0;
        }
        let ticket = self
            .backplane
            .as_ref()
            .and_then(|b| b.session_saved(&cell.client_id, &snapshot, disconnected, held(&st), awaited));
        if to_store && st.persistent {
            // Submitted under the session lock, which orders it with the session's other changes.
            self.durability
                .submit(Change::PutSession(cell.client_id.clone(), snapshot));
        }
        ticket
    }

    /// How far back the messages the session of `client_id` holds go (`None`: it has no
    /// session here).
    pub fn held_by(&self, client_id: &str) -> Option<crate::backplane::Held> {
        let cell = self.sessions.get(client_id)?;
        let st = cell.lock();
        (!st.ended).then(|| held(&st))
    }

    /// Where a backplane keeps the messages the session of `client_id` holds through its
    /// ordinary subscriptions, as far as their marks say (in flight, queued, and kept on
    /// disk, read back in batches): a cluster node restarted from its store does not read
    /// those again from its streams. Blocking (reads the store).
    pub fn places_held(&self, client_id: &str) -> std::collections::HashSet<(u16, u64)> {
        let mut out = std::collections::HashSet::new();
        let Some(cell) = self.sessions.get(client_id) else {
            return out;
        };
        let spill = {
            let st = cell.lock();
            if st.ended {
                return out;
            }
            // A shared subscription's copy stands for no ordinary one.
            let held = st.proto.inflight().map(|i| &i.message).chain(st.queue.iter());
            out.extend(
                held.filter(|o| o.shared.is_none())
                    .filter_map(|o| o.msg.backplane_position()),
            );
            st.spill.as_deref().copied()
        };
        if let Some(spill) = spill {
            let (mut after, mut left) = (spill.after, spill.count);
            while left > 0 {
                let read = match self.durability.read_queued(client_id, after, REFILL_BATCH) {
                    Ok(read) if !read.is_empty() => read,
                    _ => break,
                };
                for d in read {
                    after = d.seq;
                    left = left.saturating_sub(1);
                    if d.shared.is_none() {
                        out.extend(d.message.backplane_position());
                    }
                }
            }
        }
        out
    }

    /// Forget the incoming QoS 2 `packet_id` the session of `client_id` awaits a PUBREL for
    /// (and its stored record); whether it was there.
    pub fn forget_incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        let (Some(cell), Some(id)) = (self.sessions.get(client_id), tern_proto::PacketId::new(packet_id))
        else {
            return false;
        };
        let mut st = cell.lock();
        if st.ended || !st.proto.forget_qos2(id) {
            return false;
        }
        let persistent = st.persistent;
        drop(st);
        self.durability.forget_qos2(persistent, &cell.client_id, id);
        true
    }

    /// Await a PUBREL for the incoming QoS 2 `packet_id` of the session of `client_id`, and
    /// keep it in the store; whether the session is there (see
    /// [`Admin::remember_incoming_qos2`](crate::Admin::remember_incoming_qos2)).
    pub fn remember_incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        let (Some(cell), Some(id)) = (self.sessions.get(client_id), tern_proto::PacketId::new(packet_id))
        else {
            return false;
        };
        let mut st = cell.lock();
        if st.ended {
            return false;
        }
        st.proto.restore_qos2(id);
        let persistent = st.persistent;
        drop(st);
        self.durability.put_qos2(persistent, &cell.client_id, id);
        true
    }

    /// How far back the messages of each connected session that outlives its connection go
    /// (for a cluster node's periodic record of where to recover them from), with its
    /// `queued_total`.
    pub fn held_by_connected(&self) -> Vec<(Arc<str>, crate::backplane::Held, u64)> {
        let mut out = Vec::new();
        for cell in self.sessions.all() {
            let st = cell.lock();
            if st.conn_id.is_some() && st.expiry_interval > 0 && !st.ended {
                out.push((cell.client_id.clone(), held(&st), st.queued_total));
            }
        }
        out
    }

    /// The durable part of a session as it stands, gone now (`disconnected_at`).
    pub(crate) fn snapshot(&self, st: &crate::session::SessionState) -> SessionSnapshot {
        SessionSnapshot {
            version: st.version,
            expiry_interval: st.expiry_interval,
            disconnected_at: self.clock.wall_ms(),
            subscriptions: st
                .proto
                .subscriptions
                .iter()
                .map(|(f, (o, id))| (f.clone(), *o, *id))
                .collect(),
            pending_will: st
                .pending_will
                .as_ref()
                .map(|w| (record::to_wall(st.pending_will_at, self.clock.stamp()), w.clone())),
        }
    }

    /// Publish a will message (retained if it asked to be).
    pub fn publish_will(&self, msg: &Arc<Message>) {
        tracing::debug!(topic = %msg.topic, "publishing will");
        if msg.retain {
            self.retain(msg);
        }
        self.publish_beside_backplane(msg);
        if let Some(b) = &self.backplane {
            b.published(msg);
        }
    }

    /// Deliver `msg`, which a backplane brought for the shared subscription `full_filter`
    /// (`$share/GROUP/FILTER`), to one member of the group on this broker: a connected one,
    /// or, with `offline_ok`, any. `settle` is told when the delivery is finished (at once for
    /// a member subscribed at QoS 0) and dropped when it is abandoned.
    pub fn deliver_shared(
        &self,
        full_filter: &str,
        msg: Arc<Message>,
        settle: Option<Arc<dyn crate::message::Settlement>>,
        offline_ok: bool,
    ) -> SharedDelivery {
        self.deliver_shared_with(full_filter, msg, settle, offline_ok, None)
    }

    /// [`Core::deliver_shared`]; with `pressed`, the member with its message's publisher
    /// when the message took the member to half its queue limits or beyond (as
    /// [`Core::route_all_from_outside`] reports the sessions of ordinary subscriptions).
    pub fn deliver_shared_with(
        &self,
        full_filter: &str,
        msg: Arc<Message>,
        settle: Option<Arc<dyn crate::message::Settlement>>,
        offline_ok: bool,
        pressed: Option<&mut Vec<(Arc<SessionCell>, Arc<str>)>>,
    ) -> SharedDelivery {
        if msg.is_expired(self.clock.now()) {
            if let Some(s) = settle {
                s.done();
            }
            return SharedDelivery::Expired;
        }
        let Some(member) = self.shared_member(&msg.topic, full_filter) else {
            return SharedDelivery::NoMember;
        };
        let connected = member.session.is_connected();
        if !offline_ok && !connected {
            return SharedDelivery::NoMember;
        }
        let qos = msg.qos.min(member.options.qos);
        // The source hears at once for a member that takes it at QoS 0, and for one that is
        // offline unless it keeps the message until the member takes it
        // (`Settlement::keep_while_away`): the session keeps it (on disk with a store) until
        // the client is back, however long that is; offered again meanwhile, it would be
        // queued again.
        let settle = match (qos, settle) {
            (QoS::AtMostOnce, Some(s)) => {
                s.done();
                None
            }
            (_, Some(s)) if !connected && !s.keep_while_away() => {
                s.done();
                None
            }
            (_, s) => s,
        };
        // Kept for a member that is away: if its session cannot take it (its limits), it is
        // settled and dropped as before, not given back to come to the same member again.
        let kept = if connected { None } else { settle.clone() };
        let publisher = pressed.as_ref().and_then(|_| msg.publisher.clone());
        let out = Outgoing {
            retain: msg.retain && member.options.retain_as_published,
            msg,
            qos,
            sub_ids: member.id.into_iter().collect(),
            shared: member.shared,
            seq: 0,
            commit_seq: 0,
            settle,
        };
        match self.deliver(&member.session, out) {
            e @ (Enqueued::Queued | Enqueued::Pressure) => {
                if let (Some(by), Some(p)) = (pressed, publisher) {
                    let cell = member.session;
                    if (e == Enqueued::Pressure || cell.is_near_full()) && by.len() < MAX_PRESSED {
                        by.push((cell, p));
                    }
                }
                SharedDelivery::Delivered
            }
            Enqueued::Dropped | Enqueued::OverLimit | Enqueued::OverBudget => {
                // Settled only when the member is still away (its limits had no room):
                // given back when its session ended or its client came back meanwhile.
                if let Some(s) = kept {
                    let away = {
                        let st = member.session.lock();
                        st.conn_id.is_none() && !st.ended
                    };
                    if away {
                        s.done();
                    }
                }
                SharedDelivery::Dropped
            }
        }
    }

    fn redeliver_shared(&self, full_filter: &str, out: Outgoing) {
        if let Some(member) = self.shared_member(&out.msg.topic, full_filter) {
            self.deliver(&member.session, out);
        }
    }

    /// The member of the shared subscription `full_filter` that a message on `topic` goes
    /// to (the router's round-robin, connected members first).
    fn shared_member(&self, topic: &str, full_filter: &str) -> Option<SubEntry> {
        let router = read(&self.router);
        let mut chosen = None;
        router.for_each_match(topic, |m| {
            if let Match::Shared(e) = m {
                if chosen.is_none() && e.shared.as_deref() == Some(full_filter) {
                    chosen = Some(e.clone());
                }
            }
        });
        chosen
    }
}

/// What became of a message a backplane brought for a shared subscription
/// (`Core::deliver_shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedDelivery {
    /// Queued for one member.
    Delivered,
    /// No member here can take it now (none, or none connected): offer it elsewhere.
    NoMember,
    /// The member chosen could not keep it (its limits): offer it elsewhere.
    Dropped,
    /// Its Message Expiry Interval ran out: it goes nowhere.
    Expired,
}

/// A seed that tells apart the brokers of one process (tests run several).
fn recent_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
}

/// A retained message read back at start.
pub(crate) enum RestoredRetained {
    /// In memory.
    Resident(Arc<Message>),
    /// Only the store has it.
    OnDisk(crate::durability::RetainedOnDisk),
}

/// Most SUBSCRIBEs of one session whose retained messages are being sent at once (a cursor
/// each); beyond, a new filter's retained messages are not sent (logged).
const MAX_RETAINED_CURSORS: usize = 1024;

/// Most messages read back from the store for one session at a time.
const REFILL_BATCH: usize = 256;

/// Most messages of a session looked at for how far back what it holds goes (a QoS 2
/// delivery asks at every stage): beyond, it is not known.
const MAX_HELD_LOOK: usize = 10_000;

/// How far back the messages `st` holds in flight or queued go (the queue is in arrival
/// order but for retained messages; its first 1,000 are looked at, up to
/// [`MAX_HELD_LOOK`] once one has only a place in the backplane's store; a session with more
/// on disk, or taken in from another broker without its rest yet, counts as unknown).
fn held(st: &crate::session::SessionState) -> crate::backplane::Held {
    use crate::backplane::Held;
    if st.spill.is_some() || st.arriving {
        return Held::Unknown;
    }
    let mut oldest: Option<Instant> = None;
    let mut lowest: Vec<(u16, u64)> = Vec::new();
    let held = st.proto.inflight().map(|i| &i.message).chain(st.queue.iter());
    for (i, o) in held.enumerate() {
        // Placed messages (read back from a backplane's store) are in their shard's order,
        // not in arrival order: each is looked at.
        if i >= 1000 && lowest.is_empty() {
            break;
        }
        if i >= MAX_HELD_LOOK {
            return Held::Unknown;
        }
        match (o.msg.received_at, o.msg.backplane_position()) {
            (Some(t), _) => oldest = Some(oldest.map_or(t, |x| x.min(t))),
            (None, Some((k, seq))) => match lowest.iter_mut().find(|(shard, _)| *shard == k) {
                Some((_, low)) => *low = (*low).min(seq),
                None => lowest.push((k, seq)),
            },
            (None, None) => return Held::Unknown,
        }
    }
    match (oldest, lowest.is_empty()) {
        (since, false) => Held::Placed { since, lowest },
        (Some(t), true) => Held::Since(t),
        (None, true) => Held::Nothing,
    }
}
