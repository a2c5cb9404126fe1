//! Calendar formatting of caller-supplied instants. No clock is ever read
//! here: every instant comes from the caller.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Seconds since the Unix epoch; instants before it clamp to 0.
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch; instants before it clamp to 0.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Converts seconds since the epoch to UTC fields (Howard Hinnant's
/// `civil_from_days`, valid over the whole `u64` second range we accept).
pub(crate) fn civil(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4).rem_euclid(7)) as u32,
    }
}

/// Appends an RFC 5322 §3.3 date-time in UTC:
/// `Mon, 23 Nov 2026 11:40:00 +0000`.
pub(crate) fn write_rfc5322(at: SystemTime, out: &mut Vec<u8>) {
    let c = civil(unix_secs(at));
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{}, {} {} {:04} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[c.weekday as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    );
}

/// Appends PowerMTA's accounting time format: `2026-11-23 11:40:00+0000`.
pub(crate) fn write_accounting(unix_ms: u64, out: &mut Vec<u8>) {
    let c = civil(unix_ms / 1000);
    // Digits by hand: this runs once or twice per accounting line, and
    // `write!` with padding costs more than the rest of the line.
    if (0..=9999).contains(&c.year) {
        let y = c.year as u32;
        push_2(out, y / 100);
        push_2(out, y % 100);
    } else {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{:04}", c.year);
    }
    out.push(b'-');
    push_2(out, c.month);
    out.push(b'-');
    push_2(out, c.day);
    out.push(b' ');
    push_2(out, c.hour);
    out.push(b':');
    push_2(out, c.minute);
    out.push(b':');
    push_2(out, c.second);
    out.extend_from_slice(b"+0000");
}

/// Two decimal digits of `v` (`v < 100`).
fn push_2(out: &mut Vec<u8>, v: u32) {
    debug_assert!(v < 100);
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        let mut out = Vec::new();
        write_rfc5322(UNIX_EPOCH, &mut out);
        assert_eq!(out, b"Thu, 1 Jan 1970 00:00:00 +0000");
        out.clear();
        write_rfc5322(UNIX_EPOCH + Duration::from_secs(1_795_434_000), &mut out);
        assert_eq!(out, b"Mon, 23 Nov 2026 11:40:00 +0000");
        out.clear();
        // 2000-02-29 (leap day in a 400-year leap century).
        write_accounting(951_782_400_000 + 3_723_000, &mut out);
        assert_eq!(out, b"2000-02-29 01:02:03+0000");
        out.clear();
        write_accounting(0, &mut out);
        assert_eq!(out, b"1970-01-01 00:00:00+0000");
        out.clear();
        // Year 10000 keeps all its digits.
        write_accounting(253_402_300_800_000, &mut out);
        assert_eq!(out, b"10000-01-01 00:00:00+0000");
    }
}
