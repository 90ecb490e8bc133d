//! Enhanced authentication on the client side (MQTT 5.0 section 4.12): the
//! method itself (SCRAM, Kerberos...) is supplied by the application as an
//! [`AuthMethod`]; the session runs the exchange.
//!
//! Order: [`AuthMethod::start`] gives the Authentication Data of CONNECT; each
//! AUTH 0x18 from the server goes to [`AuthMethod::step`], whose answer is sent
//! back in AUTH 0x18; the CONNACK Success's Authentication Data goes to
//! [`AuthMethod::finish`], which may still refuse the server (a server that
//! cannot prove it knows the credentials). Any error closes the connection with
//! DISCONNECT 0x87. Every new connection starts again with `start`.

use bytes::Bytes;

/// An enhanced authentication method, as a sans-IO state machine.
pub trait AuthMethod: Send + std::fmt::Debug {
    /// The Authentication Method name, e.g. `SCRAM-SHA-256`.
    fn name(&self) -> &str;
    /// Begin an exchange: the Authentication Data for CONNECT.
    fn start(&mut self) -> Option<Bytes>;
    /// The server's AUTH 0x18 Authentication Data; the answer to send, or why to give up.
    fn step(&mut self, data: Option<&[u8]>) -> Result<Bytes, String>;
    /// The Authentication Data of CONNACK Success: `Ok` when the server has proved itself.
    fn finish(&mut self, data: Option<&[u8]>) -> Result<(), String>;
}
