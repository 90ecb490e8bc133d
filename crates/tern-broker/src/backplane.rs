//! The broker's seam to other brokers: a [`Backplane`] hears what this broker's clients publish
//! and subscribe to, and brings messages from elsewhere in through
//! [`BrokerHandle::publish`](crate::BrokerHandle::publish).
//!
//! One node has none (the publish path then pays one branch). A cluster backend forwards
//! published messages to the other nodes and follows subscription interest to receive only
//! what local sessions want; a bridge does the same towards a remote broker.

use std::sync::Arc;

use crate::message::Message;

/// Where messages and subscriptions go beyond this broker. Called synchronously, on the
/// publishing or subscribing connection's task: an implementation hands the work to its own
/// tasks (through a bounded queue) and never blocks.
pub trait Backplane: Send + Sync + std::fmt::Debug {
    /// A client of this broker published `message` (a will included), after it was routed
    /// to the local sessions. Not called for messages that came in through
    /// [`BrokerHandle::publish`](crate::BrokerHandle::publish), nor for `$SYS` statistics.
    fn published(&self, message: &Arc<Message>);

    /// A session of this broker subscribed to `filter` (the full filter, with the
    /// `$share/GROUP/` prefix of a shared subscription).
    fn subscribed(&self, filter: &str);

    /// A session of this broker no longer subscribes to `filter` (unsubscribed, or its
    /// session ended).
    fn unsubscribed(&self, filter: &str);
}
