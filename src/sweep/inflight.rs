//! Reply bytes in flight: a reply is in flight from the moment its request is sent until it is
//! parsed and dropped (the servers, the network and connwatch's client buffers hold it for
//! connwatch meanwhile). The peak over a sweep is what asking a few servers at a time bounds.

use tokio::time::Instant;

/// One reply: when its request was sent, when it was parsed, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span<T = Instant> {
    /// When the request was sent.
    pub sent: T,
    /// When the reply was parsed (and dropped).
    pub parsed: T,
    /// The reply's bytes.
    pub bytes: usize,
}

/// The most reply bytes in flight at one time (pure): the largest sum of the bytes of spans
/// that overlap. A reply parsed at the very instant another request is sent is not counted
/// with it (the parse ends before the send).
pub fn peak<T: Ord + Copy>(spans: &[Span<T>]) -> usize {
    // (time, 0 = a parse ends, 1 = a request starts, bytes): ends sort before starts.
    let mut events: Vec<(T, u8, usize)> = spans
        .iter()
        .flat_map(|s| [(s.sent, 1, s.bytes), (s.parsed, 0, s.bytes)])
        .collect();
    events.sort_unstable_by_key(|e| (e.0, e.1));
    let (mut now, mut most) = (0usize, 0usize);
    for (_, kind, bytes) in events {
        if kind == 1 {
            now += bytes;
            most = most.max(now);
        } else {
            now = now.saturating_sub(bytes);
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(sent: u32, parsed: u32, bytes: usize) -> Span<u32> {
        Span {
            sent,
            parsed,
            bytes,
        }
    }

    #[test]
    fn a_ping_has_every_reply_in_flight_at_once() {
        // Sent together at 0, parsed one after another.
        let spans: Vec<_> = (1..=24).map(|i| span(0, i, 100)).collect();
        assert_eq!(peak(&spans), 2400);
    }

    #[test]
    fn a_few_at_a_time_bounds_the_peak() {
        // 24 servers, 4 at a time: each new request starts when one is parsed.
        let spans: Vec<_> = (0..24u32)
            .map(|i| span(i / 4 * 10, i / 4 * 10 + 10, 100))
            .collect();
        assert_eq!(peak(&spans), 400);
        assert_eq!(peak::<u32>(&[]), 0);
    }

    #[test]
    fn overlapping_sizes_add_up_at_their_peak_only() {
        let spans = [
            span(0, 5, 10),
            span(2, 8, 30),
            span(6, 9, 5),
            span(9, 12, 1),
        ];
        assert_eq!(peak(&spans), 40);
    }
}
