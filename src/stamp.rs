//! A point in time as Unix seconds and nanoseconds: what a reply's timestamps are read into,
//! compared and subtracted without a calendar. A sweep reads two per connection; a
//! `DateTime` is made only of the few that are shown.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// An instant in UTC, ordered as time is.
///
/// Twelve bytes (aligned to four): two in a connection take 24 bytes, as `DateTime`s would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C, packed(4))]
pub struct Stamp {
    secs: i64,
    /// The nanoseconds plus one (so `Option<Stamp>` takes no more room than a stamp): below
    /// 1e9, or up to 2e9 in a leap second, as chrono has it (the order of the fields is the
    /// order of time either way).
    nanos_1: NonZeroU32,
}

impl Stamp {
    /// The instant `secs` + `nanos` after 1970-01-01T00:00:00Z (`nanos` ≥ 1e9: a leap second).
    pub fn new(secs: i64, nanos: u32) -> Self {
        Self {
            secs,
            nanos_1: NonZeroU32::MIN.saturating_add(nanos),
        }
    }

    /// The same instant as a stamp.
    pub fn of(t: DateTime<Utc>) -> Self {
        Self::new(t.timestamp(), t.timestamp_subsec_nanos())
    }

    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub fn secs(self) -> i64 {
        self.secs
    }

    /// Nanoseconds past [`Stamp::secs`].
    pub fn nanos(self) -> u32 {
        self.nanos_1.get() - 1
    }

    /// The same instant as a `DateTime` (`None` past chrono's range, ±262,000 years).
    pub fn time(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.secs, self.nanos())
    }

    /// How long after `earlier` this is; zero when it is not after.
    pub fn since(self, earlier: Stamp) -> Duration {
        (self - earlier).to_std().unwrap_or_default()
    }
}

impl Default for Stamp {
    /// 1970-01-01T00:00:00Z.
    fn default() -> Self {
        Self::new(0, 0)
    }
}

impl std::ops::Add<TimeDelta> for Stamp {
    type Output = Stamp;

    /// The instant `rhs` after this one.
    fn add(self, rhs: TimeDelta) -> Stamp {
        let nanos = i64::from(self.nanos()) + i64::from(rhs.subsec_nanos());
        Stamp::new(
            self.secs + rhs.num_seconds() + nanos.div_euclid(1_000_000_000),
            nanos.rem_euclid(1_000_000_000) as u32,
        )
    }
}

impl std::ops::Sub for Stamp {
    type Output = TimeDelta;

    /// The signed time from `rhs` to `self`.
    fn sub(self, rhs: Stamp) -> TimeDelta {
        let nanos = i64::from(self.nanos()) - i64::from(rhs.nanos());
        TimeDelta::seconds(self.secs - rhs.secs) + TimeDelta::nanoseconds(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_orders_subtracts_and_converts_as_the_time_it_holds() {
        let times = [
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999999Z",
            "1970-01-01T00:00:00Z",
            "2026-01-02T03:04:05.25Z",
            "2026-01-02T03:04:05.250000001Z",
        ]
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        for a in times {
            assert_eq!(Stamp::of(a).time(), Some(a));
            for b in times {
                let (sa, sb) = (Stamp::of(a), Stamp::of(b));
                assert_eq!(sa.cmp(&sb), a.cmp(&b), "{a} {b}");
                assert_eq!(sa - sb, a - b, "{a} - {b}");
                assert_eq!(sa.since(sb), (a - b).to_std().unwrap_or_default());
                assert_eq!(sb + (a - b), sa, "{b} + ({a} - {b})");
            }
        }
        // A leap second comes back as one, between the seconds around it.
        let leap = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap();
        assert_eq!(Stamp::of(leap).time(), Some(leap));
        assert!(Stamp::new(1_483_228_799, 999_999_999) < Stamp::of(leap));
        assert!(Stamp::of(leap) < Stamp::new(1_483_228_800, 0));
        // No room taken by `None`, none by padding.
        assert_eq!(size_of::<Option<Stamp>>(), 12);
    }
}
