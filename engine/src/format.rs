//! Text forms of the engine's values, as the API and the operator tools print them: amounts
//! in minor units as decimal strings, timestamps as RFC 3339 UTC, days as `YYYY-MM-DD`.
//! Formatting is plain integer arithmetic (parsing amounts is the gateway's, with
//! `rust_decimal`).

use crate::types::{Day, Timestamp};

/// Returns the decimal string of `minor` units in a currency of `scale` (`-150, 2` → `"-1.50"`).
pub fn format_minor(minor: i64, scale: u32) -> String {
    AmountText::new(minor, scale).as_str().to_owned()
}

/// Longest formatted amount: a sign, the 39 digits of `i128::MIN` and a decimal point (day
/// totals are `i128`: see `engine::account::DayTotals`).
const AMOUNT_TEXT_BYTES_MAX: usize = 44;

/// A formatted amount kept inline (no heap allocation): answers carry many of them, and the
/// daily report is read a lot. Serializes as a JSON string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AmountText {
    /// Bytes used in `buf`.
    len: u8,
    /// ASCII: `-?[0-9]+(\.[0-9]+)?`.
    buf: [u8; AMOUNT_TEXT_BYTES_MAX],
}

impl AmountText {
    /// Returns the decimal form of `minor` units in a currency of `scale`.
    pub fn new(minor: impl Into<i128>, scale: u32) -> AmountText {
        let minor: i128 = minor.into();
        assert!(scale <= 4, "ISO 4217 scales are 0 to 4");
        let scale = scale as usize;
        let mut digits = [b'0'; 40];
        let mut start = digits.len();
        let mut n = minor.unsigned_abs();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // At least one digit before the point ("0.05"); `digits` is pre-filled with zeros.
        start = start.min(digits.len() - scale - 1);
        let int_digits = digits.len() - start - scale;
        let mut text = AmountText {
            len: 0,
            buf: [0; AMOUNT_TEXT_BYTES_MAX],
        };
        if minor < 0 {
            text.push(b"-");
        }
        text.push(&digits[start..start + int_digits]);
        if scale > 0 {
            text.push(b".");
            text.push(&digits[start + int_digits..]);
        }
        text
    }

    fn push(&mut self, bytes: &[u8]) {
        let len = self.len as usize;
        self.buf[len..len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }

    /// Returns the text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("only ASCII is pushed")
    }
}

impl std::ops::Deref for AmountText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for AmountText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for AmountText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<&str> for AmountText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for AmountText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for AmountText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        if s.len() > AMOUNT_TEXT_BYTES_MAX || !s.is_ascii() {
            return Err(serde::de::Error::custom("not an amount"));
        }
        let mut text = AmountText {
            len: 0,
            buf: [0; AMOUNT_TEXT_BYTES_MAX],
        };
        text.push(s.as_bytes());
        Ok(text)
    }
}

fn push_digits(out: &mut String, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = value;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    start = start.min(digits.len() - width.min(digits.len()));
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

/// Returns `ts` as RFC 3339 in UTC with microseconds (`2026-01-31T12:00:00.000001Z`).
pub fn rfc3339(ts: Timestamp) -> String {
    let mut out = date(ts.day());
    out.reserve(17);
    let micros_of_day = ts.0 % Timestamp::DAY_MICROS;
    let secs = micros_of_day / 1_000_000;
    out.push('T');
    push_digits(&mut out, secs / 3_600, 2);
    out.push(':');
    push_digits(&mut out, secs / 60 % 60, 2);
    out.push(':');
    push_digits(&mut out, secs % 60, 2);
    out.push('.');
    push_digits(&mut out, micros_of_day % 1_000_000, 6);
    out.push('Z');
    out
}

/// Parses an RFC 3339 instant (`2026-11-23T10:00:00Z`, fractional seconds up to µs, `Z` or a
/// `±HH:MM` offset); `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let day = Day::from_ymd(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() || frac.len() > 6 {
            return None;
        }
        micros = frac.parse::<u64>().ok()? * 10u64.pow(6 - frac.len() as u32);
    }
    let offset_s: i64 = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = i64::from(day.0) * 86_400 + i64::from(h * 3600 + mi * 60 + sec) - offset_s;
    let us = u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(micros)?;
    Some(Timestamp(us))
}

/// Returns the `YYYY-MM-DD` form of a day.
pub fn date(day: Day) -> String {
    let (y, m, d) = day.to_ymd();
    if !(0..=9999).contains(&y) {
        return day.to_string();
    }
    let mut out = String::with_capacity(27);
    push_digits(&mut out, y as u64, 4);
    out.push('-');
    push_digits(&mut out, u64::from(m), 2);
    out.push('-');
    push_digits(&mut out, u64::from(d), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_what_it_prints_and_offsets() {
        for us in [0u64, 1_700_000_000_123_456, 1_800_000_000_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(Timestamp(us))), Some(Timestamp(us)));
        }
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00+01:00"),
            parse_rfc3339("2026-11-23T09:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T10:00:00.5Z").map(|t| t.0 % 1_000_000),
            Some(500_000)
        );
        for bad in [
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "x",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.1234567Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn minor_units_format_with_the_currency_scale() {
        assert_eq!(format_minor(1250, 2), "12.50");
        assert_eq!(format_minor(5, 2), "0.05");
        assert_eq!(format_minor(-150, 2), "-1.50");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_minor(7, 0), "7");
        assert_eq!(format_minor(i64::MIN, 2), "-92233720368547758.08");
        assert_eq!(format_minor(1, 4), "0.0001");
    }

    #[test]
    fn dates_format_like_the_engine() {
        for day in [0, 1, 59, 365, 10_957, 20_454, 2_932_896] {
            assert_eq!(date(Day(day)), Day(day).to_string());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000000Z");
        // 2026-01-31T12:34:56.789012Z
        let day = Day::parse("2026-01-31").expect("valid date").0 as u64;
        let ts = Timestamp(day * Timestamp::DAY_MICROS + 45_296_789_012);
        assert_eq!(rfc3339(ts), "2026-01-31T12:34:56.789012Z");
    }
}
