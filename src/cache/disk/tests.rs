//! The disk tier on a real directory: what it keeps, what it refuses, and what survives.

use super::*;

const MIB: u64 = 1 << 20;

fn tier(dir: &Path, limit: u64) -> Arc<DiskTier> {
    DiskTier::open(dir, limit, Arc::default()).unwrap()
}

fn data(len: u64, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

/// Bytes the files in `dir` occupy, as `du` counts them.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn pages_written_read_back_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = DiskKey::new("o", "c", "b", "e1", 3 * MIB + 100);
    let bytes = data(key.size, 1);
    {
        let t = tier(dir.path(), 64 * MIB);
        t.write(&key, 0, &bytes[..MIB as usize]);
        let last = key.size.div_ceil(PAGE) - 1;
        t.write(&key, last, &bytes[(last * PAGE) as usize..]);
        assert!(t.has(&key, 0) && t.has(&key, last) && !t.has(&key, 40));
        assert_eq!(t.read(&key, 0, 32).unwrap(), &bytes[..MIB as usize]);
        assert!(t.read(&key, 30, 34).is_none(), "a run with a missing page");
        assert!(!t.is_whole(&key));
    }
    let t = tier(dir.path(), 64 * MIB);
    let last = key.size.div_ceil(PAGE) - 1;
    assert_eq!(t.read(&key, 0, 32).unwrap(), &bytes[..MIB as usize]);
    assert_eq!(
        t.read(&key, last, last + 1).unwrap(),
        &bytes[(last * PAGE) as usize..]
    );
    // Another version of the same blob is another entry.
    let other = DiskKey::new("o", "c", "b", "e2", key.size);
    assert!(!t.has(&other, 0));
}

#[test]
fn a_page_changed_on_disk_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let key = DiskKey::new("o", "c", "b", "e", 2 * MIB);
    let bytes = data(key.size, 2);
    let t = tier(dir.path(), 64 * MIB);
    t.write(&key, 0, &bytes);
    let f = OpenOptions::new()
        .write(true)
        .open(t.path(&key.id, "data"))
        .unwrap();
    f.write_all_at(b"X", PAGE * 3 + 5).unwrap();
    assert!(t.read(&key, 0, 8).is_none());
    assert_eq!(t.stats.disk_corrupt.load(Ordering::Relaxed), 1);
    assert!(
        !t.has(&key, 3),
        "the segment holding the bad page is dropped"
    );
    assert!(t.read(&key, 0, 1).is_none());
}

#[test]
fn a_torn_index_keeps_the_records_before_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let key = DiskKey::new("o", "c", "b", "e", 4 * MIB);
    let bytes = data(key.size, 3);
    {
        let t = tier(dir.path(), 64 * MIB);
        t.write(&key, 0, &bytes[..MIB as usize]);
        t.write(&key, 32, &bytes[MIB as usize..2 * MIB as usize]);
    }
    let idx = dir.path().join(format!("{}.idx", key.id));
    let len = std::fs::metadata(&idx).unwrap().len();
    // Cut the last record in half and garble the one before it: both are dropped.
    let f = OpenOptions::new().write(true).open(&idx).unwrap();
    f.set_len(len - 12).unwrap();
    f.write_all_at(b"\xff", len - 12 - REC as u64 - 3).unwrap();
    drop(f);
    let t = tier(dir.path(), 64 * MIB);
    assert_eq!(t.read(&key, 0, 32).unwrap(), &bytes[..MIB as usize]);
    assert!(t.has(&key, 61), "records before the tear hold");
    assert!(!t.has(&key, 62) && !t.has(&key, 63));
}

#[test]
fn the_limit_holds_and_the_least_recently_used_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let t = tier(dir.path(), 8 * MIB);
    let a = DiskKey::new("o", "c", "a", "e", 6 * MIB);
    let b = DiskKey::new("o", "c", "b", "e", 6 * MIB);
    t.write(&a, 0, &data(6 * MIB, 4));
    assert!(
        t.read(&a, 0, 32).is_some(),
        "segment 0 of a is now the most recent"
    );
    t.write(&b, 0, &data(6 * MIB, 5));
    assert!(t.lock().used <= 8 * MIB);
    assert!(
        du(dir.path()) <= 8 * MIB + 64 * 1024,
        "du: {}",
        du(dir.path())
    );
    assert!(t.has(&a, 0), "recently read");
    assert!(!t.has(&a, 32), "least recently used");
    assert!(t.has(&b, 0) && t.has(&b, 191));
    assert!(t.stats.disk_evictions.load(Ordering::Relaxed) >= 4);
    // A blob larger than the whole tier is not kept whole.
    assert!(!t.fits(9 * MIB));
}

#[test]
fn a_blob_held_whole_is_sealed_pinned_and_unsealed_by_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let key = DiskKey::new("o", "c", "w", "e", 2 * MIB + 7);
    let bytes = data(key.size, 6);
    {
        let t = tier(dir.path(), 4 * MIB);
        t.write(&key, 0, &bytes[..MIB as usize]);
        assert!(!t.is_whole(&key));
        t.write(&key, 32, &bytes[MIB as usize..]);
        assert!(t.is_whole(&key));
    }
    let t = tier(dir.path(), 4 * MIB);
    assert!(t.is_whole(&key), "the whole mark survives a reopen");
    let key = Arc::new(key);
    assert!(
        t.pin_whole(&key).is_none(),
        "not before its pages are checked again"
    );
    let file = (0..200)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            t.pin_whole(&key)
        })
        .unwrap();
    let mut back = vec![0u8; key.size as usize];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == bytes);
    // Pinned: another blob cannot push it out.
    let other = DiskKey::new("o", "c", "x", "e", 3 * MIB);
    t.write(&other, 0, &data(3 * MIB, 7));
    assert!(t.is_whole(&key));
    t.unpin(&key);
    t.write(&other, 0, &data(3 * MIB, 7));
    assert!(!t.is_whole(&key), "unpinned, it gives way");
    drop(t);
    let t = tier(dir.path(), 4 * MIB);
    assert!(!t.is_whole(&key), "and the drop was recorded");
}

#[test]
fn a_directory_of_other_files_is_refused_and_strays_in_ours_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"mine").unwrap();
    let err = DiskTier::open(dir.path(), 64 * MIB, Arc::default()).unwrap_err();
    assert!(matches!(err, DiskError::Foreign(..)), "{err}");
    assert!(err.to_string().contains("precious.txt"));
    assert!(dir.path().join("precious.txt").exists(), "nothing removed");

    let dir = tempfile::tempdir().unwrap();
    let key = DiskKey::new("o", "c", "b", "e", MIB);
    drop(tier(dir.path(), 64 * MIB));
    std::fs::write(dir.path().join("planted"), b"junk").unwrap();
    let fake = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join(format!("{fake}.idx")), b"not an index").unwrap();
    std::fs::write(dir.path().join(format!("{fake}.data")), b"junk").unwrap();
    let t = tier(dir.path(), 64 * MIB);
    t.write(&key, 0, &data(MIB, 8));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "planted" || n.starts_with(fake)),
        "{names:?}"
    );
    // The same directory cannot serve two mounts at once.
    let err = DiskTier::open(dir.path(), 64 * MIB, Arc::default()).unwrap_err();
    assert!(matches!(err, DiskError::InUse(_)), "{err}");
}
