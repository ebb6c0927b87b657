//! Logging set-up shared by the binaries: `RUST_LOG`-style filtering (default
//! `info`), as text for people or as JSON lines for log collectors.

use std::str::FromStr;

use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format (text or json)")),
        }
    }
}

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`),
/// lines to `writer` (stderr, or a writer that keeps a progress bar intact).
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, with each
/// cause written once: layers that already repeat their source's text in
/// their own message (as tonic's and hyper's often do) add nothing.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Prints `program: error: …` (the whole chain, each cause once) on stderr
/// and returns the failure exit code: how both binaries end on an error.
pub fn report_error(
    program: &str,
    err: &(dyn std::error::Error + 'static),
) -> std::process::ExitCode {
    eprintln!("{program}: error: {}", error_chain(err));
    std::process::ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("tcp connect error")]
        Outer(#[source] Inner),
        #[error("reading x: {0}")]
        Repeats(#[source] Inner),
    }
    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    #[test]
    fn each_cause_is_written_once() {
        assert_eq!(
            error_chain(&E::Outer(Inner)),
            "tcp connect error: connection refused"
        );
        assert_eq!(
            error_chain(&E::Repeats(Inner)),
            "reading x: connection refused"
        );
    }
}

/// A duration as people read it in messages: `3.2 s`, or `250.0 ms` under a
/// second (where `{:?}` would print `3.157857399s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub std::time::Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs_f64();
        if s >= 1.0 {
            write!(f, "{s:.1} s")
        } else {
            write!(f, "{:.1} ms", s * 1000.0)
        }
    }
}
