//! Dates in and out, in dom0's local time zone (as `date` shows them).

use anyhow::{bail, Context, Result};

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

/// `YYYY-MM-DD HH:MM:SS` in the local time zone.
pub fn format_local(t: u64) -> String {
    let l = t as i64 + local_offset(t);
    let (y, m, d) = civil_from_days(l.div_euclid(86_400));
    let r = l.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

/// The local time zone's offset from UTC at `t`, in seconds.
pub fn local_offset(t: u64) -> i64 {
    let tt = t as nix::libc::time_t;
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r only writes the tm we own.
    let ok = unsafe { !nix::libc::localtime_r(&tt, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DDTHH:MM:SS`, local time →
/// seconds since the epoch.
pub fn parse_local(s: &str) -> Result<u64> {
    let bad = || format!("bad date '{s}' (use YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]')");
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let dp: Vec<&str> = date.split('-').collect();
    if dp.len() != 3 {
        bail!(bad());
    }
    let y: i64 = dp[0].parse().with_context(bad)?;
    let mo: u32 = dp[1].parse().with_context(bad)?;
    let d: u32 = dp[2].parse().with_context(bad)?;
    let (mut h, mut mi, mut se) = (0u32, 0u32, 0u32);
    if let Some(t) = time {
        let tp: Vec<&str> = t.split(':').collect();
        if !(2..=3).contains(&tp.len()) {
            bail!(bad());
        }
        h = tp[0].parse().with_context(bad)?;
        mi = tp[1].parse().with_context(bad)?;
        if let Some(x) = tp.get(2) {
            se = x.parse().with_context(bad)?;
        }
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        bail!(bad());
    }
    let naive = days_from_civil(y, mo, d) * 86400 + (h * 3600 + mi * 60 + se) as i64;
    if naive < 0 {
        bail!("date '{s}' is before 1970");
    }
    // The offset at the naive time is right except within an hour of a
    // DST change, which is close enough for choosing sessions.
    Ok((naive - local_offset(naive as u64)).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 26), 1_795_694_400 / 86400);
    }

    #[test]
    fn parses_dates() {
        // TZ is whatever the test runs with; compare against the offset.
        let t = parse_local("2026-11-26 12:00").unwrap();
        assert_eq!(t as i64 + local_offset(t), 1_795_694_400);
        assert!(parse_local("2026-13-01").is_err());
        assert!(parse_local("yesterday").is_err());
        assert!(parse_local("2026-11-26 25:00").is_err());
    }
}
