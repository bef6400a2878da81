//! `mount -t fuse.batchfs` and `/etc/fstab`: mount(8) runs `/sbin/mount.fuse.batchfs SOURCE
//! MOUNTPOINT [-sfnv] [-o OPTIONS]`, and that name is a link to the `batchfs` binary. This
//! turns such a command line into the equivalent `batchfs mount ...`.

/// Options of mount(8), fstab and systemd that concern the mount table or the caller, not us.
const IGNORED: &[&str] = &[
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail", "dev",
    "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "async",
];

/// `-o` options that map to a flag without a value.
const SWITCHES: &[(&str, &str)] = &[
    ("allow_other", "--allow-other"),
    ("ro", "--read-only"),
    ("node", "--node"),
    ("foreground", "--foreground"),
];

/// `-o` options that map to a flag with a value.
const VALUED: &[&str] = &[
    "config",
    "subscription",
    "resource_group",
    "identity",
    "client_id",
    "arm_endpoint",
    "refresh",
    "uid",
    "gid",
    "log_level",
    "log_file",
    "attr_timeout",
    "dir_timeout",
    "cache_size",
    "max_requests",
    "timeout",
    "spill_dir",
];

const SUBCOMMANDS: &[&str] = &["mount", "unmount", "stats", "accounts", "help"];

/// Whether this is a mount helper's command line: started as `mount.fuse.batchfs`, or as
/// `batchfs SOURCE MOUNTPOINT ...` the way FUSE's generic `mount.fuse3` runs a file system
/// type `fuse.batchfs` when no helper of that name is installed.
pub fn is_helper(argv: &[String]) -> bool {
    let Some(argv0) = argv.first() else {
        return false;
    };
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    if name == "mount.fuse.batchfs" || name == "mount.batchfs" {
        return true;
    }
    argv.len() >= 3
        && argv[1..3].iter().all(|a| !a.starts_with('-'))
        && !SUBCOMMANDS.contains(&argv[1].as_str())
}

/// `mount.fuse.batchfs SOURCE MOUNTPOINT -o a,b=c` → `batchfs mount --a --b c MOUNTPOINT`.
/// SOURCE is ignored when it is `none` or `batchfs`, and otherwise taken as the accounts file.
pub fn to_mount_args(args: &[String]) -> Result<Vec<String>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs options")?.clone()),
            // Sloppy, fake, no-mtab, verbose: nothing for us to do.
            "-s" | "-f" | "-n" | "-v" => {}
            // A namespace or type given by newer mount(8): the type is ours by definition.
            "-N" | "-t" => {
                it.next();
            }
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => return Err(format!("unknown argument {s}")),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err("usage: mount.fuse.batchfs SOURCE MOUNTPOINT [-o OPTIONS]".into());
    };
    let mut out = vec!["batchfs".to_string(), "mount".to_string()];
    let mut config_given = false;
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") || name == "comment" {
            continue;
        }
        if let Some((_, flag)) = SWITCHES.iter().find(|(o, _)| *o == name) {
            if value.is_some() {
                return Err(format!("mount option {name} takes no value"));
            }
            out.push(flag.to_string());
            continue;
        }
        if VALUED.contains(&name) {
            let value = value.ok_or_else(|| format!("mount option {name} needs a value"))?;
            config_given |= name == "config";
            out.push(format!("--{}", name.replace('_', "-")));
            out.push(value.to_string());
            continue;
        }
        return Err(format!("unknown mount option {name}"));
    }
    if !matches!(source.as_str(), "none" | "batchfs" | "") && !config_given {
        out.push("--config".into());
        out.push(source.clone());
    }
    out.push(mountpoint.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn fstab_options_become_flags() {
        let got = to_mount_args(&args(
            "/sbin/mount.fuse.batchfs none /mnt/batch -o \
             rw,config=/etc/batchfs/accounts.toml,allow_other,cache_size=1G,_netdev,x-systemd.automount",
        ))
        .unwrap();
        assert_eq!(
            got.join(" "),
            "batchfs mount --config /etc/batchfs/accounts.toml --allow-other --cache-size 1G \
             /mnt/batch"
        );
        let got = to_mount_args(&args("mount.fuse.batchfs /etc/b.toml /mnt -n -o ro")).unwrap();
        assert_eq!(
            got.join(" "),
            "batchfs mount --read-only --config /etc/b.toml /mnt"
        );
    }

    #[test]
    fn bad_options_are_named() {
        let e = to_mount_args(&args("mount.fuse.batchfs none /mnt -o bogus=1")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        assert!(to_mount_args(&args("mount.fuse.batchfs none /mnt -o config")).is_err());
        assert!(to_mount_args(&args("mount.fuse.batchfs /mnt")).is_err());
        assert!(is_helper(&args("/usr/sbin/mount.fuse.batchfs none /mnt")));
        assert!(is_helper(&args("batchfs none /mnt -o allow_other")));
        assert!(!is_helper(&args("batchfs mount /mnt")));
        assert!(!is_helper(&args("batchfs stats /mnt")));
        assert!(!is_helper(&args("batchfs --help")));
    }
}
