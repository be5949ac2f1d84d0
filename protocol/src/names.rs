//! Names that travel between the sides and become directory names on the
//! receiver: validated here, once, for both.

use crate::ProtocolError;

pub const MAX_NAME_LEN: usize = 255;
/// 9999-12-31T23:59:59Z, the last second a session name can express.
const MAX_SECS: u64 = 253_402_300_799;

/// A volume name: 1..=255 bytes of `[A-Za-z0-9._+-]`, not starting with `.`
/// or `-`. This covers LVM LV names and image file names and cannot escape a
/// directory, hide as a dotfile, or look like an option.
pub fn validate_volume_name(name: &str) -> Result<&str, ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(ProtocolError::BadVolumeName(display_safe(name)))
    }
}

/// Session names: `S_YYYYMMDD-HHMMSS-uuuuuu` (UTC, microseconds), so that
/// byte order is time order.
pub fn validate_session_name(name: &str) -> Result<&str, ProtocolError> {
    if parse_session_name(name).is_none() {
        return Err(ProtocolError::BadSessionName(display_safe(name)));
    }
    Ok(name)
}

/// The session name for a time, strictly after `after` (bumped by a
/// microsecond if the clock has not moved past it, or moved back).
pub fn session_name(secs: u64, micros: u32, after: Option<&str>) -> String {
    // Names have four-digit years; clamp a clock set past 9999.
    let mut t = (secs.min(MAX_SECS), micros.min(999_999));
    if let Some(prev) = after.and_then(parse_session_name) {
        if t <= prev {
            t = if prev.1 == 999_999 {
                (prev.0 + 1, 0)
            } else {
                (prev.0, prev.1 + 1)
            };
        }
    }
    format_session_name(t.0, t.1)
}

fn format_session_name(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "S_{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{micros:06}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses a session name back to (seconds, microseconds); None if malformed.
pub fn parse_session_name(name: &str) -> Option<(u64, u32)> {
    let b = name.as_bytes();
    if b.len() != 24 || &b[..2] != b"S_" || b[10] != b'-' || b[17] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = &name[r];
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(2..6)?, num(6..8)?, num(8..10)?);
    let (h, mi, s, us) = (num(11..13)?, num(13..15)?, num(15..17)?, num(18..24)?);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + s;
    // Reject dates like Feb 31 by formatting back.
    (format_session_name(secs, us as u32) == name).then_some((secs, us as u32))
}

// Howard Hinnant's civil-date algorithms (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Makes a peer-supplied string safe to print on a terminal: control
/// characters and non-ASCII are escaped, and it is cut at 200 characters.
pub fn display_safe(s: &str) -> String {
    format!("'{}'", escape_text(s, 200))
}

/// Text from a peer made safe for a terminal: printable ASCII and spaces
/// kept, everything else (escape sequences, control characters, non-ASCII)
/// escaped; cut after `max` characters.
pub fn escape_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn volume_names() {
        for ok in ["vm-work-private", "private.img", "a", "root+x_1"] {
            assert!(validate_volume_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", ".", "..", "../x", "a/b", "a\0b", ".hidden", "-rf", "a b", &long, "é",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_volume_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn session_names_sort_in_time_order() {
        let a = session_name(1_764_136_560, 5, None);
        assert_eq!(a, "S_20251126-055600-000005");
        assert_eq!(parse_session_name(&a), Some((1_764_136_560, 5)));
        let b = session_name(1_764_136_560, 5, Some(&a));
        assert!(b > a);
        let c = session_name(1_764_136_000, 0, Some(&b)); // clock went back
        assert!(c > b);
        let d = session_name(1_764_136_560, 999_999, Some(&c));
        let e = session_name(0, 0, Some(&d));
        assert!(e > d && e == "S_20251126-055601-000000", "{e}");
        for bad in [
            "S_20250231-000000-000000",
            "S_2025112-055600-0000055",
            "x",
            "S_20251126-056000-000000",
        ] {
            assert!(validate_session_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_safe_escapes() {
        assert_eq!(display_safe("a\x1b[2Jb\n"), "'a\\u{1b}[2Jb\\n'");
    }

    proptest! {
        #[test]
        fn name_order_is_time_order(t1 in 0u64..=MAX_SECS, u1 in 0u32..1_000_000, t2 in 0u64..=MAX_SECS, u2 in 0u32..1_000_000) {
            let (a, b) = (session_name(t1, u1, None), session_name(t2, u2, None));
            prop_assert_eq!(a.cmp(&b), (t1, u1).cmp(&(t2, u2)));
            prop_assert_eq!(parse_session_name(&a), Some((t1, u1)));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = validate_session_name(&s);
            let _ = validate_volume_name(&s);
        }
    }
}
