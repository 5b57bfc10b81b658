//! Kubernetes resource quantities (`100m`, `1.5Gi`, `129e6`) as exact unsigned integers.
//!
//! The grammar is apimachinery's `resource.ParseQuantity`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <sign>            ::= "+" | "-"
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
//! ```
//!
//! Values are computed exactly on the decimal digits (no floating point), then rounded up like
//! kube's `Value()` / `MilliValue()`: a request for a sliver of a resource still gets one unit.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity")]
    Malformed(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} does not fit in 64 bits")]
    Overflow(String),
}

/// The quantity in thousandths, rounded up (CPU in millicores).
pub fn milli_value(quantity: &Quantity) -> Result<u64, QuantityError> {
    scaled(&quantity.0, 3)
}

/// The quantity as an integer, rounded up (bytes, counts).
pub fn value(quantity: &Quantity) -> Result<u64, QuantityError> {
    scaled(&quantity.0, 0)
}

/// A parsed quantity: `±integer.fraction × 10^exp10 × 2^exp2`.
struct Parsed<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
    exp10: i64,
    exp2: u32,
}

fn parse(text: &str) -> Option<Parsed<'_>> {
    // Kubernetes trims surrounding whitespace when it reads a quantity from JSON.
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (integer, rest) = split_digits(rest);
    let (fraction, suffix) = match rest.strip_prefix('.') {
        Some(after_point) => split_digits(after_point),
        None => ("", rest),
    };
    if integer.is_empty() && fraction.is_empty() {
        return None;
    }
    let (exp10, exp2) = match suffix {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        // i64's parser takes exactly an optionally signed run of ASCII digits, as Go's ParseInt.
        _ => (suffix.strip_prefix(['e', 'E'])?.parse().ok()?, 0),
    };
    Some(Parsed {
        negative,
        integer,
        fraction,
        exp10,
        exp2,
    })
}

fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.bytes().take_while(u8::is_ascii_digit).count())
}

/// `ceil(quantity × 10^scale)`.
fn scaled(text: &str, scale: i64) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_string());
    let parsed = parse(text).ok_or_else(malformed)?;

    // Significant decimal digits, most significant first.
    let mut digits: Vec<u8> = parsed
        .integer
        .bytes()
        .chain(parsed.fraction.bytes())
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    if digits.is_empty() {
        // Zero with any sign or exponent.
        return Ok(0);
    }
    if parsed.negative {
        return Err(QuantityError::Negative(text.to_string()));
    }
    multiply(&mut digits, 1u64 << parsed.exp2);

    // The value is `digits × 10^exponent`; i128 cannot overflow from an i64 and a string length.
    let exponent = i128::from(parsed.exp10) - parsed.fraction.len() as i128 + i128::from(scale);
    let overflow = || QuantityError::Overflow(text.to_string());
    if exponent >= 0 {
        // u64::MAX has 20 digits.
        if digits.len() as i128 + exponent > 20 {
            return Err(overflow());
        }
        let mut result = to_u64(&digits).ok_or_else(overflow)?;
        for _ in 0..exponent {
            result = result.checked_mul(10).ok_or_else(overflow)?;
        }
        Ok(result)
    } else {
        let dropped = usize::try_from(-exponent).unwrap_or(usize::MAX);
        if dropped >= digits.len() {
            // Below one unit but not zero: rounds up to one.
            return Ok(1);
        }
        let (kept, tail) = digits.split_at(digits.len() - dropped);
        let whole = to_u64(kept).ok_or_else(overflow)?;
        let round_up = u64::from(tail.iter().any(|&d| d != 0));
        whole.checked_add(round_up).ok_or_else(overflow)
    }
}

/// `digits *= factor` in place on a big-endian decimal digit string.
fn multiply(digits: &mut Vec<u8>, factor: u64) {
    let mut carry: u128 = 0;
    for d in digits.iter_mut().rev() {
        let product = u128::from(*d) * u128::from(factor) + carry;
        *d = (product % 10) as u8;
        carry = product / 10;
    }
    while carry > 0 {
        digits.insert(0, (carry % 10) as u8);
        carry /= 10;
    }
}

fn to_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn milli_values_round_up() {
        for (text, expected) in [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            (".5", 500),
            ("1.", 1000),
            ("+2", 2000),
            ("1u", 1),
            ("1n", 1),
            ("999999n", 1),
            ("1000000n", 1),
            ("1000001n", 2),
            ("0.0001", 1),
            ("1.0001", 1001),
            ("250m", 250),
            ("1e-3", 1),
            ("1E-3", 1),
            ("1e3", 1_000_000),
            ("2k", 2_000_000),
            ("0", 0),
            ("-0", 0),
            ("0.000", 0),
            ("0e99", 0),
            ("1Ki", 1_024_000),
            ("1e-100", 1),
            (
                "0.000000000000000000000000000000000000000000000000000000000000001",
                1,
            ),
        ] {
            assert_eq!(milli_value(&q(text)), Ok(expected), "{text}");
        }
    }

    #[test]
    fn values_round_up() {
        for (text, expected) in [
            ("1Gi", 1_073_741_824),
            ("1.5Gi", 1_610_612_736),
            ("1.Gi", 1_073_741_824),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129e+6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1k", 1000),
            ("1.G", 1_000_000_000),
            ("5Ei", 5 * (1 << 60)),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1m", 1),
            ("1.5", 2),
            ("0.1Ki", 103),
            ("0.001Ki", 2),
            ("007", 7),
            (" 12Mi ", 12_582_912),
            ("18446744073709551615", u64::MAX),
            ("15.999999999999999999Ei", 18_446_744_073_709_551_615),
            ("1.00000000000000000000000000000000000000001", 2),
            ("100000000000000000000000000000000000000000e-40", 10),
        ] {
            assert_eq!(value(&q(text)), Ok(expected), "{text}");
        }
    }

    #[test]
    fn garbage_is_rejected_naming_the_text() {
        for text in [
            "",
            " ",
            "-",
            "+",
            ".",
            "Ki",
            "12x",
            "1K",
            "1ki",
            "1mi",
            "1KiB",
            "1.1.M",
            "1+1.0M",
            "0.1mi",
            "0.1am",
            "aoeu",
            ".5i",
            "1i",
            "-3.01i",
            "-3.01e-",
            "1e",
            "1e3.5",
            "1ee3",
            "1e3e",
            "1e+",
            "1 Gi",
            "1,5",
            "١",
            "1e99999999999999999999",
        ] {
            let err = value(&q(text)).unwrap_err();
            assert_eq!(err, QuantityError::Malformed(text.to_string()), "{text:?}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
        assert_eq!(
            milli_value(&q("12x")).unwrap_err().to_string(),
            r#""12x" is not a quantity"#
        );
    }

    #[test]
    fn negatives_are_rejected() {
        for text in ["-1", "-100m", "-1n", "-0.5Gi", "-1e-9"] {
            assert_eq!(
                value(&q(text)),
                Err(QuantityError::Negative(text.to_string())),
                "{text}"
            );
        }
        assert_eq!(
            value(&q("-1")).unwrap_err().to_string(),
            r#""-1" is negative"#
        );
    }

    #[test]
    fn overflow_is_rejected() {
        for text in [
            "16Ei",
            "18446744073709551616",
            "1e20",
            "99E",
            "1e9223372036854775807",
        ] {
            assert_eq!(
                value(&q(text)),
                Err(QuantityError::Overflow(text.to_string())),
                "{text}"
            );
        }
        // Fits as a value but not in thousandths.
        assert_eq!(value(&q("1e17")), Ok(100_000_000_000_000_000));
        assert_eq!(
            milli_value(&q("1e17")),
            Err(QuantityError::Overflow("1e17".into()))
        );
    }
}
