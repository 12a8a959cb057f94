use std::io::{Read, Write};

use super::*;

fn framed(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = snap::write::FrameEncoder::new(&mut out);
    w.write_all(text).unwrap();
    drop(w);
    out
}

/// What `snap`'s own reader makes of `framed`.
fn reference(framed: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    snap::read::FrameDecoder::new(framed)
        .read_to_end(&mut out)
        .ok()
        .map(|_| out)
}

/// A CONNZ-like text (compressible) with runs of noise (incompressible: stored uncompressed).
fn sample(seed: u64, conns: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut text = b"{\"connections\":[".to_vec();
    for cid in 0..conns {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(
            format!("{{\"cid\":{cid},\"name\":\"app-{}\"}},", x % 97).as_bytes(),
        );
        if x % 5 == 0 {
            text.extend((0..300).map(|i| (x.rotate_left(i) & 0xff) as u8));
        }
    }
    text
}

#[test]
fn a_stream_reads_as_snaps_own_reader_reads_it() {
    for (seed, conns) in [(1, 0), (2, 1), (3, 900), (4, 5_000), (5, 20_000)] {
        let text = sample(seed, conns);
        let f = framed(&text);
        assert_eq!(framed_len(&f), Some(text.len()));
        let got = Inflater::default().inflate(&f).unwrap();
        assert_eq!(&got[..], &text[..], "seed {seed}");
        assert_eq!(reference(&f).as_deref(), Some(&text[..]));
    }
}

#[test]
fn what_snaps_reader_refuses_is_refused_and_what_it_reads_is_read_the_same() {
    let f = framed(&sample(7, 2_000));
    let inflater = Inflater::default();
    let mut refused = 0;
    // Every truncation, and one byte changed at every place of the first 2 KB and then every
    // 97th (headers, checksums, blocks).
    let cuts = (0..f.len()).map(|n| f[..n].to_vec());
    let flips = (0..f.len()).filter(|i| *i < 2048 || i % 97 == 0).map(|i| {
        let mut g = f.clone();
        g[i] ^= 0x5a;
        g
    });
    for g in cuts.chain(flips) {
        let mine = inflater.inflate(&g).ok().map(|b| b.to_vec());
        assert_eq!(mine, reference(&g), "{} bytes", g.len());
        refused += usize::from(mine.is_none());
    }
    assert!(refused > f.len(), "most changes are refused: {refused}");
}

#[test]
fn a_stream_without_its_identifier_or_with_a_reserved_chunk_is_refused() {
    let f = framed(b"hello, hello, hello");
    let inflater = Inflater::default();
    assert!(inflater.inflate(&f[10..]).is_err(), "no identifier");
    let mut reserved = f.clone();
    reserved.extend_from_slice(&[0x02, 0, 0, 0]);
    assert!(inflater.inflate(&reserved).is_err());
    let mut skippable = f.clone();
    skippable.extend_from_slice(&[0x80, 1, 0, 0, 9]);
    assert_eq!(
        &inflater.inflate(&skippable).unwrap()[..],
        b"hello, hello, hello"
    );
    assert!(inflater.inflate(b"not snappy at all").is_err());
    assert_eq!(framed_len(b""), Some(0));
}

#[test]
fn a_dropped_reply_lends_its_buffer_to_the_next_and_a_held_one_does_not() {
    let (big, small) = (sample(11, 3_000), sample(12, 2_000));
    let inflater = Inflater::default();
    let first = inflater.inflate(&framed(&big)).unwrap();
    let at = first.as_ptr();
    // Held: the next reply gets a buffer of its own.
    let second = inflater.inflate(&framed(&small)).unwrap();
    assert_ne!(second.as_ptr(), at);
    assert_eq!(&second[..], &small[..]);
    drop(first);
    drop(second);
    // Dropped: the next replies (no longer than the first) are decompressed into its buffer,
    // each whole (nothing left of the longer one before).
    let third = inflater.inflate(&framed(&small)).unwrap();
    assert_eq!(third.as_ptr(), at);
    assert_eq!(&third[..], &small[..]);
    drop(third);
    let fourth = inflater.inflate(&framed(&big)).unwrap();
    assert_eq!(fourth.as_ptr(), at);
    assert_eq!(&fourth[..], &big[..]);
    // Kept past its inflater, a reply is still whole.
    drop(inflater);
    assert_eq!(&fourth[..], &big[..]);
}
