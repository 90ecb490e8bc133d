//! Pluggable MQTT 5.0 enhanced authentication (section 4.12): the AUTH packet
//! exchange, with the method itself supplied by an [`Authenticator`].
//!
//! The broker runs the exchange: on a CONNECT with an Authentication Method it
//! finds the authenticator for that method (none: CONNACK 0x8C Bad
//! authentication method, [MQTT-4.12.0-1]), feeds it the client's
//! Authentication Data, and sends AUTH 0x18 (Continue authentication) until the
//! exchange succeeds (CONNACK 0x00) or fails (CONNACK 0x87). A connected client
//! can re-authenticate with AUTH 0x19 using the same method ([MQTT-4.12.1-1]).

use bytes::Bytes;

/// What to answer the client after one step of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 Continue authentication with this Authentication Data.
    Continue(Bytes),
    /// Authentication succeeded; the final Authentication Data, if any, goes in CONNACK (or AUTH 0x00).
    Success(Option<Bytes>),
    /// Authentication failed: CONNACK 0x87 Not authorized (or DISCONNECT 0x87 on re-authentication).
    Failure,
}

/// The state of one exchange with one client.
pub trait AuthExchange: Send {
    /// Feed the Authentication Data the client sent (in CONNECT or AUTH).
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;

    /// After [`AuthStep::Success`]: the user the exchange authenticated, which then
    /// is the client's user name for the ACL (default: none; the CONNECT user name
    /// is used).
    fn identity(&self) -> Option<String> {
        None
    }
}

/// An enhanced authentication method.
pub trait Authenticator: Send + Sync + 'static {
    /// The Authentication Method name this authenticator handles, e.g. `SCRAM-SHA-256`.
    fn method(&self) -> &str;
    /// Start an exchange for a client (its identifier and user name as sent in CONNECT).
    fn begin(&self, client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange>;
}
