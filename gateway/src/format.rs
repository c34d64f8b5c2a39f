//! Parsing and formatting at the API edge: decimal amount strings ⇄ integer minor units, and
//! timestamps as RFC 3339 UTC.
//!
//! Amounts are strings such as `"1234.50"`: ASCII digits with at most one decimal point, no
//! sign, no exponent, no separators. The value must be representable exactly in the currency's
//! minor unit (`"10.5"` and `"10.50"` are both 1050 cents; `"10.505"` is refused), strictly
//! positive for transfers and entries, and at most `i64::MAX` minor units. Parsing goes through
//! `rust_decimal` as DESIGN.md decision 7 asks; formatting is plain integer arithmetic.

use std::fmt::Write;

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
    assert!(scale <= 4, "ISO 4217 scales are 0 to 4");
    let mut out = String::with_capacity(24);
    if minor < 0 {
        out.push('-');
    }
    let abs = minor.unsigned_abs();
    if scale == 0 {
        let _ = write!(out, "{abs}");
        return out;
    }
    let unit = 10_u64.pow(scale);
    let _ = write!(
        out,
        "{}.{:0width$}",
        abs / unit,
        abs % unit,
        width = scale as usize
    );
    out
}

/// Returns `ts` as RFC 3339 in UTC with microseconds (`2026-01-31T12:00:00.000001Z`).
pub fn rfc3339(ts: Timestamp) -> String {
    let day = ts.day();
    let (y, m, d) = day.to_ymd();
    let micros_of_day = ts.0 % Timestamp::DAY_MICROS;
    let secs = micros_of_day / 1_000_000;
    let micros = micros_of_day % 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Returns the `YYYY-MM-DD` form of a day.
pub fn date(day: Day) -> String {
    day.to_string()
}

#[cfg(test)]
mod tests {
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
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000000Z");
        // 2026-01-31T12:34:56.789012Z
        let day = Day::parse("2026-01-31").expect("valid date").0 as u64;
        let ts = Timestamp(day * Timestamp::DAY_MICROS + 45_296_789_012);
        assert_eq!(rfc3339(ts), "2026-01-31T12:34:56.789012Z");
    }
}
