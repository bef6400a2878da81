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
//! - AzCopy's `--preserve-posix-properties`: `modtime` (nanoseconds since the epoch, or
//!   `2006-01-02 15:04:05 -0700` in its AMLFS style), `posix_atime` (nanoseconds) and
//!   `permissions` (the whole `st_mode` in decimal, or `0755` in AMLFS style). Read where
//!   batchfs's own keys are absent, and kept up to date in their own form where present, so
//!   AzCopy restores what batchfs shows.
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
/// AzCopy's keys for the same things as `mtime`, `atime` and `mode`.
pub const AZCOPY_MTIME: &str = "modtime";
pub const AZCOPY_ATIME: &str = "posix_atime";
pub const AZCOPY_MODE: &str = "permissions";

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

/// The modification time a blob shows: its `mtime` metadata if readable, else AzCopy's
/// `modtime`, else Last-Modified.
pub fn mtime(p: &BlobProps) -> SystemTime {
    get(&p.metadata, MTIME)
        .and_then(parse_time)
        .or_else(|| get(&p.metadata, AZCOPY_MTIME).and_then(parse_azcopy_time))
        .unwrap_or(p.last_modified)
}

/// The access time a blob shows: its `atime` metadata, else AzCopy's `posix_atime`, else its
/// modification time.
pub fn atime(p: &BlobProps) -> SystemTime {
    get(&p.metadata, ATIME)
        .and_then(parse_time)
        .or_else(|| get(&p.metadata, AZCOPY_ATIME).and_then(parse_azcopy_time))
        .unwrap_or_else(|| mtime(p))
}

/// The permission bits kept in metadata, if any are readable: `mode`, else AzCopy's
/// `permissions`.
pub fn mode(metadata: &BTreeMap<String, String>) -> Option<u16> {
    get(metadata, MODE)
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .or_else(|| {
            let m = get(metadata, AZCOPY_MODE)?;
            let radix = if amlfs_style(metadata, m) { 8 } else { 10 };
            u32::from_str_radix(m.trim(), radix).ok()
        })
        .map(|m| (m & 0o7777) as u16)
}

/// Sets the modification time, in batchfs's key and in AzCopy's where the blob has it.
pub fn set_mtime(metadata: &mut BTreeMap<String, String>, t: SystemTime) {
    set(metadata, MTIME, format_time(t));
    if let Some(old) = get(metadata, AZCOPY_MTIME) {
        let value = match old.trim().parse::<i128>() {
            Ok(_) => azcopy_nanos(t).to_string(),
            Err(_) => format_amlfs_time(t),
        };
        set(metadata, AZCOPY_MTIME, value);
    }
}

/// Sets the access time, in batchfs's key and in AzCopy's where the blob has it.
pub fn set_atime(metadata: &mut BTreeMap<String, String>, t: SystemTime) {
    set(metadata, ATIME, format_time(t));
    if get(metadata, AZCOPY_ATIME).is_some() {
        set(metadata, AZCOPY_ATIME, azcopy_nanos(t).to_string());
    }
}

/// Sets the permission bits, in batchfs's key and in AzCopy's where the blob has it (keeping
/// the file-type bits AzCopy stores with them).
pub fn set_mode(metadata: &mut BTreeMap<String, String>, mode: u16) {
    set(metadata, MODE, format_mode(mode));
    if let Some(old) = get(metadata, AZCOPY_MODE) {
        let value = if amlfs_style(metadata, old) {
            format!("{:04o}", mode & 0o777)
        } else {
            let kind = old.trim().parse::<u32>().map_or(0, |m| m & !0o7777);
            (kind | u32::from(mode & 0o7777)).to_string()
        };
        set(metadata, AZCOPY_MODE, value);
    }
}

/// AzCopy writes `permissions` in octal, and owners as `owner`/`group`, in its AMLFS style.
fn amlfs_style(metadata: &BTreeMap<String, String>, permissions: &str) -> bool {
    permissions.trim().starts_with('0')
        || get(metadata, "owner").is_some()
        || get(metadata, "group").is_some()
}

/// AzCopy's times: nanoseconds since the epoch, or `2006-01-02 15:04:05 -0700`.
fn parse_azcopy_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let nanos = match s.parse::<i128>() {
        Ok(n) => n,
        Err(_) => OffsetDateTime::parse(s, AMLFS_TIME)
            .ok()?
            .unix_timestamp_nanos(),
    };
    from_unix_nanos(nanos)
}

const AMLFS_TIME: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
);

fn format_amlfs_time(t: SystemTime) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(unix_nanos(t))
        .ok()
        .and_then(|t| t.format(AMLFS_TIME).ok())
        .unwrap_or_else(|| "9999-12-31 23:59:59 +0000".to_string())
}

/// Nanoseconds since the epoch as AzCopy reads them (a 64-bit signed integer: up to 2262).
fn azcopy_nanos(t: SystemTime) -> i64 {
    i64::try_from(unix_nanos(t)).unwrap_or(i64::MAX)
}

/// `None` before the epoch or too far ahead to be represented.
fn from_unix_nanos(nanos: i128) -> Option<SystemTime> {
    let nanos = u64::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

pub fn format_mode(mode: u16) -> String {
    format!("{:o}", mode & 0o7777)
}

/// RFC 3339, UTC, nanoseconds. Times before 1970 or past year 9999 are clamped.
pub fn format_time(t: SystemTime) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(unix_nanos(t))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_string())
}

/// RFC 3339 with any offset, or `seconds[.fraction]` since the epoch. `None` for anything
/// else, and for times before the epoch or too far ahead to be represented.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return from_unix_nanos(t.unix_timestamp_nanos());
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

    fn props(pairs: &[(&str, &str)]) -> BlobProps {
        BlobProps {
            size: 0,
            etag: "e".into(),
            last_modified: SystemTime::UNIX_EPOCH,
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            system: None,
        }
    }

    #[test]
    fn azcopy_posix_properties_are_read_and_kept_in_their_own_form() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(981_173_106, 500_000_000);
        // Its default style: nanoseconds, and the whole st_mode in decimal (0100640).
        let mut p = props(&[
            ("modtime", "981173106500000000"),
            ("posix_atime", "981173106500000000"),
            ("permissions", "33184"),
        ]);
        assert_eq!((mtime(&p), atime(&p)), (t, t));
        assert_eq!(mode(&p.metadata), Some(0o640));
        let later = t + Duration::from_secs(60);
        set_mtime(&mut p.metadata, later);
        set_atime(&mut p.metadata, later);
        set_mode(&mut p.metadata, 0o755);
        assert_eq!(p.metadata["modtime"], "981173166500000000");
        assert_eq!(p.metadata["posix_atime"], "981173166500000000");
        assert_eq!(p.metadata["permissions"], (0o100755).to_string());
        assert_eq!((mtime(&p), mode(&p.metadata)), (later, Some(0o755)));

        // Its AMLFS style: a formatted time in whole seconds, octal permissions.
        let mut p = props(&[
            ("modtime", "2001-02-03 05:05:06 +0100"),
            ("permissions", "0750"),
            ("owner", "123"),
        ]);
        assert_eq!(mtime(&p), t - Duration::from_millis(500));
        assert_eq!(mode(&p.metadata), Some(0o750));
        set_mtime(&mut p.metadata, later);
        set_mode(&mut p.metadata, 0o700);
        assert_eq!(p.metadata["modtime"], "2001-02-03 04:06:06 +0000");
        assert_eq!(p.metadata["permissions"], "0700");

        // batchfs's and rclone's keys come first; odd values fall through to Last-Modified.
        let p = props(&[("mtime", "2001-02-03T04:05:06.5Z"), ("modtime", "1")]);
        assert_eq!(mtime(&p), t);
        for odd in ["x", "-5", "99999999999999999999999", "2001-02-03"] {
            let p = props(&[("modtime", odd), ("permissions", odd)]);
            assert_eq!(mtime(&p), SystemTime::UNIX_EPOCH);
            assert_eq!(mode(&p.metadata), None);
        }
        // An unreadable `mode` falls back to AzCopy's; a time past AzCopy's range is clamped.
        let mut m = props(&[("mode", "zzz"), ("permissions", "33188"), ("modtime", "1")]).metadata;
        assert_eq!(mode(&m), Some(0o644));
        set_mtime(
            &mut m,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000_000),
        );
        assert_eq!(m["modtime"], i64::MAX.to_string());
        // Keys batchfs does not find are not added.
        let mut m = BTreeMap::new();
        set_mtime(&mut m, t);
        set_mode(&mut m, 0o644);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["mode", "mtime"]);
    }

    #[test]
    fn stamps_sort() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_221_050);
        assert_eq!(sortable_stamp(t), "20261202T141730Z");
    }
}
