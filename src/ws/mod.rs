//! The WebSocket frame codec (RFC 6455 §5 and §7), server side, with no I/O.
//!
//! Owns: parsing and validating frames received from a client ([`Decoder`]), unmasking
//! ([`mask`]), incremental UTF-8 validation of text messages ([`utf8`]), Close frame bodies and
//! status codes ([`close`]), permessage-deflate's inflater and deflater ([`deflate`]) and the headers of the (unmasked) frames a server sends
//! ([`encode_header`], [`close::encode_close`]).
//!
//! Does not own: the opening handshake (HTTP Upgrade), sockets, timers, buffering policy,
//! ping/pong or closing-handshake policy, or logging. Those belong to the rest of the gateway,
//! which drives this codec with bytes it has read and frames it wants to write.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use deflate::{DeflateParams, DeflateSettings, Deflater, Inflater};
pub use frame::{
    encode_frame, encode_header, Decoder, DecoderLimits, Frame, OpCode, OwnedFrame, ProtocolError,
    MAX_SERVER_HEADER_BYTES,
};
