//! The error type of `mfp-core`.
//!
//! Messages name what was wrong and, where useful, the offending *sizes*; they never
//! contain key material, states, frames or payload bytes.

use thiserror::Error;

/// Every way an `mfp-core` operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A fixed-size value (identifier, state, key, block) was built from the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {actual}")]
    InvalidLength {
        /// What was being built.
        what: &'static str,
        /// Required length in bytes.
        expected: usize,
        /// Length that was supplied.
        actual: usize,
    },
    /// Hex text of the wrong length for a fixed-size value.
    #[error("{what} must be {expected} hex digits, got {actual}")]
    InvalidHexLength {
        /// What was being parsed.
        what: &'static str,
        /// Required number of hex digits.
        expected: usize,
        /// Number of characters supplied.
        actual: usize,
    },
    /// Text that should have been lowercase or uppercase hexadecimal was not.
    #[error("{what} is not valid hexadecimal")]
    InvalidHex {
        /// What was being parsed.
        what: &'static str,
    },
    /// A frame depth below [`crate::MIN_FRAME_DEPTH`].
    #[error("frame depth {0} is below the minimum {min}", min = crate::MIN_FRAME_DEPTH)]
    FrameDepthTooSmall(usize),
    /// A frame depth above the allowed maximum (the protocol cap [`crate::MAX_FRAME_DEPTH`]
    /// or a caller-given limit).
    #[error("frame depth {depth} is above the maximum {max}")]
    FrameDepthTooLarge {
        /// Depth that was requested or received.
        depth: usize,
        /// Maximum in force.
        max: usize,
    },
    /// Frame bytes whose length is not a whole number of 16-byte blocks.
    #[error("frame length {0} is not a multiple of the 16-byte block size")]
    FrameLength(usize),
    /// `frame_close` is not the mirror of `frame_open`, or `frame_open` is not the expected frame.
    #[error("frame validation failed")]
    FrameValidation,
    /// Authenticated decryption failed (wrong key, step, channel, or tampered bytes).
    #[error("payload decode failed")]
    DecodeFailed,
    /// An encoding algorithm other than `aes-256-gcm` was requested.
    #[error("unsupported encoding algorithm")]
    UnsupportedAlgorithm,
    /// A payload too large to encode (it would not fit the envelope's 32-bit length field
    /// or exceeds a caller-given limit).
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Payload length in bytes.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// A protocol message or wire message whose length does not match its frame depth and
    /// payload length.
    #[error("message length {actual} does not match the expected {expected}")]
    MessageLength {
        /// Length implied by depth and payload length.
        expected: usize,
        /// Length that was supplied.
        actual: usize,
    },
    /// An envelope header failed validation.
    #[error("invalid envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The caller's entropy source failed.
    #[error("entropy source failed")]
    Entropy,
    /// A Merkle tree operation named a channel the tree does not hold, or inserted one twice.
    #[error("{0}")]
    Merkle(MerkleError),
    /// A cryptographic primitive rejected its input (e.g. an all-zero X25519 shared secret).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

/// Why an envelope header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than a 64-byte header.
    #[error("truncated header: {0} bytes, need 64")]
    Truncated(usize),
    /// Magic is not `MFP1`.
    #[error("bad magic")]
    BadMagic,
    /// Version is not 1.
    #[error("unsupported version 0x{0:04x}")]
    UnsupportedVersion(u16),
    /// The reserved bytes are not all zero.
    #[error("non-zero reserved field")]
    NonZeroReserved,
    /// Frame depth below the protocol minimum of 2.
    #[error("frame depth {0} below minimum 2")]
    DepthTooSmall(u32),
    /// Frame depth above the receiver's limit.
    #[error("frame depth {depth} above limit {max}")]
    DepthTooLarge {
        /// Depth in the header.
        depth: u32,
        /// Receiver's limit.
        max: u32,
    },
    /// Encoded payload length shorter than the 16-byte GCM tag.
    #[error("payload length {0} shorter than the authentication tag")]
    PayloadTooShort(u32),
    /// Encoded payload length above the receiver's limit.
    #[error("payload length {len} above limit {max}")]
    PayloadTooLarge {
        /// Length in the header.
        len: u32,
        /// Receiver's limit.
        max: u32,
    },
    /// The channel id is not one the receiver knows.
    #[error("unknown channel")]
    UnknownChannel,
    /// `sender_runtime` is not the expected peer.
    #[error("unexpected sender runtime")]
    UnexpectedSender,
    /// The bytes after the header do not have the length the header announces.
    #[error("body length {actual} does not match the header's {expected}")]
    BodyLength {
        /// Length the header implies.
        expected: usize,
        /// Length present.
        actual: usize,
    },
}

/// Why a Merkle tree operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// The channel is already a leaf of the tree.
    #[error("channel already present in the global state tree")]
    Duplicate,
    /// The channel is not a leaf of the tree.
    #[error("channel not present in the global state tree")]
    NotFound,
}

impl From<MerkleError> for Error {
    fn from(e: MerkleError) -> Self {
        Error::Merkle(e)
    }
}

/// Result alias for `mfp-core`.
pub type Result<T, E = Error> = core::result::Result<T, E>;
