//! Logs: to `--log-file`, or to stderr, which under systemd is the journal.
//!
//! Lines are `tracing`'s key=value format, so `op=put_block status=503 request_id=...` can be
//! grepped. Libraries that log headers are held at info, and credentials are wrapped so that
//! they print as `<redacted>`: no key, SAS or token reaches a log.

use std::io::IsTerminal;
use std::process::Stdio;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::MountArgs;

pub fn init(args: &MountArgs) -> Result<(), String> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level: tracing::Level = args.log_level.parse().map_err(|_| {
        format!(
            "--log-level {}: use error, warn, info, debug or trace",
            args.log_level
        )
    })?;
    let level = LevelFilter::from_level(level);
    // The HTTP and TLS libraries log requests and headers at debug and trace, and headers
    // carry keys and tokens: they never go below info, whatever --log-level says.
    let libraries = match level {
        LevelFilter::DEBUG | LevelFilter::TRACE => LevelFilter::INFO,
        other => other,
    };
    let mut targets = Targets::new().with_default(level);
    for lib in [
        "hyper",
        "hyper_util",
        "reqwest",
        "h2",
        "rustls",
        "tokio_rustls",
        "azure_core",
        "azure_identity",
        "typespec_client_core",
    ] {
        targets = targets.with_target(lib, libraries);
    }
    let journal = args.log_file.is_none() && stderr_is_journal();
    let (writer, ansi) = match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-file {}: {e}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(targets);
    let started = if journal {
        // journald stamps each line itself and reads its priority from a `<N>` prefix.
        let fmt = fmt.event_format(Journald(
            tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false),
        ));
        registry.with(fmt).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    started.map_err(|e| format!("cannot start logging: {e}"))?;
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    Ok(())
}

/// systemd sets `JOURNAL_STREAM` to the device and inode of the stream it connected; it
/// is ours only if stderr is still that stream.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat of fd 2 into a zeroed, properly sized struct.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(std::io::stderr().as_raw_fd(), &mut st) != 0 {
            return false;
        }
        st
    };
    dev.parse() == Ok(st.st_dev as u64) && ino.parse() == Ok(st.st_ino as u64)
}

/// Where a background daemon's stderr goes: the journal when started by systemd (e.g. an
/// fstab mount), nowhere otherwise (use `--log-file`).
pub fn daemon_stderr() -> Stdio {
    match stderr_is_journal() {
        true => Stdio::inherit(),
        false => Stdio::null(),
    }
}

/// Prefixes each line with its syslog priority, as journald expects on a stream.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
