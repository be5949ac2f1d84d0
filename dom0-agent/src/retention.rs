//! Retention: which sessions a keep policy keeps. A pure function of the
//! sessions, the policy, the current time and the local UTC offset, tested
//! with tables.
//!
//! The rules follow borg's: for each of hourly/daily/weekly/monthly/yearly
//! (in that order), walk the sessions newest first and keep the newest of
//! each period not already kept, until N periods are kept; if fewer than N
//! periods exist, the oldest session is kept as well. `last=N` keeps the N
//! newest; `within=DURATION` keeps everything newer than now − DURATION.
//! The newest session is always kept.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Seconds.
    pub within: Option<u64>,
}

impl std::str::FromStr for Policy {
    type Err = anyhow::Error;

    /// `daily=7,weekly=4,monthly=6` and so on; `within=` takes 36h, 7d, 2w,
    /// 1m (30 days) or 1y (365 days).
    fn from_str(s: &str) -> Result<Self> {
        let mut p = Policy::default();
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("keep rule '{part}' is not NAME=VALUE"))?;
            if k == "within" {
                p.within = Some(parse_duration(v)?);
                continue;
            }
            let n: u32 = v
                .parse()
                .with_context(|| format!("keep rule '{part}': '{v}' is not a count"))?;
            match k {
                "last" => p.last = n,
                "hourly" => p.hourly = n,
                "daily" => p.daily = n,
                "weekly" => p.weekly = n,
                "monthly" => p.monthly = n,
                "yearly" => p.yearly = n,
                _ => bail!(
                    "unknown keep rule '{k}' (use last, hourly, daily, weekly, monthly, yearly, within)"
                ),
            }
        }
        if p == Policy::default() {
            bail!("empty keep policy '{s}': it would prune everything but the newest session");
        }
        Ok(p)
    }
}

/// `36h`, `7d`, `2w`, `1m` (30 days), `1y` (365 days).
pub fn parse_duration(s: &str) -> Result<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("bad duration '{s}'"))?;
    let mult = match unit {
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        "m" => 30 * 86400,
        "y" => 365 * 86400,
        _ => bail!("bad duration unit in '{s}' (use h, d, w, m or y)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration '{s}' is too long"))
}

/// Days since 1970-01-01 → (year, month 1..=12). Howard Hinnant's
/// civil-from-days algorithm.
fn civil(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

#[derive(Clone, Copy)]
enum Period {
    /// Each session (`last`).
    Second,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn period(p: Period, time: u64, utc_offset: i64) -> i64 {
    let t = time as i64 + utc_offset;
    let days = t.div_euclid(86400);
    match p {
        Period::Second => unreachable!("`last` keys on the session, not its time"),
        Period::Hour => t.div_euclid(3600),
        Period::Day => days,
        // 1970-01-01 was a Thursday: +3 makes weeks start on Monday.
        Period::Week => (days + 3).div_euclid(7),
        Period::Month => {
            let (y, m) = civil(days);
            y * 12 + m as i64
        }
        Period::Year => civil(days).0,
    }
}

/// For sessions given oldest first as their times, returns which to keep.
pub fn select(times: &[u64], policy: &Policy, now: u64, utc_offset: i64) -> Vec<bool> {
    let n = times.len();
    // As borg: a session kept by one rule does not count for the next.
    let mut keep = vec![false; n];
    if let Some(w) = policy.within {
        for (k, &t) in keep.iter_mut().zip(times) {
            *k = t.saturating_add(w) > now;
        }
    }
    let rules = [
        (Period::Second, policy.last),
        (Period::Hour, policy.hourly),
        (Period::Day, policy.daily),
        (Period::Week, policy.weekly),
        (Period::Month, policy.monthly),
        (Period::Year, policy.yearly),
    ];
    for (p, count) in rules {
        if count == 0 || n == 0 {
            continue;
        }
        let mut last = None;
        let mut kept = 0;
        for i in (0..n).rev() {
            // `last` counts sessions, even ones taken in the same second.
            let k = match p {
                Period::Second => i as i64,
                _ => period(p, times[i], utc_offset),
            };
            if last == Some(k) {
                continue;
            }
            last = Some(k);
            if !keep[i] {
                keep[i] = true;
                kept += 1;
                if kept == count {
                    break;
                }
            }
        }
        // Fewer periods than asked for: the oldest session stands in.
        if kept < count {
            keep[0] = true;
        }
    }
    if let Some(k) = keep.last_mut() {
        *k = true;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;
    const D: u64 = 86400;
    /// 2026-11-26 12:00:00 UTC, a Thursday.
    const NOW: u64 = 1_795_694_400;

    fn run(times: &[u64], policy: &str) -> Vec<usize> {
        let p: Policy = policy.parse().unwrap();
        select(times, &p, NOW, 0)
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(NOW as i64 / 86400), (2026, 11));
        assert_eq!(civil(11_016), (2000, 2)); // 2000-02-29
        assert_eq!(civil(11_017), (2000, 3));
        assert_eq!(civil(-1), (1969, 12));
    }

    #[test]
    fn table() {
        // Sessions every 6 hours for 10 days, oldest first.
        let six_hourly: Vec<u64> = (0..40).rev().map(|i| NOW - i * 6 * H).collect();
        // One a day for 400 days.
        let daily: Vec<u64> = (0..400).rev().map(|i| NOW - i * D).collect();
        let cases: &[(&[u64], &str, Vec<usize>)] = &[
            // last=N: the N newest.
            (&six_hourly, "last=3", vec![37, 38, 39]),
            // last counts sessions even when they share a second.
            (&[NOW, NOW, NOW, NOW], "last=2", vec![2, 3]),
            // daily=3: newest of each of the last 3 days (today 12:00,
            // yesterday 18:00, the day before 18:00).
            (&six_hourly, "daily=3", vec![32, 36, 39]),
            // within=1d keeps 4 sessions newer than 24 h (strictly newer).
            (&six_hourly, "within=1d", vec![36, 37, 38, 39]),
            // within then daily: the days kept by within do not count.
            (
                &six_hourly,
                "within=1d,daily=2",
                vec![28, 32, 36, 37, 38, 39],
            ),
            // 11 calendar days (the oldest, Mon 18:00, is its day's
            // newest): every day's 18:00 session and today's.
            (&six_hourly, "daily=20", {
                let mut v: Vec<usize> = (0..10).map(|d| 4 * d).collect();
                v.push(39);
                v
            }),
            // More periods asked than exist: the oldest stands in.
            (&six_hourly[1..], "daily=20", {
                let mut v: Vec<usize> = (0..10).map(|d| 4 * d + 3).collect();
                v.insert(0, 0);
                v.pop();
                v.push(38);
                v
            }),
            // weekly=2 on daily sessions: Thursday NOW (this week), last Sunday.
            (&daily, "weekly=2", vec![395, 399]),
            // monthly=3: Nov 26 (today), Oct 31, Sep 30.
            (&daily, "monthly=3", vec![342, 373, 399]),
            // yearly=2: today, 2025-12-31.
            (&daily, "yearly=2", vec![69, 399]),
            // Combined rules skip what earlier ones kept.
            (&daily, "daily=2,weekly=1", vec![395, 398, 399]),
        ];
        for (times, policy, want) in cases {
            assert_eq!(&run(times, policy), want, "policy {policy}");
        }
    }

    #[test]
    fn newest_always_kept_and_empty_ok() {
        assert_eq!(run(&[NOW - 10 * D], "within=1d"), vec![0]);
        assert!(select(&[], &"daily=1".parse().unwrap(), NOW, 0).is_empty());
    }

    #[test]
    fn utc_offset_moves_day_boundaries() {
        // 12:00, 23:30 and 00:30 UTC: two days in UTC, one at UTC-2
        // (where the oldest then stands in for the missing second day).
        let t = [NOW, NOW + 11 * H + 1800, NOW + 12 * H + 1800];
        let p: Policy = "daily=2".parse().unwrap();
        assert_eq!(select(&t, &p, NOW + D, 0), vec![false, true, true]);
        assert_eq!(select(&t, &p, NOW + D, -2 * 3600), vec![true, false, true]);
    }

    #[test]
    fn policy_errors() {
        for bad in [
            "",
            "daily",
            "daily=x",
            "hourly=-1",
            "fortnightly=2",
            "within=3q",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            "daily=7, weekly=4".parse::<Policy>().unwrap(),
            Policy {
                daily: 7,
                weekly: 4,
                ..Policy::default()
            }
        );
    }
}
