//! # tern-proto
//!
//! The MQTT 3.1, 3.1.1 and 5.0 protocol for Tern, with no I/O: the packet model,
//! an incremental zero-copy codec, MQTT 5.0 properties and reason codes, and
//! topic validation and matching. Nothing here reads a socket or a clock.
//!
//! ## Layout
//! - [`packet`]: one struct per packet shape, shared by all versions; v5-only
//!   fields (properties, reason codes) live in the same structs.
//! - [`codec`]: the [`Decoder`] (fixed header checked first, size limit before
//!   buffering, `Bytes` slices for strings and payloads) and the property tables.
//!   Encoding is [`Packet::encode`], which computes the exact size first.
//! - [`topic`]: topic name / filter validation, `$share` parsing, [`topic::matches`].
//! - [`session`]: the client's session state machine, sans-IO: inputs are
//!   `handle_*` calls with the current time, outputs are `poll_*` calls.
//! - [`ReasonCode`] and the errors, with [`DecodeError::reason_code`] as the one
//!   place where a decode failure becomes a wire code, and [`Violation`] (rules
//!   broken in packets that decoded, by either side) with [`Violation::reason_code`]
//!   as the one place where what closes a connection becomes a DISCONNECT code.
//!
//! ## Example
//! ```
//! use bytes::BytesMut;
//! use tern_proto::{Decoded, Decoder, Packet, ProtocolVersion, Publish, QoS, PacketId};
//!
//! let mut publish = Publish::new("sensors/room1", "22.5");
//! publish.qos = QoS::AtLeastOnce;
//! publish.packet_id = PacketId::new(7);
//! let packet = Packet::Publish(publish);
//!
//! let mut buf = BytesMut::new();
//! packet.encode(ProtocolVersion::V5, &mut buf).unwrap();
//!
//! let decoder = Decoder::new(ProtocolVersion::V5, 1024);
//! assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Packet(packet));
//! assert!(buf.is_empty());
//! ```

pub mod codec;
mod error;
pub mod packet;
mod qos;
mod reason;
pub mod session;
pub mod topic;
mod version;
mod violation;

pub use bytes::Bytes;
pub use bytestring::ByteString;
pub use codec::{decode, Decoded, Decoder};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Publish, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use qos::{PacketId, QoS};
pub use reason::ReasonCode;
pub use version::ProtocolVersion;
pub use violation::{Role, Violation};
