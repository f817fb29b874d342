//! Progress bars for long imports and exports: shown only when stderr is a
//! terminal, otherwise every call is a no-op (no output, no cost beyond a
//! branch).

use std::io::{self, Read, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::fsutil;

/// A progress indicator that is silent unless stderr is a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

fn enabled() -> bool {
    fsutil::is_tty(2)
}

impl Progress {
    /// A byte-count bar of `total` bytes (a spinner when total is 0).
    pub fn bytes(total: u64, msg: &str) -> Progress {
        if !enabled() {
            return Progress { bar: None };
        }
        let bar = if total > 0 {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(st) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(st.progress_chars("=> "));
            }
            b
        } else {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(st) = ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}") {
                b.set_style(st);
            }
            b
        };
        bar.set_message(msg.to_string());
        Progress { bar: Some(bar) }
    }

    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// Wraps a reader so that every byte read advances the bar.
    pub fn wrap_read<R: Read>(self, r: R) -> ProgressReader<R> {
        ProgressReader { inner: r, p: self }
    }

    /// Wraps a writer so that every byte written advances the bar.
    pub fn wrap_write<W: Write>(self, w: W) -> ProgressWriter<W> {
        ProgressWriter { inner: w, p: self }
    }
}

pub struct ProgressReader<R> {
    inner: R,
    p: Progress,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.p.finish();
        }
        self.p.inc(n as u64);
        Ok(n)
    }
}

impl<R> Drop for ProgressReader<R> {
    fn drop(&mut self) {
        self.p.finish();
    }
}

pub struct ProgressWriter<W> {
    inner: W,
    p: Progress,
}

impl<W: Write> Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.p.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Drop for ProgressWriter<W> {
    fn drop(&mut self) {
        self.p.finish();
    }
}
