//! Snappy-framed replies: read a chunk at a time, or decompressed whole.
//!
//! A sweep's CONNZ replies are megabytes each once decompressed. The sweep's parser reads them
//! through an [`Unframer`], a chunk (at most 64 KiB) at a time into a small window, so no reply
//! is ever held decompressed whole ([`scan`](super::scan)). Other replies are small and are
//! decompressed whole ([`inflate`]).

use async_nats::Message;
use bytes::Bytes;

/// A reply's payload as it came: plain, or snappy-framed (its `Content-Encoding`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// The reply's own bytes.
    Plain(&'a [u8]),
    /// A framed snappy stream of the reply's bytes.
    Snappy(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// `msg`'s payload, snappy when its `Content-Encoding` says so.
    pub fn of(msg: &'a Message) -> Self {
        match is_snappy(msg) {
            true => Self::Snappy(&msg.payload),
            false => Self::Plain(&msg.payload),
        }
    }

    /// The length of the reply's bytes (decompressed), from the chunk headers alone; `None`
    /// when a snappy payload is not a framed stream.
    pub fn len(&self) -> Option<usize> {
        match self {
            Self::Plain(b) => Some(b.len()),
            Self::Snappy(f) => framed_len(f),
        }
    }
}

/// Whether `msg`'s payload is snappy-framed.
pub(crate) fn is_snappy(msg: &Message) -> bool {
    msg.headers
        .as_ref()
        .and_then(|h| h.get("Content-Encoding"))
        .is_some_and(|v| v.as_str().eq_ignore_ascii_case("snappy"))
}

/// The bytes a framed snappy stream holds, decompressed whole, or why they cannot be had.
pub(crate) fn inflate(framed: &[u8]) -> Result<Bytes, String> {
    let len = framed_len(framed).ok_or("not a snappy stream")?;
    let mut buf = vec![0; len];
    let mut u = Unframer::new(framed);
    let mut at = 0;
    loop {
        match u.next_into(&mut buf, at)? {
            0 => break,
            n => at += n,
        }
    }
    match at == len {
        true => Ok(Bytes::from(buf)),
        false => Err("truncated stream".into()),
    }
}

/// The body of the stream identifier chunk.
const STREAM: &[u8] = b"sNaPpY";
/// The most bytes one chunk holds once decompressed.
pub(crate) const MAX_BLOCK: usize = 65_536;

/// A framed snappy stream read a chunk at a time: every chunk's checksum checked, chunk types
/// as the framing format says (the stream starts with its identifier; reserved unskippable
/// types refused).
pub(crate) struct Unframer<'f> {
    rest: &'f [u8],
    first: bool,
    decoder: snap::raw::Decoder,
}

impl<'f> Unframer<'f> {
    /// Reads `framed` from its start.
    pub fn new(framed: &'f [u8]) -> Self {
        Self {
            rest: framed,
            first: true,
            decoder: snap::raw::Decoder::new(),
        }
    }

    /// Decompresses the next chunk that holds bytes into `buf` from `at` on (`buf` grown when
    /// it is too short): how many bytes it held, 0 at the end of the stream.
    pub fn next_into(&mut self, buf: &mut Vec<u8>, at: usize) -> Result<usize, String> {
        while let Some((kind, body, rest)) = chunk(self.rest) {
            self.rest = rest;
            if std::mem::take(&mut self.first) && kind != 0xff {
                return Err("no stream identifier".into());
            }
            let (sum, data) = match kind {
                0x00 | 0x01 if body.len() >= 4 => {
                    let sum = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
                    (sum, &body[4..])
                }
                0xff if body == STREAM => continue,
                0x80..=0xfe => continue,
                _ => return Err(format!("bad chunk of type {kind:#04x}")),
            };
            let n = match kind {
                0x00 => snap::raw::decompress_len(data).map_err(|e| e.to_string())?,
                _ => data.len(),
            };
            if n > MAX_BLOCK {
                return Err("a chunk longer than a block".into());
            }
            if buf.len() < at + n {
                buf.resize(at + n, 0);
            }
            let dst = &mut buf[at..at + n];
            match kind {
                0x00 => {
                    let got = self
                        .decoder
                        .decompress(data, dst)
                        .map_err(|e| e.to_string())?;
                    if got != n {
                        return Err("a block shorter than its header".into());
                    }
                }
                _ => dst.copy_from_slice(data),
            }
            if masked_crc(dst) != sum {
                return Err("checksum mismatch".into());
            }
            if n > 0 {
                return Ok(n);
            }
        }
        match self.rest.is_empty() {
            true => Ok(0),
            false => Err("truncated stream".into()),
        }
    }
}

/// The next chunk of `framed`: its type, its body and what follows.
fn chunk(framed: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&kind, rest) = framed.split_first()?;
    let len = usize::from(*rest.first()?)
        | usize::from(*rest.get(1)?) << 8
        | usize::from(*rest.get(2)?) << 16;
    let body = rest.get(3..3 + len)?;
    Some((kind, body, &rest[3 + len..]))
}

/// The checksum of the framing format: CRC-32C, masked.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The decompressed length of a framed snappy stream, from its chunk headers (the checks are
/// [`Unframer`]'s); `None` when it is not one.
pub(crate) fn framed_len(mut framed: &[u8]) -> Option<usize> {
    let mut total = 0usize;
    while !framed.is_empty() {
        let (kind, body, rest) = chunk(framed)?;
        total += match kind {
            // Compressed: a 4-byte checksum, then the block, whose header says its length.
            0x00 => snap::raw::decompress_len(body.get(4..)?).ok()?,
            // Uncompressed: a 4-byte checksum, then the bytes.
            0x01 => body.len().checked_sub(4)?,
            // The stream identifier, padding, skippable chunks.
            _ => 0,
        };
        framed = rest;
    }
    Some(total)
}

/// `text` as a framed snappy stream, as `snap` (and nats-server) write it: blocks of 64 KiB.
#[cfg(test)]
pub(crate) fn framed(text: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    let mut w = snap::write::FrameEncoder::new(&mut out);
    w.write_all(text).expect("frames");
    drop(w);
    out
}

/// `text` framed in uncompressed chunks of at most `size` bytes: for tests of a reader that
/// must not care where the chunks end.
#[cfg(test)]
pub(crate) fn framed_in_chunks(text: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0xff, 6, 0, 0];
    out.extend_from_slice(STREAM);
    for part in text.chunks(size.max(1)) {
        let len = part.len() + 4;
        out.push(0x01);
        out.extend_from_slice(&len.to_le_bytes()[..3]);
        out.extend_from_slice(&masked_crc(part).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests;
