//! Snappy-framed replies, decompressed straight into one buffer that goes from reply to reply.
//!
//! A sweep's replies are megabytes each once decompressed. A fresh buffer per reply is a fresh
//! mapping whose every page faults in (it was ~14% of a sweep's CPU), and `snap`'s reader
//! copies each block once more through its own buffer. Here each block is decompressed where
//! it belongs in the output, and the output is lent to the reply: when the reply is dropped,
//! its buffer comes back for the next one, while the [`Inflater`] lives (a sweeper keeps one
//! from sweep to sweep).

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Decompresses replies, reusing one buffer while each reply is dropped before the next
/// arrives.
#[derive(Debug, Default)]
pub(crate) struct Inflater {
    spare: Arc<Mutex<Option<Vec<u8>>>>,
}

/// A decompressed payload on loan from an [`Inflater`]: back to it when dropped.
struct Lent {
    buf: Vec<u8>,
    home: Weak<Mutex<Option<Vec<u8>>>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            if let Ok(mut spare) = home.lock() {
                spare.get_or_insert_with(|| std::mem::take(&mut self.buf));
            }
        }
    }
}

impl Inflater {
    /// The bytes a framed snappy stream holds, or why they cannot be had.
    pub fn inflate(&self, framed: &[u8]) -> Result<Bytes, String> {
        let len = framed_len(framed).ok_or("not a snappy stream")?;
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        let mut buf = match spare {
            // Bytes a reply left are initialized: cut or extended, nothing is zeroed twice.
            Some(mut b) if b.capacity() >= len => {
                b.resize(len, 0);
                b
            }
            // A fresh buffer comes zeroed from the system (calloc): no pass to zero it. Its
            // spare quarter is never touched (so not resident) unless a longer reply comes.
            short => {
                drop(short);
                let mut b = vec![0; len + len / 4];
                b.truncate(len);
                b
            }
        };
        unframe(framed, &mut buf)?;
        Ok(Bytes::from_owner(Lent {
            buf,
            home: Arc::downgrade(&self.spare),
        }))
    }
}

/// The body of the stream identifier chunk.
const STREAM: &[u8] = b"sNaPpY";
/// The most bytes one chunk holds once decompressed.
const MAX_BLOCK: usize = 65_536;

/// Decompresses `framed` into `out`, whose length must be [`framed_len`]'s: every chunk's
/// checksum checked, chunk types as the framing format says (the stream starts with its
/// identifier; reserved unskippable types refused).
fn unframe(mut framed: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut at = 0;
    let mut first = true;
    let mut decoder = snap::raw::Decoder::new();
    while let Some((kind, body, rest)) = chunk(framed) {
        framed = rest;
        if first && kind != 0xff {
            return Err("no stream identifier".into());
        }
        first = false;
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
        let dst = out
            .get_mut(at..at + n)
            .filter(|_| n <= MAX_BLOCK)
            .ok_or("a chunk longer than a block or than the stream")?;
        match kind {
            0x00 => {
                let got = decoder.decompress(data, dst).map_err(|e| e.to_string())?;
                if got != n {
                    return Err("a block shorter than its header".into());
                }
            }
            _ => dst.copy_from_slice(data),
        }
        if masked_crc(dst) != sum {
            return Err("checksum mismatch".into());
        }
        at += n;
    }
    match (framed.is_empty(), at == out.len()) {
        (true, true) => Ok(()),
        _ => Err("truncated stream".into()),
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
/// [`unframe`]'s); `None` when it is not one.
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

#[cfg(test)]
mod tests;
