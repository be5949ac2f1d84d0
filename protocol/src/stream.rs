//! Framing over a caller-supplied `Read`/`Write` (pipes in the binaries,
//! byte slices in tests and fuzzers). Opens nothing itself.

use crate::chunk::{decode_chunk_payload, ChunkHeader};
use crate::frame::{self, FrameKind, HEADER_LEN, TRAILER_LEN};
use crate::manifest::read_full;
use crate::message::{
    decode_reply, decode_request, encode_reply, encode_request, Hello, Reply, Request,
};
use crate::ProtocolError;
use std::io::{IoSlice, Read, Write};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StreamError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    // Not `#[source]`: the message already carries the error, and anyhow
    // would print it twice.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("the peer closed the stream")]
    Eof,
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        StreamError::Io(e)
    }
}

/// One decoded frame. Chunk data borrows the reader's buffer.
#[derive(Debug)]
pub enum Incoming<'a> {
    Hello(Hello),
    Request(Request),
    Reply(Reply),
    Chunk(ChunkHeader, &'a [u8]),
}

impl Incoming<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Incoming::Hello(_) => "hello",
            Incoming::Request(r) => r.name(),
            Incoming::Reply(r) => r.name(),
            Incoming::Chunk(..) => "chunk",
        }
    }
}

/// Told when a frame has begun (its header is in: `true`) and when it is
/// over (`false`), so the caller can bound how long one frame may take: a
/// peer that announces a large frame and then trickles it must not hold
/// the reader for as long as it likes. The time itself is the caller's.
pub type Pace = std::sync::Arc<dyn Fn(bool) + Send + Sync>;

pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes consumed so far (for error messages and tests).
    pub offset: u64,
    pace: Option<Pace>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            offset: 0,
            pace: None,
        }
    }

    /// Reports the start and end of every frame to `pace`.
    pub fn set_pace(&mut self, pace: Option<Pace>) {
        self.pace = pace;
    }

    /// Reads one frame. A clean end of stream between frames is `Eof`; an
    /// end inside a frame is `Truncated`.
    pub fn read_frame(&mut self) -> Result<(FrameKind, &[u8]), StreamError> {
        let hdr = self.read_header()?;
        let total = hdr.len as usize + TRAILER_LEN;
        // The cap was checked with the header, before the buffer grows.
        self.buf.resize(total, 0);
        let payload = paced(&self.pace, || {
            read_body(&mut self.inner, hdr, &mut self.buf[..total])
        })?;
        self.offset += (HEADER_LEN + total) as u64;
        Ok((hdr.kind, payload))
    }

    /// Reads and decodes one frame.
    pub fn next_frame(&mut self) -> Result<Incoming<'_>, StreamError> {
        let (kind, payload) = self.read_frame()?;
        decode_incoming(kind, payload)
    }

    /// Reads and decodes one frame into `dst` instead of the reader's own
    /// buffer: the caller chooses where chunk data lands (on a page
    /// boundary for direct I/O, say) and can hand the buffer on. A frame
    /// longer than `dst` holds is `FrameTooLong`, before anything is read.
    pub fn next_frame_into<'b>(&mut self, dst: &'b mut [u8]) -> Result<Incoming<'b>, StreamError> {
        let hdr = self.read_header()?;
        let total = hdr.len as usize + TRAILER_LEN;
        if total > dst.len() {
            return Err(ProtocolError::FrameTooLong {
                len: hdr.len,
                cap: dst.len().saturating_sub(TRAILER_LEN) as u32,
            }
            .into());
        }
        let payload = paced(&self.pace, || {
            read_body(&mut self.inner, hdr, &mut dst[..total])
        })?;
        self.offset += (HEADER_LEN + total) as u64;
        decode_incoming(hdr.kind, payload)
    }

    fn read_header(&mut self) -> Result<frame::FrameHeader, StreamError> {
        let mut h = [0u8; HEADER_LEN];
        let n = read_full(&mut self.inner, &mut h)?;
        if n == 0 {
            return Err(StreamError::Eof);
        }
        if n < HEADER_LEN {
            return Err(ProtocolError::Truncated("header").into());
        }
        Ok(frame::decode_header(&h)?)
    }

    pub fn read_hello(&mut self) -> Result<Hello, StreamError> {
        match self.next_frame()? {
            Incoming::Hello(h) => Ok(h),
            other => Err(unexpected("hello", &other)),
        }
    }

    pub fn read_request(&mut self) -> Result<Request, StreamError> {
        match self.next_frame()? {
            Incoming::Request(r) => Ok(r),
            other => Err(unexpected("request", &other)),
        }
    }

    pub fn read_reply(&mut self) -> Result<Reply, StreamError> {
        match self.next_frame()? {
            Incoming::Reply(r) => Ok(r),
            other => Err(unexpected("reply", &other)),
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Runs `body` (the rest of a frame whose header is in) between the two
/// calls of `pace`.
fn paced<T>(pace: &Option<Pace>, body: impl FnOnce() -> T) -> T {
    if let Some(p) = pace {
        p(true);
    }
    let r = body();
    if let Some(p) = pace {
        p(false);
    }
    r
}

/// Reads payload and trailer into `buf` (exactly their length) and checks
/// the CRC; returns the payload.
fn read_body<'b, R: Read>(
    inner: &mut R,
    hdr: frame::FrameHeader,
    buf: &'b mut [u8],
) -> Result<&'b [u8], StreamError> {
    if read_full(inner, buf)? != buf.len() {
        return Err(ProtocolError::Truncated("payload").into());
    }
    let (payload, trailer) = buf.split_at(hdr.len as usize);
    frame::check_crc(hdr.kind, payload, trailer.try_into().expect("4 bytes"))?;
    Ok(payload)
}

fn decode_incoming(kind: FrameKind, payload: &[u8]) -> Result<Incoming<'_>, StreamError> {
    Ok(match kind {
        FrameKind::Hello => Incoming::Hello(Hello::decode(payload)?),
        FrameKind::Request => Incoming::Request(decode_request(payload)?),
        FrameKind::Reply => Incoming::Reply(decode_reply(payload)?),
        FrameKind::Chunk => {
            let (h, data) = decode_chunk_payload(payload)?;
            Incoming::Chunk(h, data)
        }
    })
}

pub fn unexpected(expected: &'static str, got: &Incoming<'_>) -> StreamError {
    ProtocolError::UnexpectedFrame {
        expected,
        got: got.name(),
    }
    .into()
}

pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    /// Writes one frame whose payload is the concatenation of `parts`,
    /// without copying them together: header, parts and trailer go out as
    /// one vectored write, so a buffered writer can pass a large frame
    /// straight to the pipe instead of copying it into its buffer.
    pub fn write_frame(&mut self, kind: FrameKind, parts: &[&[u8]]) -> Result<(), StreamError> {
        const MAX_PARTS: usize = 4;
        let len = parts.iter().map(|p| p.len()).sum();
        let header = frame::encode_header(kind, len)?;
        let trailer = frame::checksum(kind, parts).to_le_bytes();
        if parts.len() > MAX_PARTS {
            self.inner.write_all(&header)?;
            for p in parts {
                self.inner.write_all(p)?;
            }
            self.inner.write_all(&trailer)?;
            return Ok(());
        }
        // A fixed array, not a Vec: no allocation per frame.
        let mut slices = [IoSlice::new(&[]); MAX_PARTS + 2];
        slices[0] = IoSlice::new(&header);
        for (s, p) in slices[1..].iter_mut().zip(parts) {
            *s = IoSlice::new(p);
        }
        slices[parts.len() + 1] = IoSlice::new(&trailer);
        let mut rest = &mut slices[..parts.len() + 2];
        while !rest.is_empty() {
            match self.inner.write_vectored(rest) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub fn hello(&mut self, h: &Hello) -> Result<(), StreamError> {
        self.write_frame(FrameKind::Hello, &[&h.encode()])?;
        self.flush()
    }

    pub fn request(&mut self, r: &Request) -> Result<(), StreamError> {
        self.write_frame(FrameKind::Request, &[&encode_request(r)])
    }

    pub fn reply(&mut self, r: &Reply) -> Result<(), StreamError> {
        self.write_frame(FrameKind::Reply, &[&encode_reply(r)])
    }

    pub fn chunk(&mut self, h: &ChunkHeader, data: &[u8]) -> Result<(), StreamError> {
        self.write_frame(FrameKind::Chunk, &[&h.encode(), data])
    }

    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Codec;
    use crate::message::{HelloBody, Operation};
    use proptest::prelude::*;

    #[test]
    fn pace_brackets_each_frame_after_its_header() {
        let mut w = FrameWriter::new(Vec::new());
        w.request(&Request::Bye).unwrap();
        w.request(&Request::Abort).unwrap();
        let bytes = std::mem::take(w.get_mut());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = log.clone();
        let mut r = FrameReader::new(&bytes[..]);
        r.set_pace(Some(std::sync::Arc::new(move |b| {
            l.lock().unwrap().push(b)
        })));
        r.read_request().unwrap();
        r.read_request().unwrap();
        // A clean end between frames starts no frame.
        assert!(matches!(r.read_request(), Err(StreamError::Eof)));
        assert_eq!(*log.lock().unwrap(), vec![true, false, true, false]);
        // A frame cut inside its body still ends the bracket.
        let mut r = FrameReader::new(&bytes[..7]);
        let l = log.clone();
        log.lock().unwrap().clear();
        r.set_pace(Some(std::sync::Arc::new(move |b| {
            l.lock().unwrap().push(b)
        })));
        assert!(r.read_request().is_err());
        assert_eq!(*log.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn conversation_round_trip() {
        let mut w = FrameWriter::new(Vec::new());
        w.hello(&Hello::new(HelloBody::Agent {
            archive_id: None,
            op: Operation::Admin,
        }))
        .unwrap();
        w.request(&Request::ListVolumes { after: None }).unwrap();
        let h = ChunkHeader {
            addr: 0,
            codec: Codec::Sealed,
            raw_len: 3,
            hash: [1; 32],
        };
        w.chunk(&h, b"abc").unwrap();
        let bytes = w.get_mut().clone();
        let mut r = FrameReader::new(&bytes[..]);
        r.read_hello().unwrap();
        assert_eq!(
            r.read_request().unwrap(),
            Request::ListVolumes { after: None }
        );
        match r.next_frame().unwrap() {
            Incoming::Chunk(hh, d) => assert_eq!((hh, d), (h, &b"abc"[..])),
            o => panic!("{o:?}"),
        }
        assert!(matches!(r.next_frame(), Err(StreamError::Eof)));
        assert!(matches!(
            FrameReader::new(&bytes[..]).read_reply(),
            Err(StreamError::Protocol(ProtocolError::UnexpectedFrame { .. }))
        ));
    }

    /// A writer that takes at most 3 bytes per call, vectored or not.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_frames_survive_short_writes_and_read_into_a_given_buffer() {
        let h = ChunkHeader {
            addr: 0x40000,
            codec: Codec::Sealed,
            raw_len: 1000,
            hash: [7; 32],
        };
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let mut whole = FrameWriter::new(Vec::new());
        whole.chunk(&h, &data).unwrap();
        whole.request(&Request::Abort).unwrap();
        let mut short = FrameWriter::new(Trickle(Vec::new()));
        short.chunk(&h, &data).unwrap();
        short.request(&Request::Abort).unwrap();
        assert_eq!(short.get_mut().0, *whole.get_mut());

        let bytes = whole.get_mut().clone();
        let mut r = FrameReader::new(&bytes[..]);
        let mut dst = vec![0u8; 2000];
        let base = dst.as_ptr() as usize;
        match r.next_frame_into(&mut dst).unwrap() {
            Incoming::Chunk(hh, d) => {
                assert_eq!((hh, d), (h, &data[..]));
                // The data sits right after the chunk header, in `dst`.
                assert_eq!(d.as_ptr() as usize - base, crate::chunk::HEADER_LEN);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(r.read_request().unwrap(), Request::Abort);
        // A frame longer than the given buffer: refused, nothing read past
        // its header.
        let mut r = FrameReader::new(&bytes[..]);
        let mut small = vec![0u8; 500];
        assert!(matches!(
            r.next_frame_into(&mut small),
            Err(StreamError::Protocol(ProtocolError::FrameTooLong { .. }))
        ));
        assert_eq!(r.offset, 0);
    }

    #[test]
    fn oversized_claim_is_refused_before_allocating() {
        let mut b = vec![0xff, 0xff, 0xff, 0x7f, 0x04];
        b.extend_from_slice(&[0; 16]);
        let mut r = FrameReader::new(&b[..]);
        assert!(matches!(
            r.next_frame(),
            Err(StreamError::Protocol(ProtocolError::FrameTooLong { .. }))
        ));
        assert!(r.buf.capacity() < 1024);
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut r = FrameReader::new(&bytes[..]);
            for _ in 0..64 {
                if r.next_frame().is_err() { break; }
            }
        }
    }
}
