//! The range a number search value implies by its written precision (search.html#number),
//! computed from the decimal text rather than in `f64`.
//!
//! Index values are `f64`s. A value written to ~17 significant digits
//! (`66.899999999999991`, the official `Observation/body-height`) has an implied half-width
//! (`5e-16`) far below the spacing of `f64`s there (`1.4e-14`): computed in `f64`, both bounds
//! rounded onto the stored value itself and `eq` of the very literal stored matched nothing
//! (`value >= v AND value < v`). Here the bounds are written as decimals exactly (`value ± half
//! a unit of the last digit`, digit-string arithmetic) and only then rounded, outwards where a
//! bound falls between two `f64`s, so the range of a value always holds the `f64` its literal is
//! stored as.

/// Whether `text` is a decimal as FHIR writes one (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`):
/// `.5`, `1.`, `+1` and `007` are not.
pub fn is_fhir_decimal(text: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let whole_ok = digits(whole) && (whole == "0" || !whole.starts_with('0'));
    let fraction_ok = fraction.is_none_or(digits);
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    whole_ok && fraction_ok && exponent_ok
}

/// `[low, high)` in `f64` for a number as written (`100` → [99.5, 100.5), `1.2e2` → [115,
/// 125), `1e2` → [50, 150): in exponent form the mantissa's digits count; the specification's
/// table gives [95, 105) for `1e2`, which contradicts its own rule, and the rule is what other
/// servers implement), for a store that keeps values as `f64`: each bound is the `f64` nearest
/// the exact bound, so a stored literal equal to the lower bound is inside and one equal to the
/// upper bound (`0.55` for `0.5`, stored as the same `f64` as the bound) is outside. Where the
/// literal's half-width is below the spacing of `f64`s (`66.899999999999991`), the upper bound
/// is moved just past the literal's own `f64`, which then matches itself. `None` when `text`
/// is not a plain decimal (`[+-]digits[.digits][e[+-]digits]`).
pub fn implied_range(text: &str) -> Option<(f64, f64)> {
    let Written {
        negative,
        digits,
        last,
    } = Written::parse(text)?;
    // value = ±digits × 10^last; the bounds are (10·value ∓ 5) × 10^(last-1).
    let times_ten_minus_five = |n_negative: bool, m: &str| -> String {
        match (n_negative, m == "0") {
            (_, true) => "-5".to_string(),
            (false, false) => format!("{}5", decrement(m)),
            (true, false) => format!("-{m}5"),
        }
    };
    let low = times_ten_minus_five(negative, &digits);
    let high = if negative && digits != "0" {
        // -(10·m - 5) for m ≥ 1.
        format!("-{}5", decrement(&digits))
    } else {
        format!("{digits}5")
    };
    let exponent = last.checked_sub(1)?;
    let low: f64 = format!("{low}e{exponent}").parse().ok()?;
    let high: f64 = format!("{high}e{exponent}").parse().ok()?;
    // The literal itself is always inside, even where its half-width is below the spacing of
    // f64s and the bound falls onto the f64 it is stored as.
    let literal: f64 = text.parse().ok()?;
    Some((low, high.max(literal.next_up())))
}

/// A decimal as written: its sign, its digits as one integer (no leading zeros; `"0"` for
/// zero) and the power of ten of its last digit.
struct Written {
    negative: bool,
    digits: String,
    last: i64,
}

impl Written {
    fn parse(text: &str) -> Option<Written> {
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((m, e)) => {
                let e = e.strip_prefix('+').unwrap_or(e);
                let digits = e.strip_prefix('-').unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Beyond this an f64 is 0 or infinite whatever the digits say.
                let e: i64 = e.parse().unwrap_or(if e.starts_with('-') {
                    -100_000
                } else {
                    100_000
                });
                (m, e.clamp(-100_000, 100_000))
            }
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all = format!("{whole}{fraction}");
        let trimmed = all.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        let decimals = i64::try_from(fraction.len()).ok()?;
        Some(Written {
            negative,
            digits: digits.to_string(),
            last: exponent - decimals,
        })
    }
}

/// `m - 1` for a digit string `m ≥ 1`, without leading zeros.
fn decrement(m: &str) -> String {
    let mut bytes = m.as_bytes().to_vec();
    for b in bytes.iter_mut().rev() {
        if *b == b'0' {
            *b = b'9';
        } else {
            *b -= 1;
            break;
        }
    }
    let text: String = bytes.into_iter().map(char::from).collect();
    let trimmed = text.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn contains(range: (f64, f64), value: f64) -> bool {
        range.0 <= value && value < range.1
    }

    #[test]
    fn bounds_are_half_a_unit_of_the_last_written_digit() {
        let close = |a: f64, b: f64| (a - b).abs() <= b.abs() * 1e-12;
        let cases = [
            ("100", 99.5, 100.5),
            ("100.00", 99.995, 100.005),
            ("1.00e2", 99.5, 100.5),
            ("1.2e2", 115.0, 125.0),
            ("1.1e1", 10.5, 11.5),
            ("1e2", 50.0, 150.0),
            ("1.5E-2", 0.0145, 0.0155),
            ("1e-6", 5e-7, 1.5e-6),
            ("1E20", 5e19, 1.5e20),
            ("-5.4", -5.45, -5.35),
            ("+0.5", 0.45, 0.55),
            ("0", -0.5, 0.5),
            ("-0.0", -0.05, 0.05),
            ("-1", -1.5, -0.5),
            (".5", 0.45, 0.55),
            ("5.", 4.5, 5.5),
        ];
        for (text, low, high) in cases {
            let (l, h) = implied_range(text).unwrap();
            assert!(close(l, low) && close(h, high), "{text}: {l} {h}");
        }
    }

    #[test]
    fn a_literal_equal_to_the_upper_bound_is_outside() {
        // Neither 0.55 nor 0.15 is an f64: stored as the f64 nearest the bound, still outside.
        for (text, bound, below) in [
            ("0.5", 0.55, 0.549),
            ("0.1", 0.15, 0.1499),
            ("2.2", 2.25, 2.2499),
            ("-0.5", -0.45, -0.4501),
        ] {
            let range = implied_range(text).unwrap();
            assert!(!contains(range, bound), "{text}: {range:?}");
            assert!(contains(range, below), "{text}: {range:?}");
        }
        assert!(contains(implied_range("0.5").unwrap(), 0.45));
    }

    #[test]
    fn a_bound_that_is_an_f64_stays_exclusive() {
        // 100.5 is an f64: a stored 100.5 is outside `100`, a stored 99.5 inside.
        let range = implied_range("100").unwrap();
        assert_eq!(range, (99.5, 100.5));
        assert!(!contains(range, 100.5));
        assert!(contains(range, 99.5));
    }

    #[test]
    fn the_range_of_a_literal_holds_the_f64_it_is_stored_as() {
        for text in [
            "66.899999999999991",
            "66.899999999999999",
            "0.30000000000000004",
            "0.1",
            "1.7976931348623157e308",
            "123456789012345678901234567890",
            "-66.899999999999991",
            "9007199254740993",
            "5e-324",
            "2.2250738585072014e-308",
        ] {
            let stored: f64 = text.parse().unwrap();
            let range = implied_range(text).unwrap();
            assert!(contains(range, stored), "{text}: {range:?} {stored}");
        }
    }

    #[test]
    fn only_plain_decimals_are_read() {
        for text in [
            "", "-", ".", "e5", "1e", "1e+", "abc", "1.2.3", "inf", "NaN", "0x10",
        ] {
            assert!(implied_range(text).is_none(), "{text}");
        }
        assert_eq!(decrement("1000"), "999");
        assert_eq!(decrement("1"), "0");
    }
}
