//! Parsing and formatting at the API edge: decimal amount strings ⇄ integer minor units, and
//! timestamps as RFC 3339 UTC (the formatting is the engine's [`saldo_engine::format`], shared
//! with the operator tools).
//!
//! Amounts are strings such as `"1234.50"`: ASCII digits with at most one decimal point, no
//! sign, no exponent, no separators. The value must be representable exactly in the currency's
//! minor unit (`"10.5"` and `"10.50"` are both 1050 cents; `"10.505"` is refused), strictly
//! positive for transfers and entries, and at most `i64::MAX` minor units. Parsing goes through
//! `rust_decimal` as DESIGN.md decision 7 asks; formatting is plain integer arithmetic.

use crate::limits::AMOUNT_CHARS_MAX;
use rust_decimal::{prelude::ToPrimitive, Decimal};

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

pub use saldo_engine::format::{date, format_minor, parse_rfc3339, rfc3339, AmountText};

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
}
