//! `-o trace=FILE` through a real mount: one JSON line per operation with the right op, path,
//! errno and pid; `layerfs trace summarize`; lines dropped by a full queue are counted and
//! reported at unmount, never silently lost.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Waits for the final `{"dropped":N}` line (the server writes it after the unmount).
fn final_trace(p: &Path) -> String {
    let t0 = Instant::now();
    loop {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        if s.lines().last().is_some_and(|l| l.starts_with("{\"dropped\":")) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no final dropped line in {}:\n{s}", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|e| &s[..e]);
    }
    Some(&rest[..rest.find([',', '}']).unwrap_or(rest.len())])
}

#[test]
fn trace_lines_have_op_path_errno_and_pid() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    std::fs::write(l.join("lower.txt"), b"lower data").unwrap();
    let trace = s.dir.path().join("trace.jsonl");
    let mut mnt = mount_layerfs(&[l], Some((&u, &w)), &m, &format!("trace={}", trace.display()));

    assert_eq!(errno(&std::fs::metadata(m.join("missing"))), libc::ENOENT);
    let child = Command::new("touch").arg(m.join("made-by-touch")).spawn().unwrap();
    let touch_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let mut f = std::fs::OpenOptions::new().append(true).open(m.join("lower.txt")).unwrap();
    f.write_all(b" more").unwrap();
    drop(f);
    let mut data = String::new();
    std::fs::File::open(m.join("lower.txt")).unwrap().read_to_string(&mut data).unwrap();
    assert_eq!(data, "lower data more");
    mnt.unmount();

    let text = final_trace(&trace);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(*lines.last().unwrap(), "{\"dropped\":0}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.starts_with("{\"t\":") && l.ends_with('}'), "bad line {l}");
        for k in ["op", "pid", "us"] {
            assert!(field(l, k).is_some(), "no {k} in {l}");
        }
    }
    let find = |op: &str, path: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| field(l, "op") == Some(op) && field(l, "path") == Some(path))
            .collect()
    };
    let missing = find("lookup", "/missing");
    assert!(!missing.is_empty(), "no lookup of /missing:\n{text}");
    assert_eq!(field(missing[0], "errno"), Some("ENOENT"));
    // The kernel reports the requesting thread's id.
    let tid = fs_tid();
    assert_eq!(field(missing[0], "pid"), Some(tid.as_str()));
    let created = find("create", "/made-by-touch");
    assert_eq!(created.len(), 1, "{text}");
    assert_eq!(field(created[0], "pid"), Some(touch_pid.to_string().as_str()));
    assert_eq!(field(created[0], "ret"), Some("0"));
    assert!(created[0].contains("\"mode\":\""), "{}", created[0]);
    let writes = find("write", "/lower.txt");
    assert_eq!(writes.len(), 1, "{text}");
    assert_eq!(field(writes[0], "len"), Some("5"));
    assert_eq!(field(writes[0], "ret"), Some("5"));
    assert!(find("read", "/lower.txt").iter().any(|l| field(l, "ret") == Some("15")), "{text}");
    assert!(!text.contains("\"injected\""));

    let out = Command::new(layerfs_bin()).args(["trace", "summarize"]).arg(&trace).output().unwrap();
    assert!(out.status.success());
    let sum = String::from_utf8_lossy(&out.stdout);
    let row = |op: &str| -> Vec<String> {
        let l =
            sum.lines().find(|l| l.split_whitespace().next() == Some(op)).unwrap_or_else(|| panic!("{sum}"));
        l.split_whitespace().map(str::to_owned).collect()
    };
    assert!(
        sum.lines().next().unwrap().contains("p50_us") && sum.contains("p99_us") && sum.contains("max_us")
    );
    let lookup = row("lookup");
    let n_lookups = lines.iter().filter(|l| field(l, "op") == Some("lookup")).count();
    assert_eq!(lookup[1], n_lookups.to_string(), "{sum}");
    assert!(lookup[2].parse::<u64>().unwrap() >= 1, "{sum}");
    assert_eq!(row("create")[1], "1");
    assert!(sum.contains(&format!("total {} operations; dropped lines: 0", lines.len() - 1)), "{sum}");
    let bad =
        Command::new(layerfs_bin()).args(["trace", "summarize", "/nonexistent/trace"]).output().unwrap();
    assert!(!bad.status.success());
}

#[test]
fn a_slow_trace_reader_loses_lines_but_they_are_counted() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    let fifo = s.dir.path().join("trace.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // The reader opens the FIFO (so the server's open succeeds) but reads only once told to:
    // the pipe and the tiny queue fill up and lines are dropped.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (out_tx, out_rx) = mpsc::channel::<String>();
    let f2 = fifo.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&f2).unwrap();
        let _ = go_rx.recv();
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let _ = out_tx.send(s);
    });
    let mut mnt = mount_layerfs(&[l], Some((&u, &w)), &m, &format!("trace={},trace_queue=4", fifo.display()));
    const N: usize = 3000;
    for i in 0..N {
        assert_eq!(errno(&std::fs::symlink_metadata(m.join(format!("nope-{i}")))), libc::ENOENT);
    }
    mnt.unmount();
    go_tx.send(()).unwrap();
    let text = out_rx.recv_timeout(Duration::from_secs(30)).expect("the trace reader got no end of file");
    let lines: Vec<&str> = text.lines().collect();
    let last = *lines.last().unwrap();
    let dropped: usize =
        field(last, "dropped").and_then(|d| d.parse().ok()).unwrap_or_else(|| panic!("{last}"));
    assert!(dropped > 0, "nothing dropped with a blocked reader");
    let ops = &lines[..lines.len() - 1];
    assert!(ops.iter().all(|l| field(l, "op").is_some()), "a damaged line");
    let lookups = ops.iter().filter(|l| field(l, "op") == Some("lookup")).count();
    assert!(lookups < N, "all lookups written although lines were dropped");
    // Every operation is either written or counted.
    assert!(ops.len() + dropped >= N, "{} lines + {dropped} dropped < {N} lookups", ops.len());
    let sum = Command::new(layerfs_bin()).arg("trace").arg("summarize").arg("-").stdin_bytes(&text);
    assert!(sum.contains(&format!("dropped lines: {dropped}")), "{sum}");
}

/// This thread's id, as /proc/thread-self names it (`PID/task/TID`).
fn fs_tid() -> String {
    let l = std::fs::read_link("/proc/thread-self").unwrap();
    l.file_name().unwrap().to_string_lossy().into_owned()
}

trait StdinBytes {
    fn stdin_bytes(&mut self, input: &str) -> String;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, input: &str) -> String {
        let mut c =
            self.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A trace FIFO that no process reads is refused at mount in one line (the mount command
/// waited for a reader, and a server left behind by Ctrl-C mounted whenever one came); a
/// line that is not UTF-8 is one unreadable line of a summary (it ended the summary), and
/// `summarize --help` is help (it was taken for a file name).
#[test]
fn a_fifo_nobody_reads_is_refused_and_summaries_take_any_bytes() {
    let s = Scratch::new();
    let (l, m) = (s.path("l"), s.path("m"));
    let fifo = s.dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    if can_mount() {
        let mut child = Command::new(layerfs_bin())
            .arg("-o")
            .arg(format!("lowerdir={},trace={}", l.display(), fifo.display()))
            .arg(&m)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _g = is_mounted(&m).then(|| Mounted { mnt: m.clone(), fuse: true });
        let done = child.try_wait().unwrap();
        if done.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(done.is_some_and(|st| !st.success()), "still waiting for a reader: {err}");
        assert!(err.contains("a FIFO that no process reads") && err.trim_end().lines().count() == 1, "{err}");
        assert!(!is_mounted(&m));
    }
    let tr = s.dir.path().join("tr");
    std::fs::write(&tr, b"{\"op\":\"getattr\",\"us\":5}\n\xff\xfe\n{\"op\":\"getattr\",\"us\":7}\n").unwrap();
    let o = Command::new(layerfs_bin()).args(["trace", "summarize"]).arg(&tr).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("unreadable lines: 1") && out.contains("total 2 operations"),
        "{out}"
    );
    let o = Command::new(layerfs_bin()).args(["trace", "summarize", "--help"]).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("usage: layerfs trace"));
}
