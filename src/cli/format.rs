//! Text for people: aligned tables, relative ages, timestamps.
//!
//! Everything here is a pure function of its input (the current time is passed in), so the
//! output of a command is reproducible and these helpers are unit-tested directly.

use std::time::{SystemTime, UNIX_EPOCH};

/// Columns separated by two spaces, left-aligned, headers in capitals; no trailing spaces.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.headers.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long ago, in the largest whole unit: `3s`, `5m`, `2h`, `4d`. A time in the future (a
/// clock that moved backwards) reads as `0s` rather than something alarming.
pub fn format_age(then_unix_ms: u64, now_unix_ms: u64) -> String {
    let seconds = now_unix_ms.saturating_sub(then_unix_ms) / 1000;
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 60 * 60 => format!("{}m", s / 60),
        s if s < 24 * 60 * 60 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A UTC timestamp with milliseconds: `2026-04-28T16:32:57.123Z`. UTC keeps the output the
/// same on every machine, which matters when two people compare an event stream.
pub fn format_timestamp(unix_ms: u64) -> String {
    let millis = unix_ms % 1000;
    let seconds = unix_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`,
/// restricted to dates after the epoch, which is all a log timestamp can be).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Parses an RFC 3339 timestamp (`2026-04-28T19:32:57Z`, `2026-04-28T21:32:57.5+02:00`; a
/// space may stand for the `T`) into milliseconds since the Unix epoch. `None` for anything
/// else, or a time before the epoch.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let at = |i: usize, wanted: &[u8]| bytes.get(i).is_some_and(|b| wanted.contains(b));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = 19;
    let mut millis = 0;
    if at(rest, b".") {
        let start = rest + 1;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        if end == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        let fraction = &text[start..end];
        millis = format!("{:0<3}", &fraction[..fraction.len().min(3)])
            .parse()
            .ok()?;
        rest = end;
    }
    let offset_minutes: i64 = match bytes.get(rest..) {
        Some(b"Z" | b"z") => 0,
        Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
            let hours = digits(rest + 1..rest + 3)? as i64;
            let minutes = digits(rest + 4..rest + 6)? as i64;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let local_seconds = days * 86_400 + (hour * 3600 + minute * 60 + second.min(59)) as i64;
    let utc_seconds = local_seconds - offset_minutes * 60;
    u64::try_from(utc_seconds)
        .ok()
        .map(|seconds| seconds * 1000 + millis)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let year = year as i64 - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses a duration as people type one: a number and a unit (`ms`, `s`, `m`, `h`, `d`),
/// or several (`1h30m`). Milliseconds; `None` when the text is anything else.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if number_len == 0 {
            return None;
        }
        let number: u64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(total)
}

/// The first 8 hex digits of an id: enough to tell operations apart on screen. Commands that
/// take an id accept such a prefix back.
pub fn short_id(id: &impl std::fmt::Display) -> String {
    let text = id.to_string();
    text.chars().take(8).collect()
}

/// `-` for an absent value, so that table columns never collapse.
pub fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = 100_000_000_000;
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (999, "0s"),
            (3_000, "3s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (5 * 60_000 + 59_000, "5m"),
            (3_600_000 - 1, "59m"),
            (3_600_000, "1h"),
            (2 * 3_600_000 + 1, "2h"),
            (86_400_000 - 1, "23h"),
            (86_400_000, "1d"),
            (4 * 86_400_000, "4d"),
            (400 * 86_400_000, "400d"),
        ];
        for (ago_ms, text) in cases {
            assert_eq!(format_age(now - ago_ms, now), *text, "{ago_ms} ms ago");
        }
        assert_eq!(
            format_age(now + 5_000, now),
            "0s",
            "the future is not negative"
        );
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_777_404_777_123, "2026-04-28T19:32:57.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_timestamp(*ms), *text, "{ms}");
        }
    }

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let mut table = Table::new(&["NAME", "SIZE", "NOTE"]);
        table.row(vec!["debian-bookworm".into(), "1.2 GiB".into(), "".into()]);
        table.row(vec!["a".into(), "512 MiB".into(), "default".into()]);
        assert_eq!(
            table.render(),
            "NAME             SIZE     NOTE\n\
             debian-bookworm  1.2 GiB\n\
             a                512 MiB  default\n"
        );
    }

    #[test]
    fn rfc3339_timestamps_parse_to_the_millisecond() {
        let at = 1_777_404_777_123;
        assert_eq!(parse_timestamp(&format_timestamp(at)), Some(at));
        assert_eq!(
            parse_timestamp("2026-04-28T19:32:57Z"),
            Some(1_777_404_777_000)
        );
        assert_eq!(
            parse_timestamp("2026-04-28 21:32:57.5+02:00"),
            Some(1_777_404_777_500)
        );
        assert_eq!(
            parse_timestamp("2026-04-28T14:32:57.123456-05:00"),
            Some(1_777_404_777_123)
        );
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "",
            "120",
            "2026-04-28",
            "2026-04-28T19:32:57",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-28T24:00:00Z",
            "2026-04-28T19:32:57.Z",
            "2026-04-28T19:32:57+2:00",
            "1969-12-31T23:59:59Z",
            "2026-04-28T19:32:57Zjunk",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_take_units_and_sums() {
        assert_eq!(parse_duration_ms("10m"), Some(600_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2d"), Some(172_800_000));
        for bad in ["", "10", "m", "10x", "1.5h", "-5m", "99999999999999999999d"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_ids_keep_eight_digits() {
        assert_eq!(short_id(&"00abcdef01234567"), "00abcdef");
        assert_eq!(short_id(&"abc"), "abc");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }
}
