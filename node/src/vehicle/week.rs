//! Week time: the car's clock counts minutes since a Monday 00:00 local time. Parsing and printing
//! `"ddd hh:mm"`, and the local week minute of a wall-clock instant.

use super::policy::WEEK_MIN;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `"ddd hh:mm"` (e.g. `"tue 01:00"`) into minutes since Monday 00:00.
pub fn parse_week_time(s: &str) -> Result<u64, String> {
    let bad = || format!("expected \"ddd hh:mm\" such as \"tue 01:00\", got \"{s}\"");
    let (day, hm) = s.trim().split_once(' ').ok_or_else(bad)?;
    let day = DAYS
        .iter()
        .position(|d| d.eq_ignore_ascii_case(day.trim()))
        .ok_or_else(bad)? as u64;
    let (h, m) = hm.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(day * 24 * 60 + h * 60 + m)
}

/// Formats minutes (since a Monday 00:00) as `"ddd hh:mm"`.
pub fn week_time(min: u64) -> String {
    let m = min % WEEK_MIN;
    format!(
        "{} {:02}:{:02}",
        DAYS[(m / (24 * 60)) as usize],
        (m / 60) % 24,
        m % 60
    )
}

/// Local minutes since the Monday before the Unix epoch (1970-01-01 was a Thursday) at `unix_ms`.
pub(super) fn local_min(unix_ms: u64, utc_offset_min: i32) -> u64 {
    (unix_ms / 60_000 + 3 * 24 * 60).saturating_add_signed(i64::from(utc_offset_min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn week_times_parse_and_print() {
        assert_eq!(parse_week_time("tue 01:00"), Ok(24 * 60 + 60));
        assert_eq!(parse_week_time("Sun 23:59"), Ok(WEEK_MIN - 1));
        assert_eq!(week_time(WEEK_MIN + 24 * 60 + 61), "tue 01:01");
        for bad in ["", "tue", "xyz 01:00", "mon 24:00", "mon 1:60", "mon aa:00"] {
            assert!(parse_week_time(bad).is_err(), "{bad}");
        }
        // 1970-01-01 00:00 UTC was a Thursday.
        assert_eq!(week_time(local_min(0, 0)), "thu 00:00");
        assert_eq!(week_time(local_min(0, 90)), "thu 01:30");
    }
}
