//! What POSIX keeps and blobs do not, kept in blob metadata: the one place that reads and
//! writes those conventions.
//!
//! - `mtime` and `atime`: RFC 3339 in UTC with nanoseconds (`2026-12-02T14:17:30.123456789Z`),
//!   the form rclone writes and reads, so files copied by either tool keep their times. Any
//!   RFC 3339 offset is read, and so is the `seconds.nanos` form earlier batchfs releases wrote.
//! - `mode`: permission bits in octal (`644`), for files and for directory markers.
//! - `hdi_isfolder=true` on a zero-length blob: a directory (blobfuse, Storage Explorer, ADLS).
//! - `is_symlink=true`: a symbolic link whose target is the blob's content (blobfuse2).
//! - `batchfscommit`: a random id each commit carries, so a commit whose reply was lost can be
//!   recognised as this writer's own when its retry is refused.
//!
//! Values come from storage and from other tools: nothing here may panic on any of them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::BlobProps;

pub const MTIME: &str = "mtime";
pub const ATIME: &str = "atime";
pub const MODE: &str = "mode";
pub const FOLDER: &str = "hdi_isfolder";
pub const COMMIT: &str = "batchfscommit";
/// blobfuse2's mark of a symbolic link, whose target is the blob's content.
pub const SYMLINK: &str = "is_symlink";

/// The value of metadata `key`, whatever case another tool wrote the key in (Azure keeps
/// metadata names case-insensitively).
pub fn get<'a>(metadata: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Sets `key`, replacing any spelling of it another tool used.
pub fn set(metadata: &mut BTreeMap<String, String>, key: &str, value: String) {
    remove(metadata, key);
    metadata.insert(key.to_string(), value);
}

pub fn remove(metadata: &mut BTreeMap<String, String>, key: &str) {
    metadata.retain(|k, _| !k.eq_ignore_ascii_case(key));
}

pub fn is_folder(metadata: &BTreeMap<String, String>) -> bool {
    get(metadata, FOLDER).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

pub fn is_symlink(metadata: &BTreeMap<String, String>) -> bool {
    get(metadata, SYMLINK).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The modification time a blob shows: its `mtime` metadata if readable, else Last-Modified.
pub fn mtime(p: &BlobProps) -> SystemTime {
    get(&p.metadata, MTIME)
        .and_then(parse_time)
        .unwrap_or(p.last_modified)
}

/// The access time a blob shows: its `atime` metadata, else its modification time.
pub fn atime(p: &BlobProps) -> SystemTime {
    get(&p.metadata, ATIME)
        .and_then(parse_time)
        .unwrap_or_else(|| mtime(p))
}

/// The permission bits kept in metadata, if any are readable.
pub fn mode(metadata: &BTreeMap<String, String>) -> Option<u16> {
    get(metadata, MODE)
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .map(|m| (m & 0o7777) as u16)
}

pub fn format_mode(mode: u16) -> String {
    format!("{:o}", mode & 0o7777)
}

/// RFC 3339, UTC, nanoseconds. Times before 1970 or past year 9999 are clamped.
pub fn format_time(t: SystemTime) -> String {
    let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(_) => 0,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_string())
}

/// RFC 3339 with any offset, or `seconds[.fraction]` since the epoch. `None` for anything
/// else, and for times before the epoch or too far ahead to be represented.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        let nanos = u64::try_from(t.unix_timestamp_nanos()).ok()?;
        return SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos));
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The time as it will read back from metadata (nanoseconds, clamped like [`format_time`]).
pub fn round_trip(t: SystemTime) -> SystemTime {
    parse_time(&format_time(t)).unwrap_or(t)
}

/// A UTC time that sorts as text: `20261202T141730Z` (names of conflict siblings).
pub fn sortable_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "19700101T000000Z".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_odd_values_never_panic() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(981_173_106, 500_000_000);
        assert_eq!(format_time(t), "2001-02-03T04:05:06.5Z");
        assert_eq!(parse_time(&format_time(t)), Some(t));
        // rclone's form, with an offset.
        let r = parse_time("2001-02-03T05:05:06.500000000+01:00");
        assert_eq!(r, Some(t));
        // The form earlier releases wrote.
        assert_eq!(parse_time("981173106.5"), Some(t));
        assert_eq!(
            parse_time("981173106"),
            Some(t - Duration::from_millis(500))
        );
        for odd in [
            "18446744073709551615",
            "18446744073709551615.999999999",
            "-1",
            "1e9",
            "",
            ".",
            "1.x",
            "9999-99-99T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "\u{0}",
        ] {
            let _ = parse_time(odd);
        }
        assert_eq!(parse_time("18446744073709551615"), None);
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn modes_and_keys_in_any_case() {
        let mut m = BTreeMap::new();
        m.insert("Mode".to_string(), "100751".to_string());
        m.insert("HDI_ISFOLDER".to_string(), "True".to_string());
        assert_eq!(mode(&m), Some(0o751));
        assert!(is_folder(&m));
        set(&mut m, MODE, format_mode(0o640));
        assert_eq!(mode(&m), Some(0o640));
        assert_eq!(m.len(), 2);
        m.insert(MODE.into(), "99999999999999999999".into());
        assert_eq!(mode(&m), None);
    }

    #[test]
    fn stamps_sort() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_221_050);
        assert_eq!(sortable_stamp(t), "20261202T141730Z");
    }
}
