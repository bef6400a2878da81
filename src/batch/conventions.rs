//! The Batch File Conventions: where a job's outputs live in its linked storage account.
//!
//! A job's outputs go to the container `job-<id>` when that is a valid container name, and
//! otherwise to `job-<safe>-<sha1 of the id>`: the rule of Microsoft's
//! `Microsoft.Azure.Batch.Conventions.Files` library, so `jobs/<id>/output` finds what tasks
//! saved with it (`$JobOutput/...`, `<task>/$TaskOutput/...`).

use sha1::{Digest, Sha1};

/// The output container of job `id`.
pub fn output_container(id: &str) -> String {
    let id = id.to_lowercase();
    let plain = format!("job-{id}");
    if valid_container(&plain) {
        return plain;
    }
    let hash: String = Sha1::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut safe = String::new();
    for c in id.chars() {
        match c {
            ':' | '_' | '-' if safe.ends_with('-') => {}
            ':' | '_' | '-' => safe.push('-'),
            c => safe.push(c),
        }
    }
    let safe: String = safe.trim_matches('-').chars().take(15).collect();
    let safe = match safe.trim_matches('-') {
        "" => "job",
        s => s,
    };
    format!("job-{safe}-{hash}")
}

/// 3-63 characters of `[a-z0-9-]`, starting with a letter or digit, no `--`, no trailing `-`.
fn valid_container(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.contains("--")
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_map_to_job_dash_id() {
        assert_eq!(output_container("Render-42"), "job-render-42");
        assert_eq!(output_container("a"), "job-a");
    }

    #[test]
    fn other_ids_are_hashed() {
        let c = output_container("my-_EVEN_MORE_-terrific-job");
        // sha1("my-_even_more_-terrific-job")
        let hash: String = Sha1::digest(b"my-_even_more_-terrific-job")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(c, format!("job-my-even-more-te-{hash}"));
        assert!(valid_container(&c), "{c}");
        let long = "x".repeat(64);
        assert!(output_container(&long).starts_with("job-xxxxxxxxxxxxxxx-"));
        assert!(output_container("__").starts_with("job-job-"));
    }
}
