//! Length-prefixed frames read from a QUIC receive stream: the one read loop of the three
//! kinds of stream — a connection's control stream, and a session stream's header and
//! data. As in mini-redis, whole frames are split off a buffer (`wire::split_frame`, which
//! checks the length against the stream's limit first), and the stream is read only when
//! the buffer holds no whole frame. A reader that wants to act once per read — hand a
//! batch of messages over, say — takes [`FrameReader::buffered`] frames until there are
//! none and then calls [`FrameReader::fill`]; one that wants a single frame calls
//! [`FrameReader::read_frame`].

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, VarInt};
use wasmwire_wire::{self as wire, FrameError};

/// Most bytes taken from the stream per read.
const CHUNK: usize = 64 << 10;

/// Why the next frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// Malformed: a frame over the limit, or a stream that ended inside a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed: reset by the peer, or its connection lost.
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// A receive stream read as frames of at most `limit` bytes.
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    limit: usize,
}

impl FrameReader {
    /// Reads `recv` as frames of at most `limit` bytes.
    pub fn new(recv: RecvStream, limit: usize) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// From now on frames may be up to `limit` bytes (a session's data frames, after its
    /// header); bytes already read stay.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The next whole frame already read, if there is one; reads nothing.
    #[inline]
    pub fn buffered(&mut self) -> Result<Option<Bytes>, FrameError> {
        wire::split_frame(&mut self.buf, self.limit)
    }

    /// The bytes of the whole frames already read whose bodies are under `below` bytes
    /// (lengths only: the frames are not checked here).
    pub fn buffered_below(&self, below: usize) -> usize {
        wire::whole_frames_below(&self.buf, below)
    }

    /// Reads more of the stream: false at its end, an error if it ended inside a frame.
    pub async fn fill(&mut self) -> Result<bool, ReadError> {
        match self.recv.read_chunk(CHUNK, true).await? {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            None => {
                wire::at_end(&self.buf)?;
                Ok(false)
            }
        }
    }

    /// The next frame, reading the stream as needed; `None` at the stream's end.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Tells the peer to stop sending, with an application error code.
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(VarInt::from_u32(code));
    }
}
