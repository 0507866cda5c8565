//! Sizes as people type and read them.
//!
//! Parsing accepts `4G`, `4GiB`, `4GB`, `512M`, `1.5T`, `64K`, `100B` (case-insensitive) and a
//! bare number, which means MiB: VM memory and disk sizes are almost always whole MiB, so that is
//! the least surprising unit when none is given. Every unit is binary (1G = 1024 MiB), including
//! the `GB` spelling, as Docker and Firecracker users expect of memory sizes.
//!
//! Formatting picks the largest binary unit the value reaches and keeps one decimal when it is
//! not whole: `0 B`, `512 MiB`, `1.2 GiB`.

use std::fmt;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Why a size did not parse. The message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    Empty,
    Negative(String),
    NotANumber(String),
    UnknownUnit { text: String, unit: String },
    TooLarge(String),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EXPECTED: &str = "expected a number with an optional unit, like 512M, 4G or 4GiB \
                                (a bare number means MiB)";
        match self {
            SizeError::Empty => write!(f, "empty size: {EXPECTED}"),
            SizeError::Negative(text) => write!(f, "size {text:?} is negative: {EXPECTED}"),
            SizeError::NotANumber(text) => write!(f, "size {text:?} is not a number: {EXPECTED}"),
            SizeError::UnknownUnit { text, unit } => write!(
                f,
                "size {text:?} has unknown unit {unit:?}: use B, K, M, G or T (optionally KiB, MiB, GiB, TiB)"
            ),
            SizeError::TooLarge(text) => write!(f, "size {text:?} is too large (at most 16 EiB)"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a size into bytes. See the module docs for the accepted forms.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(SizeError::Negative(trimmed.to_owned()));
    }
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let unit = unit.trim_start();
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" => MIB,
        "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            // "4Q" and "abc" both end up here; a text with no digits at all is not a number.
            if number.is_empty() {
                return Err(SizeError::NotANumber(trimmed.to_owned()));
            }
            return Err(SizeError::UnknownUnit {
                text: trimmed.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || fraction.len() > 9
    {
        return Err(SizeError::NotANumber(trimmed.to_owned()));
    }
    // Exact integer arithmetic in u128: "1.5G" is 1 * G + 5 * G / 10, rounded down to a byte.
    let too_large = || SizeError::TooLarge(trimmed.to_owned());
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_large())?
    };
    let bytes = whole
        .checked_mul(u128::from(multiplier))
        .and_then(|w| w.checked_add(fraction * u128::from(multiplier) / scale))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Formats bytes for people: `0 B`, `999 B`, `1.5 KiB`, `512 MiB`, `1.2 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (index, (name, unit)) in UNITS.iter().enumerate() {
        if bytes < *unit {
            continue;
        }
        // Tenths of the unit, rounded to nearest, in u128 so that huge values cannot overflow.
        let tenths = (u128::from(bytes) * 10 + u128::from(*unit) / 2) / u128::from(*unit);
        // 1023.96 MiB rounds to "1024.0 MiB"; that reads better as the next unit up.
        if tenths >= 10240 && index > 0 {
            let (bigger, _) = UNITS[index - 1];
            return format!("1 {bigger}");
        }
        return if tenths % 10 == 0 {
            format!("{} {name}", tenths / 10)
        } else {
            format!("{}.{} {name}", tenths / 10, tenths % 10)
        };
    }
    format!("{bytes} B")
}

/// A size argument for clap: keeps what the user typed for messages and the parsed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_size(text).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases: &[(&str, u64)] = &[
            ("4G", 4 * GIB),
            ("4GiB", 4 * GIB),
            ("4gib", 4 * GIB),
            ("4GB", 4 * GIB),
            ("4g", 4 * GIB),
            ("512M", 512 * MIB),
            ("512MiB", 512 * MIB),
            ("512mb", 512 * MIB),
            ("1T", TIB),
            ("1TiB", TIB),
            ("64K", 64 * KIB),
            ("64KiB", 64 * KIB),
            ("100B", 100),
            ("0B", 0),
            ("1024", 1024 * MIB),
            ("1", MIB),
            ("0", 0),
            ("1.5G", GIB + GIB / 2),
            ("0.5M", MIB / 2),
            (".5G", GIB / 2),
            ("2.", 2 * MIB),
            (" 8G ", 8 * GIB),
            ("8 GiB", 8 * GIB),
            ("16777215T", 16_777_215 * TIB),
            ("18446744073709551615B", u64::MAX),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(*bytes), "parsing {text:?}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        let cases: &[(&str, SizeError)] = &[
            ("", SizeError::Empty),
            ("   ", SizeError::Empty),
            ("-1G", SizeError::Negative("-1G".into())),
            ("-5", SizeError::Negative("-5".into())),
            ("abc", SizeError::NotANumber("abc".into())),
            ("G", SizeError::NotANumber("G".into())),
            (".", SizeError::NotANumber(".".into())),
            ("1.2.3G", SizeError::NotANumber("1.2.3G".into())),
            (
                "1.0000000001G",
                SizeError::NotANumber("1.0000000001G".into()),
            ),
            (
                "4Q",
                SizeError::UnknownUnit {
                    text: "4Q".into(),
                    unit: "Q".into(),
                },
            ),
            (
                "4GiBs",
                SizeError::UnknownUnit {
                    text: "4GiBs".into(),
                    unit: "GiBs".into(),
                },
            ),
            (
                "4 G B",
                SizeError::UnknownUnit {
                    text: "4 G B".into(),
                    unit: "G B".into(),
                },
            ),
            ("16777216T", SizeError::TooLarge("16777216T".into())),
            (
                "99999999999999999999999999999999999999999",
                SizeError::TooLarge("99999999999999999999999999999999999999999".into()),
            ),
            (
                "18446744073709551616B",
                SizeError::TooLarge("18446744073709551616B".into()),
            ),
        ];
        for (text, error) in cases {
            assert_eq!(parse_size(text).as_ref(), Err(error), "parsing {text:?}");
        }
    }

    #[test]
    fn errors_say_what_is_expected() {
        let message = parse_size("4Q").unwrap_err().to_string();
        assert!(message.contains("unknown unit \"Q\""), "{message}");
        assert!(message.contains("GiB"), "{message}");
        let message = parse_size("-1G").unwrap_err().to_string();
        assert!(
            message.contains("negative") && message.contains("512M"),
            "{message}"
        );
    }

    #[test]
    fn formats_bytes_for_people() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (512 * MIB, "512 MiB"),
            (MIB + MIB / 10, "1.1 MiB"),
            (GIB, "1 GiB"),
            (GIB + GIB / 5, "1.2 GiB"),
            (1288490189, "1.2 GiB"),
            (GIB - 1, "1 GiB"),
            (1023 * MIB + 1000 * KIB, "1 GiB"),
            (4 * TIB, "4 TiB"),
            (2048 * TIB, "2048 TiB"),
            (u64::MAX, "16777216 TiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format_bytes(*bytes), *text, "formatting {bytes}");
        }
    }

    #[test]
    fn whole_units_round_trip() {
        for bytes in [0, KIB, 512 * MIB, GIB, 3 * GIB, TIB] {
            let text = format_bytes(bytes);
            assert_eq!(parse_size(&text), Ok(bytes), "round trip of {text:?}");
        }
    }
}
