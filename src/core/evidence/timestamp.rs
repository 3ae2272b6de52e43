//! Log-line timestamps: RFC 3164 syslog (space-padded day, no year),
//! Postfix's `maillog_file` (zero-padded day, no year), RFC 3339 and Exim's
//! `YYYY-MM-DD HH:MM:SS[.mmm] [+ZZZZ]`.
//!
//! Owns: parsing a timestamp at the start of a line and inferring a missing
//! year from `now`. Does not own: reading lines.

use super::super::model::Timestamp;
use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone,
};

/// Parses line-start timestamps for one log source.
#[derive(Clone, Debug)]
pub struct TimestampParser {
    /// The zone of timestamps that carry none (syslog, Exim without
    /// `log_timezone`).
    pub offset: FixedOffset,
    /// The pass's `now`, for year inference.
    pub now: Timestamp,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn hms(b: &[u8]) -> Option<NaiveTime> {
    // HH:MM:SS
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    NaiveTime::from_hms_opt(digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?)
}

/// Fractional seconds `.123456` at the start of `b`: (nanoseconds, bytes used).
fn fraction(b: &[u8]) -> (u32, usize) {
    if b.first() != Some(&b'.') {
        return (0, 0);
    }
    let n = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return (0, 0);
    }
    let mut nanos = 0u32;
    for i in 0..9 {
        let d = if i < n { u32::from(b[1 + i] - b'0') } else { 0 };
        nanos = nanos * 10 + d;
    }
    (nanos, 1 + n)
}

/// A zone like `Z`, `+00:00`, `+0000` at the start of `b`.
fn zone(b: &[u8]) -> Option<(FixedOffset, usize)> {
    match b.first()? {
        b'Z' | b'z' => Some((FixedOffset::east_opt(0)?, 1)),
        sign @ (b'+' | b'-') => {
            let (h, m, used) = if b.len() >= 6 && b[3] == b':' {
                (digits(&b[1..3])?, digits(&b[4..6])?, 6)
            } else if b.len() >= 5 {
                (digits(&b[1..3])?, digits(&b[3..5])?, 5)
            } else {
                return None;
            };
            let secs = i32::try_from(h * 3600 + m * 60).ok()?;
            let off = if *sign == b'-' {
                FixedOffset::west_opt(secs)?
            } else {
                FixedOffset::east_opt(secs)?
            };
            Some((off, used))
        }
        _ => None,
    }
}

impl TimestampParser {
    pub fn utc(now: Timestamp) -> Self {
        TimestampParser {
            offset: FixedOffset::east_opt(0).expect("zero offset"),
            now,
        }
    }

    /// Parse the timestamp at the start of `line`; returns it and the number
    /// of bytes it took (not counting the following space).
    pub fn parse(&self, line: &[u8]) -> Option<(Timestamp, usize)> {
        match line.first()? {
            b'0'..=b'9' => self.parse_numeric(line),
            b'A'..=b'Z' => self.parse_syslog(line),
            _ => None,
        }
    }

    fn local(&self, naive: NaiveDateTime) -> Option<Timestamp> {
        self.offset
            .from_local_datetime(&naive)
            .single()
            .map(|d| d.with_timezone(&chrono::Utc))
    }

    /// `2026-11-28T22:35:45.123+01:00` or `2026-11-28 22:35:45 [+0100]`.
    fn parse_numeric(&self, b: &[u8]) -> Option<(Timestamp, usize)> {
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
            return None;
        }
        let date = NaiveDate::from_ymd_opt(
            i32::try_from(digits(&b[0..4])?).ok()?,
            digits(&b[5..7])?,
            digits(&b[8..10])?,
        )?;
        let time = hms(&b[11..19])?;
        let (nanos, flen) = fraction(&b[19..]);
        let mut used = 19 + flen;
        let naive = NaiveDateTime::new(date, time) + TimeDelta::nanoseconds(i64::from(nanos));
        // RFC 3339 zones follow directly; Exim's `log_timezone` after a space.
        let zone_at = if b.get(used) == Some(&b' ') && b[10] == b' ' {
            used + 1
        } else {
            used
        };
        if let Some((off, zlen)) = b.get(zone_at..).and_then(zone) {
            let end = zone_at + zlen;
            if b.get(end).is_none_or(|c| *c == b' ') {
                used = end;
                let dt = off.from_local_datetime(&naive).single()?;
                return Some((dt.with_timezone(&chrono::Utc), used));
            }
        }
        Some((self.local(naive)?, used))
    }

    /// `Nov 28 22:35:45` / `Nov  8 22:35:45` / `Nov 08 22:35:45`: no year.
    fn parse_syslog(&self, b: &[u8]) -> Option<(Timestamp, usize)> {
        if b.len() < 15 || b[3] != b' ' {
            return None;
        }
        let month = MONTHS.iter().position(|m| &b[0..3] == *m)? as u32 + 1;
        let day = match (b[4], b[5]) {
            (b' ', d) => digits(&[d])?,
            (d1, d2) => digits(&[d1, d2])?,
        };
        if b[6] != b' ' {
            return None;
        }
        let time = hms(&b[7..15])?;
        let (nanos, flen) = fraction(&b[15..]);
        let local_now = self.now.with_timezone(&self.offset);
        // The latest line of a log is not in the future: a date that would
        // be more than a day ahead belongs to last year (New Year).
        for year in [local_now.year(), local_now.year() - 1] {
            let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
                continue; // Feb 29 in a non-leap year
            };
            let naive = NaiveDateTime::new(date, time) + TimeDelta::nanoseconds(i64::from(nanos));
            let ts = self.local(naive)?;
            if ts <= self.now + TimeDelta::days(1) {
                return Some((ts, 15 + flen));
            }
        }
        None
    }
}

/// Parse a full RFC 3339 string or an epoch number (seconds, fractional
/// allowed); used for JSON fields.
pub fn parse_instant(s: &str) -> Option<Timestamp> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s.trim()) {
        return Some(dt.with_timezone(&chrono::Utc));
    }
    let secs: f64 = s.trim().parse().ok()?;
    epoch_seconds(secs)
}

pub fn epoch_seconds(secs: f64) -> Option<Timestamp> {
    if !secs.is_finite() {
        return None;
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round() as u32;
    chrono::Utc
        .timestamp_opt(whole as i64, nanos.min(999_999_999))
        .single()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn parses_every_supported_format() {
        let p = TimestampParser::utc(at("2026-11-29T00:00:00Z"));
        let table: &[(&str, &str, usize)] = &[
            ("Nov 28 22:35:45 mail postfix", "2026-11-28T22:35:45Z", 15),
            ("Nov  8 02:05:09 mail", "2026-11-08T02:05:09Z", 15),
            ("Nov 08 02:05:09 mail", "2026-11-08T02:05:09Z", 15),
            (
                "Nov 28 22:35:45.123456 mail",
                "2026-11-28T22:35:45.123456Z",
                22,
            ),
            (
                "2026-11-28T22:35:45.5+01:00 mail",
                "2026-11-28T21:35:45.5Z",
                27,
            ),
            ("2026-11-28T22:35:45Z mail", "2026-11-28T22:35:45Z", 20),
            ("2026-11-28 23:07:20 1xXRVo", "2026-11-28T23:07:20Z", 19),
            ("2026-11-28 23:07:20.250 1xX", "2026-11-28T23:07:20.25Z", 23),
            ("2026-11-28 23:07:20 +0100 1xX", "2026-11-28T22:07:20Z", 25),
            ("2026-11-28 23:07:20 -05:00 1xX", "2026-11-29T04:07:20Z", 26),
        ];
        for (line, want, used) in table {
            let got = p.parse(line.as_bytes());
            assert_eq!(got, Some((at(want), *used)), "{line}");
        }
    }

    #[test]
    fn rejects_lines_without_a_timestamp() {
        let p = TimestampParser::utc(at("2026-11-29T00:00:00Z"));
        for line in [
            "",
            "Foo 28 22:35:45 x",
            "Nov 28 25:35:45 x",
            "Nov 32 22:35:45 x",
            "2026-13-28 23:07:20 x",
            "2026-11-28X23:07:20",
            "\u{0}\u{1}binary",
            "Nov 28 22:35",
        ] {
            assert_eq!(p.parse(line.as_bytes()), None, "{line:?}");
        }
    }

    #[test]
    fn year_inference_survives_new_year() {
        // Read on Jan 1st: December lines are last year's, January this year's.
        let p = TimestampParser::utc(at("2027-01-01T00:10:00Z"));
        assert_eq!(
            p.parse(b"Dec 31 23:59:58 mail").unwrap().0,
            at("2026-12-31T23:59:58Z")
        );
        assert_eq!(
            p.parse(b"Jan  1 00:00:03 mail").unwrap().0,
            at("2027-01-01T00:00:03Z")
        );
        // A line slightly ahead of our clock (skew) stays in this year.
        assert_eq!(
            p.parse(b"Jan  1 02:00:00 mail").unwrap().0,
            at("2027-01-01T02:00:00Z")
        );
    }

    #[test]
    fn syslog_local_time_uses_the_configured_offset() {
        let p = TimestampParser {
            offset: FixedOffset::east_opt(3600).unwrap(),
            now: at("2026-11-29T00:00:00Z"),
        };
        assert_eq!(
            p.parse(b"Nov 28 22:35:45 x").unwrap().0,
            at("2026-11-28T21:35:45Z")
        );
    }

    #[test]
    fn parses_json_instants() {
        assert_eq!(
            parse_instant("2026-11-28T22:35:45Z"),
            Some(at("2026-11-28T22:35:45Z"))
        );
        assert_eq!(
            parse_instant("1795905345.5"),
            Some(at("2026-11-28T22:35:45.5Z"))
        );
        assert_eq!(parse_instant("yesterday"), None);
    }
}
