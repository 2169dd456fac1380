//! FHIR date, dateTime and instant values as the range of instants they denote
//! (`2024` is the whole year; `2024-03-05T10:00` the whole minute), in ms since the epoch,
//! both ends inclusive.

use chrono::{DateTime, Datelike, Days, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// The earliest and latest instants (ms) a date value covers, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm]`.
/// Values without a zone are taken as UTC. `None` for anything else.
pub fn parse_range(text: &str) -> Option<DateRange> {
    let text = text.trim();
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year_text = fields.next()?;
    if year_text.len() != 4 || !year_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = year_text.parse().ok()?;
    let month = match fields.next() {
        Some(m) if m.len() == 2 => Some(m.parse::<u32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    let day = match fields.next() {
        Some(d) if d.len() == 2 => Some(d.parse::<u32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    match (month, day, time_part) {
        (None, None, None) => {
            let start = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let end = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
            Some(day_span(start, end))
        }
        (Some(m), None, None) => {
            let start = NaiveDate::from_ymd_opt(year, m, 1)?;
            let end = if m == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, m + 1, 1)?
            };
            Some(day_span(start, end))
        }
        (Some(m), Some(d), None) => {
            let start = NaiveDate::from_ymd_opt(year, m, d)?;
            let end = start.checked_add_days(Days::new(1))?;
            Some(day_span(start, end))
        }
        (Some(m), Some(d), Some(time)) => {
            let date = NaiveDate::from_ymd_opt(year, m, d)?;
            parse_time(date, time)
        }
        _ => None,
    }
}

fn day_span(start: NaiveDate, end_exclusive: NaiveDate) -> DateRange {
    let low = start
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| Utc.from_utc_datetime(&t).timestamp_millis());
    let high = end_exclusive
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| Utc.from_utc_datetime(&t).timestamp_millis())
        - 1;
    DateRange { low, high }
}

fn parse_time(date: NaiveDate, time: &str) -> Option<DateRange> {
    // Split off the zone.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, zone) = time.split_at(pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
        (c, sign * secs)
    } else {
        (time, 0)
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let (hour, minute, second_text) = match parts.as_slice() {
        [h, m] => (h, m, None),
        [h, m, s] => (h, m, Some(*s)),
        _ => return None,
    };
    if hour.len() != 2 || minute.len() != 2 {
        return None;
    }
    let hour: u32 = hour.parse().ok()?;
    let minute: u32 = minute.parse().ok()?;
    let (second, millis, span_ms): (u32, u32, i64) = match second_text {
        None => (0, 0, 60_000),
        Some(s) => {
            let (whole, frac) = match s.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (s, None),
            };
            if whole.len() != 2 {
                return None;
            }
            let second: u32 = whole.parse().ok()?;
            match frac {
                None => (second, 0, 1000),
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    let digits: String = f.chars().chain("000".chars()).take(3).collect();
                    let span = match f.len() {
                        1 => 100,
                        2 => 10,
                        _ => 1,
                    };
                    (second, digits.parse().ok()?, span)
                }
                Some(_) => return None,
            }
        }
    };
    let naive: NaiveDateTime = date.and_hms_milli_opt(hour, minute, second.min(59), millis)?;
    let offset = FixedOffset::east_opt(offset_secs)?;
    let instant: DateTime<FixedOffset> = offset.from_local_datetime(&naive).single()?;
    let low = instant.timestamp_millis();
    Some(DateRange {
        low,
        high: low + span_ms - 1,
    })
}

/// The current instant in ms (the `ap` prefix sizes its tolerance from it).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The year of a ms instant (diagnostics and tests).
pub fn year_of(ms: i64) -> Option<i32> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|d| d.year())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn implicit_ranges_follow_precision() {
        let y = parse_range("2024").unwrap();
        assert_eq!(y.low, ms("2024-01-01T00:00:00Z"));
        assert_eq!(y.high, ms("2025-01-01T00:00:00Z") - 1);
        let m = parse_range("2024-02").unwrap();
        assert_eq!(m.high, ms("2024-03-01T00:00:00Z") - 1);
        let d = parse_range("2024-12-31").unwrap();
        assert_eq!(d.low, ms("2024-12-31T00:00:00Z"));
        assert_eq!(d.high, ms("2025-01-01T00:00:00Z") - 1);
        let minute = parse_range("2024-03-05T10:00+09:00").unwrap();
        assert_eq!(minute.low, ms("2024-03-05T01:00:00Z"));
        assert_eq!(minute.high, ms("2024-03-05T01:01:00Z") - 1);
        let second = parse_range("2024-03-05T10:00:07Z").unwrap();
        assert_eq!(second.high - second.low, 999);
        let milli = parse_range("2024-03-05T10:00:07.123Z").unwrap();
        assert_eq!(milli.low, milli.high);
        assert_eq!(year_of(milli.low), Some(2024));
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "24",
            "2024-13",
            "2024-02-30",
            "2024-1-1",
            "abc",
            "2024-01-01T25:00Z",
            "2024-01-01T10",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }
}
