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
    fn short_ids_keep_eight_digits() {
        assert_eq!(short_id(&"00abcdef01234567"), "00abcdef");
        assert_eq!(short_id(&"abc"), "abc");
        assert_eq!(or_dash(None::<u32>), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }
}
