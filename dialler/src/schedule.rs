//! Calling windows: a campaign's weekly windows hold in its own time zone and, when
//! `contact_local_time` is on, in each contact's zone too (a contact without a known zone
//! follows the campaign's). Zones are IANA names through chrono-tz, so daylight-saving changes
//! fall where they do in each place.

use chrono::{Datelike, TimeZone, Timelike, Weekday as ChronoWeekday};
use chrono_tz::Tz;
use cxb_control_plane::model::{Schedule, Weekday, Window};

fn weekday(d: ChronoWeekday) -> Weekday {
    match d {
        ChronoWeekday::Mon => Weekday::Mon,
        ChronoWeekday::Tue => Weekday::Tue,
        ChronoWeekday::Wed => Weekday::Wed,
        ChronoWeekday::Thu => Weekday::Thu,
        ChronoWeekday::Fri => Weekday::Fri,
        ChronoWeekday::Sat => Weekday::Sat,
        ChronoWeekday::Sun => Weekday::Sun,
    }
}

/// `HH:MM` as minutes of the day (`24:00` is 1440).
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    Some(h.parse::<u32>().ok()? * 60 + m.parse::<u32>().ok()?)
}

/// Whether `unix_ms` falls inside one of `windows` read in `zone`. No windows: always.
pub fn open_in(windows: &[Window], zone: Tz, unix_ms: i64) -> bool {
    if windows.is_empty() {
        return true;
    }
    let Some(local) = zone.timestamp_millis_opt(unix_ms).single() else { return false };
    let day = weekday(local.weekday());
    let minute = local.hour() * 60 + local.minute();
    windows.iter().any(|w| {
        let (Some(start), Some(end)) = (minutes(&w.start), minutes(&w.end)) else { return false };
        w.days.contains(&day) && (start..end).contains(&minute)
    })
}

/// The campaign's zone (UTC when the stored name is unknown, which the API does not accept).
pub fn campaign_zone(schedule: &Schedule) -> Tz {
    schedule.time_zone.parse().unwrap_or(Tz::UTC)
}

/// Whether the campaign may dial at all now.
pub fn campaign_open(schedule: &Schedule, unix_ms: i64) -> bool {
    open_in(&schedule.windows, campaign_zone(schedule), unix_ms)
}

/// Whether a contact in `zone` (an IANA name, or none) may be called now, the campaign being
/// open. An unknown zone name counts as none.
pub fn contact_open(schedule: &Schedule, zone: Option<&str>, unix_ms: i64) -> bool {
    if !schedule.contact_local_time {
        return true;
    }
    match zone.and_then(|z| z.parse::<Tz>().ok()) {
        Some(tz) => open_in(&schedule.windows, tz, unix_ms),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        zone.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("a valid local time").timestamp_millis()
    }

    fn weekdays_9_to_17(zone: &str) -> Schedule {
        Schedule {
            time_zone: zone.into(),
            windows: vec![Window {
                days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri],
                start: "09:00".into(),
                end: "17:00".into(),
            }],
            contact_local_time: true,
        }
    }

    #[test]
    fn windows_hold_in_the_campaign_zone() {
        let s = weekdays_9_to_17("America/New_York");
        let ny = chrono_tz::America::New_York;
        // Monday 2026-11-23.
        assert!(!campaign_open(&s, at(ny, 2026, 11, 23, 8, 59)));
        assert!(campaign_open(&s, at(ny, 2026, 11, 23, 9, 0)));
        assert!(campaign_open(&s, at(ny, 2026, 11, 23, 16, 59)));
        assert!(!campaign_open(&s, at(ny, 2026, 11, 23, 17, 0)));
        // Saturday.
        assert!(!campaign_open(&s, at(ny, 2026, 11, 28, 12, 0)));
        // No windows: always open.
        assert!(campaign_open(&Schedule::default(), at(ny, 2026, 11, 28, 3, 0)));
    }

    #[test]
    fn contacts_keep_to_their_own_local_time() {
        let s = weekdays_9_to_17("America/New_York");
        let ny = chrono_tz::America::New_York;
        // 10:00 in New York is 07:00 in Los Angeles: the LA contact waits, the NY one does not.
        let t = at(ny, 2026, 11, 23, 10, 0);
        assert!(contact_open(&s, Some("America/New_York"), t));
        assert!(!contact_open(&s, Some("America/Los_Angeles"), t));
        assert!(contact_open(&s, None, t));
        assert!(contact_open(&s, Some("Not/AZone"), t));
        // Three hours later both may be called.
        assert!(contact_open(&s, Some("America/Los_Angeles"), t + 3 * 3_600_000));
        let relaxed = Schedule { contact_local_time: false, ..s };
        assert!(contact_open(&relaxed, Some("America/Los_Angeles"), t));
    }

    #[test]
    fn daylight_saving_moves_the_window_in_utc() {
        let s = weekdays_9_to_17("Europe/London");
        // 08:30 UTC is 08:30 in London in winter (closed) and 09:30 in summer (open).
        let winter = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 8, 30, 0).single().expect("utc").timestamp_millis();
        let summer = chrono::Utc.with_ymd_and_hms(2026, 6, 22, 8, 30, 0).single().expect("utc").timestamp_millis();
        assert!(!campaign_open(&s, winter));
        assert!(campaign_open(&s, summer));
    }
}
