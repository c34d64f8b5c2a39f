//! Parsing and formatting at the API edge: decimal amount strings ⇄ integer minor units, and
//! timestamps as RFC 3339 UTC.
//!
//! Amounts are strings such as `"1234.50"`: ASCII digits with at most one decimal point, no
//! sign, no exponent, no separators. The value must be representable exactly in the currency's
//! minor unit (`"10.5"` and `"10.50"` are both 1050 cents; `"10.505"` is refused), strictly
//! positive for transfers and entries, and at most `i64::MAX` minor units. Parsing goes through
//! `rust_decimal` as DESIGN.md decision 7 asks; formatting is plain integer arithmetic.

use rust_decimal::{prelude::ToPrimitive, Decimal};
use saldo_engine::types::{Day, Timestamp};

use crate::limits::AMOUNT_CHARS_MAX;

/// Why an amount string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// Not of the form `digits[.digits]` (or over [`AMOUNT_CHARS_MAX`] characters).
    Malformed,
    /// Starts with a minus sign.
    Negative,
    /// Zero where a positive amount is required.
    Zero,
    /// More decimals than the currency's minor unit has.
    TooPrecise,
    /// More than `i64::MAX` minor units.
    TooLarge,
}

impl AmountError {
    /// Returns the error in words, for the `detail` of a 422 answer.
    pub fn describe(self, scale: u32) -> String {
        match self {
            AmountError::Malformed => {
                "must be a decimal string of digits with an optional decimal point, like \"12.50\""
                    .to_owned()
            }
            AmountError::Negative => "must not be negative".to_owned(),
            AmountError::Zero => "must be greater than zero".to_owned(),
            AmountError::TooPrecise => {
                format!("has more decimals than the currency's {scale}")
            }
            AmountError::TooLarge => "is too large".to_owned(),
        }
    }
}

/// Returns the minor units of a strictly positive amount string in a currency of `scale`.
pub fn parse_amount_minor(s: &str, scale: u32) -> Result<i64, AmountError> {
    match parse_minor(s, scale)? {
        0 => Err(AmountError::Zero),
        minor => Ok(minor),
    }
}

/// Returns the minor units of a non-negative amount string in a currency of `scale` (zero is
/// allowed: an overdraft limit of `"0"` means no overdraft).
pub fn parse_minor(s: &str, scale: u32) -> Result<i64, AmountError> {
    assert!(scale <= 4, "ISO 4217 scales are 0 to 4");
    if s.starts_with('-') {
        return Err(AmountError::Negative);
    }
    if s.is_empty() || s.len() > AMOUNT_CHARS_MAX {
        return Err(AmountError::Malformed);
    }
    let (int, frac_opt) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac_opt.is_some_and(|f| !digits(f)) {
        return Err(AmountError::Malformed);
    }
    // The grammar is checked, so the only parse failure left is a value over 96 bits.
    let value = Decimal::from_str_exact(s).map_err(|_| AmountError::TooLarge)?;
    let value = value.normalize();
    if value.scale() > scale {
        return Err(AmountError::TooPrecise);
    }
    let minor = value
        .checked_mul(Decimal::from(10_i64.pow(scale)))
        .ok_or(AmountError::TooLarge)?;
    // `minor` is an integer now (its scale was at most `scale`).
    minor.trunc().to_i64().ok_or(AmountError::TooLarge)
}

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

    use super::*;

    #[test]
    fn amounts_parse_to_minor_units_of_the_currency() {
        assert_eq!(parse_amount_minor("12.50", 2), Ok(1250));
        assert_eq!(parse_amount_minor("12.5", 2), Ok(1250));
        assert_eq!(parse_amount_minor("12.500", 2), Ok(1250));
        assert_eq!(parse_amount_minor("12", 2), Ok(1200));
        assert_eq!(parse_amount_minor("007", 0), Ok(7));
        assert_eq!(parse_amount_minor("0.001", 3), Ok(1));
        assert_eq!(parse_amount_minor("92233720368547758.07", 2), Ok(i64::MAX));
    }

    #[test]
    fn bad_amounts_are_refused_with_their_reason() {
        assert_eq!(parse_amount_minor("0", 2), Err(AmountError::Zero));
        assert_eq!(parse_amount_minor("0.00", 2), Err(AmountError::Zero));
        assert_eq!(parse_minor("0", 2), Ok(0));
        assert_eq!(parse_amount_minor("-1", 2), Err(AmountError::Negative));
        assert_eq!(parse_amount_minor("1.005", 2), Err(AmountError::TooPrecise));
        assert_eq!(parse_amount_minor("1.5", 0), Err(AmountError::TooPrecise));
        assert_eq!(
            parse_amount_minor("92233720368547758.08", 2),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_amount_minor("99999999999999999999999999999", 0),
            Err(AmountError::TooLarge)
        );
        for bad in [
            "", ".5", "5.", "1e5", "+1", "1_000", "1,00", " 1", "1.2.3", "0x10", "１",
        ] {
            assert_eq!(
                parse_amount_minor(bad, 2),
                Err(AmountError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_amount_minor(&"1".repeat(33), 0),
            Err(AmountError::Malformed)
        );
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
    fn formatting_then_parsing_gives_back_the_same_minor_units() {
        for minor in [1_i64, 9, 10, 99, 100, 12_345, i64::MAX] {
            for scale in 0..=4 {
                assert_eq!(
                    parse_amount_minor(&format_minor(minor, scale), scale),
                    Ok(minor)
                );
            }
        }
    }

    #[test]
    fn amount_text_matches_rust_decimal_formatting() {
        for minor in [
            0_i64,
            1,
            -1,
            9,
            10,
            99,
            100,
            101,
            -12_345,
            i64::MAX,
            i64::MIN,
        ] {
            for scale in 0..=4 {
                let expected = Decimal::new(minor, scale).to_string();
                assert_eq!(
                    AmountText::new(minor, scale).as_str(),
                    expected,
                    "{minor} {scale}"
                );
            }
        }
        let json = serde_json::to_string(&AmountText::new(-150, 2)).expect("serializes");
        assert_eq!(json, "\"-1.50\"");
        let back: AmountText = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, "-1.50");
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
