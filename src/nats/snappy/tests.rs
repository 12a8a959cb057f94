use std::io::Read;

use super::*;

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
        let got = inflate(&f).unwrap();
        assert_eq!(&got[..], &text[..], "seed {seed}");
        assert_eq!(reference(&f).as_deref(), Some(&text[..]));
    }
}

#[test]
fn what_snaps_reader_refuses_is_refused_and_what_it_reads_is_read_the_same() {
    let f = framed(&sample(7, 2_000));
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
        let mine = inflate(&g).ok().map(|b| b.to_vec());
        assert_eq!(mine, reference(&g), "{} bytes", g.len());
        refused += usize::from(mine.is_none());
    }
    assert!(refused > f.len(), "most changes are refused: {refused}");
}

#[test]
fn a_stream_without_its_identifier_or_with_a_reserved_chunk_is_refused() {
    let f = framed(b"hello, hello, hello");
    assert!(inflate(&f[10..]).is_err(), "no identifier");
    let mut reserved = f.clone();
    reserved.extend_from_slice(&[0x02, 0, 0, 0]);
    assert!(inflate(&reserved).is_err());
    let mut skippable = f.clone();
    skippable.extend_from_slice(&[0x80, 1, 0, 0, 9]);
    assert_eq!(&inflate(&skippable).unwrap()[..], b"hello, hello, hello");
    assert!(inflate(b"not snappy at all").is_err());
    assert_eq!(framed_len(b""), Some(0));
}

#[test]
fn a_stream_read_a_chunk_at_a_time_holds_the_same_bytes() {
    let text = sample(13, 4_000);
    for f in [
        framed(&text),
        framed_in_chunks(&text, 1),
        framed_in_chunks(&text, 1000),
    ] {
        assert_eq!(reference(&f).as_deref(), Some(&text[..]));
        let mut u = Unframer::new(&f);
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        loop {
            match u.next_into(&mut buf, 0).unwrap() {
                0 => break,
                n => {
                    assert!(n <= MAX_BLOCK);
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
        assert_eq!(got, text);
    }
}
