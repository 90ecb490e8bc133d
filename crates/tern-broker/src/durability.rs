//! What the protocol handling asks of durable storage, in its own terms: keep a queued message, keep a delivery at
//! this stage, forget it, keep or forget a QoS 2 packet identifier, group the changes of one
//! PUBLISH, and say when acknowledgements may go out. The connection code calls only this; the
//! store's records and operations (`store::record`, `store::Op`) stay behind it.
//!
//! This is the first step towards the `Durability` trait of docs/design/protocol-core.md (typed
//! changes, a redb implementation, the cluster's later): today it is a thin layer over the one
//! [`Store`], a no-op when the broker keeps no state on disk.
//!
//! Every change is submitted while the session lock that orders it is held (`st`), and only for
//! a session kept in the store (`st.persistent`).

use std::sync::Arc;

use tern_proto::{PacketId, QoS};

use crate::message::Outgoing;
use crate::session::{InflightState, SessionState};
use crate::store::{record, Group, Op, Payload, Store};

/// The durable storage of a broker, as its protocol handling sees it.
#[derive(Debug, Clone)]
pub(crate) struct Durability {
    store: Option<Arc<Store>>,
}

impl Durability {
    /// Over `store`; `None` keeps nothing.
    pub fn new(store: Option<Arc<Store>>) -> Durability {
        Durability { store }
    }

    /// Whether anything is kept at all.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// Whether storing has failed (then QoS 1/2 messages must be refused).
    pub fn failed(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.is_failed())
    }

    /// Keep a QoS 1/2 message queued for `client`'s persistent session: it gets the session's
    /// next sequence number, and the ticket its delivery must wait for (`commit_seq`). The
    /// message itself is written once, whatever the number of sessions queueing it; each
    /// session's record refers to it.
    pub fn put_queued(&self, st: &mut SessionState, client: &Arc<str>, out: &mut Outgoing) {
        if let (Some(store), true, true) = (&self.store, st.persistent, out.qos != QoS::AtMostOnce) {
            out.seq = st.next_seq;
            st.next_seq += 1;
            out.commit_seq = store.submit(Self::record(store, client, out, None));
        }
    }

    /// The change that keeps `out` for `client` at `state`.
    fn record(
        store: &Store,
        client: &Arc<str>,
        out: &Outgoing,
        state: Option<(InflightState, PacketId)>,
    ) -> Op {
        let id = out.msg.stored.get_or_assign(|| store.next_payload_id());
        let rec = record::queued(out, state, id);
        let payload = Payload {
            id,
            msg: out.msg.clone(),
        };
        Op::PutMessage(client.clone(), out.seq, rec, payload)
    }

    /// Keep a delivery of `client` at `stage` (it was sent with `packet_id`).
    pub fn put_delivery(
        &self,
        st: &SessionState,
        client: &Arc<str>,
        out: &Outgoing,
        stage: InflightState,
        packet_id: PacketId,
    ) {
        if let (Some(store), true, true) = (&self.store, st.persistent, out.seq != 0) {
            store.submit(Self::record(store, client, out, Some((stage, packet_id))));
        }
    }

    /// Forget a finished (or dropped) delivery of `client`.
    pub fn forget_delivery(&self, st: &SessionState, client: &Arc<str>, seq: u64) {
        if let (Some(store), true, true) = (&self.store, st.persistent, seq != 0) {
            store.submit(Op::DelMessage(client.clone(), seq));
        }
    }

    /// Keep an incoming QoS 2 packet identifier awaiting PUBREL.
    pub fn put_qos2(&self, st: &SessionState, client: &Arc<str>, id: PacketId) {
        if let (Some(store), true) = (&self.store, st.persistent) {
            store.submit(Op::PutQos2(client.clone(), id.get()));
        }
    }

    /// Forget an incoming QoS 2 packet identifier (PUBREL came).
    pub fn forget_qos2(&self, st: &SessionState, client: &Arc<str>, id: PacketId) {
        if let (Some(store), true) = (&self.store, st.persistent) {
            store.submit(Op::DelQos2(client.clone(), id.get()));
        }
    }

    /// Open a group: what is submitted until [`Durability::end_group`] is durable together or
    /// not at all (a QoS 2 packet identifier and the copies routed for it).
    pub fn group(&self) -> Option<Group> {
        self.store.as_ref().map(|s| s.group())
    }

    /// Close a group.
    pub fn end_group(&self, g: Option<Group>) {
        if let (Some(store), Some(g)) = (&self.store, g) {
            store.end_group(g);
        }
    }

    /// The highest change durable so far (`u64::MAX` without a store: everything is).
    pub fn committed(&self) -> u64 {
        self.store.as_ref().map_or(u64::MAX, |s| s.committed())
    }

    /// Notified whenever more is durable (`None` without a store).
    pub fn watch_committed(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.as_ref().map(|s| s.watch_committed())
    }

    /// Wait until everything submitted so far is durable.
    pub async fn wait_submitted(&self) -> Result<(), crate::store::StoreError> {
        match &self.store {
            Some(store) => store.wait(store.submitted()).await,
            None => Ok(()),
        }
    }
}
