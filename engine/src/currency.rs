//! ISO 4217 currencies and the number of decimals of their minor unit.
//!
//! The table lists the active codes (plus the precious metals and testing codes are left out on
//! purpose: they have no minor unit a ledger could count). Most currencies have two decimals;
//! the exceptions are listed in `SCALE_0`, `SCALE_3` and `SCALE_4`.

/// Currencies with no minor unit.
const SCALE_0: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
/// Currencies with three decimals.
const SCALE_3: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
/// Currencies with four decimals.
const SCALE_4: &[&str] = &["CLF", "UYW"];
/// Currencies with two decimals.
const SCALE_2: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT",
    "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN", "UYU",
    "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
];

/// Returns the minor-unit scale of an ISO 4217 code, or `None` when the code is not listed.
/// One load from a table of every three-letter code, built on first use: the API edge asks for
/// a scale per amount it parses or formats (twice per transfer of a batch of 8,189).
pub(crate) fn scale_of(code: &[u8; 3]) -> Option<u32> {
    static SCALES: std::sync::LazyLock<Box<[u8]>> = std::sync::LazyLock::new(|| {
        let mut scales = vec![UNLISTED; 26 * 26 * 26].into_boxed_slice();
        for (table, scale) in [(SCALE_0, 0), (SCALE_2, 2), (SCALE_3, 3), (SCALE_4, 4)] {
            for code in table {
                let code: &[u8; 3] = code.as_bytes().try_into().expect("three letters");
                scales[index_of(code).expect("upper-case letters")] = scale;
            }
        }
        scales
    });
    let scale = SCALES[index_of(code)?];
    (scale != UNLISTED).then_some(u32::from(scale))
}

/// A code that is not in the tables.
const UNLISTED: u8 = u8::MAX;

/// Returns the place of three upper-case ASCII letters in the table of every such code.
fn index_of(code: &[u8; 3]) -> Option<usize> {
    code.iter().try_fold(0usize, |index, &b| {
        b.is_ascii_uppercase()
            .then(|| index * 26 + usize::from(b - b'A'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_so_binary_search_works() {
        for table in [SCALE_0, SCALE_2, SCALE_3, SCALE_4] {
            assert!(table.windows(2).all(|w| w[0] < w[1]), "{table:?}");
        }
    }

    #[test]
    fn every_listed_code_has_its_tables_scale_and_no_other_code_has_one() {
        let mut listed = 0;
        for (table, scale) in [(SCALE_0, 0), (SCALE_2, 2), (SCALE_3, 3), (SCALE_4, 4)] {
            for code in table {
                let code: &[u8; 3] = code.as_bytes().try_into().unwrap();
                assert_eq!(scale_of(code), Some(scale), "{code:?}");
                listed += 1;
            }
        }
        let mut found = 0;
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    found += usize::from(scale_of(&[a, b, c]).is_some());
                }
            }
        }
        assert_eq!(found, listed);
    }

    #[test]
    fn known_scales() {
        assert_eq!(scale_of(b"BRL"), Some(2));
        assert_eq!(scale_of(b"JPY"), Some(0));
        assert_eq!(scale_of(b"KWD"), Some(3));
        assert_eq!(scale_of(b"CLF"), Some(4));
        assert_eq!(scale_of(b"brl"), None);
        assert_eq!(scale_of(b"XXX"), None);
        assert_eq!(scale_of(b"ZWG"), Some(2));
        assert_eq!(scale_of(b"AED"), Some(2));
        assert_eq!(scale_of(b"US1"), None);
        assert_eq!(scale_of(&[0xff, b'S', b'D']), None);
    }
}
