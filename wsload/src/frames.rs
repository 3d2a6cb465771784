//! The client side of RFC 6455 framing, as little of it as a load generator needs: masked
//! frames out (built once, sent many times), unmasked server frames in (counted, not copied).
//! With permessage-deflate (RFC 7692): each message compressed as it is sent, and compressed
//! messages from the server inflated to count their bytes.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Bytes of a masked client frame header for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    let ext = if len < 126 {
        0
    } else if len <= 0xFFFF {
        2
    } else {
        8
    };
    2 + ext + 4
}

/// Append one masked client frame (FIN set) with `opcode` and `payload` to `out`, masked with
/// `key` (RFC 6455 §5.3; an all-zero key is legal and leaves the payload unchanged).
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    let len = payload.len();
    out.reserve(header_len(len) + len);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    if key != [0; 4] {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }
}

/// The payload of every test message: printable ASCII (valid UTF-8 for text messages).
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A text payload that reads like JSON records, so that compression has real work to do.
pub fn json_payload(size: usize) -> Vec<u8> {
    const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
    let mut out = Vec::with_capacity(size + 128);
    out.push(b'[');
    let mut n = 0usize;
    while out.len() < size {
        out.extend_from_slice(
            format!(
                "{{\"id\":{},\"user\":\"{}\",\"status\":\"active\",\"score\":{},\"tags\":[\"t{}\",\"web\"]}},",
                1000 + n,
                USERS[n % USERS.len()],
                (n * 37) % 1000,
                n % 7
            )
            .as_bytes(),
        );
        n += 1;
    }
    out.truncate(size);
    out
}

/// The sending side of permessage-deflate.
pub struct Deflater {
    compress: Compress,
    /// `client_no_context_takeover`: every message starts with a fresh window.
    no_context: bool,
}

impl Deflater {
    pub fn new(window_bits: u8, no_context: bool) -> Deflater {
        Deflater {
            compress: Compress::new_with_window_bits(Compression::default(), false, window_bits),
            no_context,
        }
    }

    /// Append one masked frame (FIN, RSV1) holding `payload` compressed (RFC 7692 §7.2.1:
    /// raw deflate, sync flush, the trailing 00 00 ff ff removed).
    pub fn push_frame(&mut self, out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
        let mut comp: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
        let start_in = self.compress.total_in();
        loop {
            if comp.capacity() - comp.len() < 64 {
                comp.reserve(comp.capacity().max(256));
            }
            let done = (self.compress.total_in() - start_in) as usize;
            // Compressing into a Vec cannot fail (no stream error is possible here).
            let _ = self
                .compress
                .compress_vec(&payload[done..], &mut comp, FlushCompress::Sync);
            let done = (self.compress.total_in() - start_in) as usize;
            if done == payload.len() && comp.len() < comp.capacity() {
                break;
            }
        }
        if comp.ends_with(&[0, 0, 0xff, 0xff]) {
            comp.truncate(comp.len() - 4);
        }
        if self.no_context {
            self.compress.reset();
        }
        let at = out.len();
        push_frame(out, opcode, &comp, key);
        out[at] |= 0x40;
    }
}

/// The receiving side of permessage-deflate: compressed messages are gathered and inflated.
pub struct Inflater {
    decompress: Decompress,
    /// The current message is compressed (RSV1 on its first frame).
    compressed: bool,
    /// The current frame is the message's last.
    fin: bool,
    message: Vec<u8>,
    scratch: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater {
            decompress: Decompress::new(false),
            compressed: false,
            fin: false,
            message: Vec::new(),
            scratch: vec![0; 64 * 1024],
        }
    }
}

impl Inflater {
    /// Inflate the gathered message; returns its inflated length.
    fn finish(&mut self) -> Result<u64, ReadError> {
        self.message.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let start_in = self.decompress.total_in();
        let start_out = self.decompress.total_out();
        loop {
            let done = (self.decompress.total_in() - start_in) as usize;
            let before = self.decompress.total_out();
            let status = self
                .decompress
                .decompress(
                    &self.message[done..],
                    &mut self.scratch,
                    FlushDecompress::Sync,
                )
                .map_err(|_| ReadError::Protocol("invalid deflate data"))?;
            let done = (self.decompress.total_in() - start_in) as usize;
            let produced = (self.decompress.total_out() - before) as usize;
            if matches!(status, Status::StreamEnd)
                || (done == self.message.len() && produced < self.scratch.len())
            {
                break;
            }
        }
        self.message.clear();
        Ok(self.decompress.total_out() - start_out)
    }
}

/// A Close frame (code 1000) from the client.
pub fn close_frame(key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    push_frame(&mut out, 0x8, &1000u16.to_be_bytes(), key);
    out
}

/// Why reading server frames must stop.
#[derive(Debug)]
pub enum ReadError {
    /// The server sent a Close frame (with its code, if any).
    Closed(Option<u16>),
    /// The server broke the protocol (a masked frame, a reserved opcode, a long control frame).
    Protocol(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed(Some(code)) => write!(f, "server sent Close {code}"),
            ReadError::Closed(None) => write!(f, "server sent Close"),
            ReadError::Protocol(why) => write!(f, "server protocol error: {why}"),
        }
    }
}

/// Streaming parser of the frames a server sends. Data payloads are only counted; control
/// frames are handled (Ping -> a Pong queued for sending, Close -> an error).
#[derive(Default)]
pub struct Reader {
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// permessage-deflate was negotiated.
    inflate: Option<Box<Inflater>>,
}

impl Reader {
    /// A reader that inflates compressed messages (RSV1) to count their bytes.
    pub fn inflating() -> Reader {
        Reader {
            remaining: 0,
            inflate: Some(Box::default()),
        }
    }

    /// The current data frame is complete: with a compressed message's last frame, inflate it.
    fn frame_done(&mut self) -> Result<u64, ReadError> {
        match &mut self.inflate {
            Some(inf) if inf.compressed && inf.fin => inf.finish(),
            _ => Ok(0),
        }
    }

    /// Consume the bytes `buf[..*len]`: returns how many data payload bytes they held (data
    /// frames of any type, continuation frames included). Bytes of an incomplete header or
    /// control frame are moved to the front of `buf` and `*len` is set to their count. Pongs
    /// for Pings are appended to `control`, masked with `key`.
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        len: &mut usize,
        control: &mut Vec<u8>,
        key: [u8; 4],
    ) -> Result<u64, ReadError> {
        let end = *len;
        let mut pos = 0usize;
        let mut data = 0u64;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min((end - pos) as u64);
                match &mut self.inflate {
                    Some(inf) if inf.compressed => inf
                        .message
                        .extend_from_slice(&buf[pos..pos + take as usize]),
                    _ => data += take,
                }
                self.remaining -= take;
                pos += take as usize;
                if self.remaining > 0 {
                    break;
                }
                data += self.frame_done()?;
            }
            let avail = &buf[pos..end];
            if avail.len() < 2 {
                break;
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b1 & 0x80 != 0 {
                return Err(ReadError::Protocol("masked server frame"));
            }
            let (hl, plen) = match b1 & 0x7f {
                126 => {
                    if avail.len() < 4 {
                        break;
                    }
                    (4, u64::from(u16::from_be_bytes([avail[2], avail[3]])))
                }
                127 => {
                    if avail.len() < 10 {
                        break;
                    }
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&avail[2..10]);
                    (10, u64::from_be_bytes(be))
                }
                n => (2, u64::from(n)),
            };
            match b0 & 0x0f {
                op @ 0..=2 => {
                    pos += hl;
                    self.remaining = plen;
                    if let Some(inf) = &mut self.inflate {
                        if op != 0 {
                            inf.compressed = b0 & 0x40 != 0;
                        }
                        inf.fin = b0 & 0x80 != 0;
                    }
                    if plen == 0 {
                        data += self.frame_done()?;
                    }
                }
                op @ (0x8..=0xA) => {
                    if plen > 125 {
                        return Err(ReadError::Protocol("control frame longer than 125"));
                    }
                    let total = hl + plen as usize;
                    if avail.len() < total {
                        break;
                    }
                    let body = &avail[hl..total];
                    match op {
                        0x8 => {
                            let code =
                                (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                            return Err(ReadError::Closed(code));
                        }
                        0x9 => push_frame(control, 0xA, body, key),
                        _ => {} // Pong: ignored
                    }
                    pos += total;
                }
                _ => return Err(ReadError::Protocol("reserved opcode")),
            }
        }
        if pos < end {
            buf.copy_within(pos..end, 0);
        }
        *len = end - pos;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_frame(&mut v, opcode, payload, [0; 4]);
        // Turn the client frame into a server frame: clear the mask bit, drop the zero key.
        v[1] &= 0x7f;
        let hl = v.len() - payload.len();
        v.drain(hl - 4..hl);
        v
    }

    #[test]
    fn counts_data_across_arbitrary_splits() {
        let mut stream = Vec::new();
        stream.extend(server_frame(0x2, &[7; 70_000]));
        stream.extend(server_frame(0x9, b"hi"));
        stream.extend(server_frame(0x1, &[b'x'; 300]));
        stream.extend(server_frame(0x2, &[1; 5]));
        for chunk in [1usize, 2, 3, 7, 100, 4096, 100_000] {
            let mut r = Reader::default();
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let mut control = Vec::new();
            let mut total = 0;
            for piece in stream.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = rest.len().min(buf.len() - len);
                    buf[len..len + n].copy_from_slice(&rest[..n]);
                    len += n;
                    rest = &rest[n..];
                    total += r.feed(&mut buf, &mut len, &mut control, [0; 4]).unwrap();
                }
            }
            assert_eq!(total, 70_000 + 300 + 5, "chunk {chunk}");
            assert_eq!(len, 0);
            assert_eq!(control, vec![0x8A, 0x82, 0, 0, 0, 0, b'h', b'i']);
        }
    }

    #[test]
    fn close_and_masked_frames_are_errors() {
        let mut r = Reader::default();
        let mut buf = server_frame(0x8, &1001u16.to_be_bytes());
        let mut len = buf.len();
        let e = r.feed(&mut buf, &mut len, &mut Vec::new(), [0; 4]);
        assert!(matches!(e, Err(ReadError::Closed(Some(1001)))));
        let mut buf = Vec::new();
        push_frame(&mut buf, 0x2, b"abc", [1, 2, 3, 4]);
        let mut len = buf.len();
        let e = Reader::default().feed(&mut buf, &mut len, &mut Vec::new(), [0; 4]);
        assert!(matches!(e, Err(ReadError::Protocol(_))));
    }

    #[test]
    fn compressed_messages_inflate_to_their_size() {
        for no_context in [false, true] {
            let mut d = Deflater::new(15, no_context);
            let mut stream = Vec::new();
            let msg = json_payload(1024);
            for _ in 0..3 {
                let mut f = Vec::new();
                d.push_frame(&mut f, 0x1, &msg, [0; 4]);
                assert_eq!(f[0], 0xC1);
                assert!(f.len() < 600, "compressed to {}", f.len());
                // As a server frame: no mask bit, no key.
                f[1] &= 0x7f;
                let hl = if f[1] == 126 { 4 } else { 2 };
                f.drain(hl..hl + 4);
                stream.extend(f);
            }
            for chunk in [1usize, 7, 100, 100_000] {
                let mut r = Reader::inflating();
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                let mut total = 0;
                for piece in stream.chunks(chunk) {
                    buf[len..len + piece.len()].copy_from_slice(piece);
                    len += piece.len();
                    total += r.feed(&mut buf, &mut len, &mut Vec::new(), [0; 4]).unwrap();
                }
                assert_eq!((total, len), (3 * 1024, 0), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn masking_round_trips() {
        let mut v = Vec::new();
        push_frame(&mut v, 0x2, &payload(200), [9, 8, 7, 6]);
        assert_eq!(&v[..4], &[0x82, 0x80 | 126, 0, 200]);
        let key = [v[4], v[5], v[6], v[7]];
        let body: Vec<u8> = v[8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3])
            .collect();
        assert_eq!(body, payload(200));
    }
}
