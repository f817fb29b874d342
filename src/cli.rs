//! Command-line entry: the fuse-overlayfs compatible mount form, and the subcommands.

use std::ffi::OsString;

use crate::config::{self, MountConfig};

pub const USAGE: &str = "\
usage: layerfs [-f] [-d] [-o OPTIONS]... [SOURCE] MOUNTPOINT
       layerfs unpack|diff|digest|store ...   (layer tar tools; see layerfs SUBCOMMAND --help)
       layerfs trace summarize FILE | fault MOUNTPOINT add|del|clear|list ...
       layerfs compare [--keep] LOWERDIR... -- COMMAND [ARGS...]   (behaviour testing)

Mounts lowerdir layers (leftmost is the top) under one writable upperdir, like overlayfs.

options (-o, comma-separated, may repeat):
  lowerdir=A:B:...     read-only layers, top first (\\: and \\, escape)
  upperdir=DIR         writable layer (needs workdir)
  workdir=DIR          scratch dir on the same filesystem as upperdir
  whiteout=auto|chardev|wh   whiteout form written (auto: char device 0/0 when mknod works)
  timeout=SECS         kernel entry/attribute cache time (default 1000000)
  fsync=0|1, volatile  skip fsync when 0 / volatile
  static_nlink         directories report nlink 1
  squash_to_root, squash_to_uid=N, squash_to_gid=N   report these owners
  noxattrs=1           xattr calls fail with ENOSYS
  read_ahead=0|1       read ahead of tree walks: subdirectories, and the data of
                       files opened in listing order; of lookups: a directory's
                       lower entries stat'ed at its first lookup; and of sequential
                       reads the server serves (default 1)
  threads=N            /dev/fuse threads (default: CPU count, at least 2)
  passthrough=0|1|all  FUSE passthrough for upper files (default 1, root, kernel 6.9+);
                       all: lower files opened read-only too (they then keep reading
                       the lower file after a copy-up, as kernel overlayfs before 4.19)
  uring=0|1            FUSE over io_uring where the kernel offers it (default 1; the
                       fuse module's enable_uring, kernel 6.14+)
  writeback=0|1        kernel writeback cache where passthrough is not used (default 0)
  uidmapping=A:B:N..., gidmapping=...   on-disk ids A.. shown as B..
  noacl                no POSIX ACLs
  xattr_permissions=1|2   owner/mode/type kept in an override xattr
  trace=FILE           one JSON line per operation (trace_queue=N lines may wait, default 65536)
  faults=FILE          fault injection rules (bare `faults`: none yet; see layerfs fault --help)
  ro, rw, allow_other, allow_root, default_permissions, auto_unmount, suid, nosuid,
  dev, nodev, exec, noexec, atime, noatime, fsname=, subtype=
  accepted for fuse-overlayfs compatibility: threaded=, context=, fast_ino=, xino=,
  plugins=, redirect_dir=off
flags:
  -f        stay in the foreground
  -d        debug: log every FUSE request (implies -f)
  -h        this help
  -V        version
";

/// Runs the program; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    if args.first().is_some_and(|a0| a0 == crate::mount::WATCHER_ARG0) {
        return crate::mount::watcher_main(&args);
    }
    if let Some(first) = args.get(1).and_then(|a| a.to_str()).filter(|_| !mount_form(&args[1..])) {
        if first == "check" {
            return crate::check::main(args[1..].to_vec());
        }
        match first {
            "trace" => return crate::trace::cli_main(&args[2..]),
            "fault" => return crate::faults::cli_main(&args[2..]),
            "compare" => return crate::compare::main(&args[2..]),
            _ => {}
        }
        if matches!(first, "unpack" | "diff" | "digest" | "store") {
            return crate::oci::cli::main(args[1..].to_vec());
        }
    }
    match mount_main(&args[1.min(args.len())..]) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

/// Whether the arguments are the mount form whatever their first word: an `-o` option string
/// that gives `lowerdir=` (before any `--`). mount.fuse3 passes `SOURCE MOUNTPOINT -o ...`,
/// and a source named like a subcommand (`diff`, `store`) ran that instead of mounting.
fn mount_form(args: &[OsString]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut it = args.iter().map(|a| a.as_bytes());
    while let Some(a) = it.next() {
        if a == b"--" {
            return false;
        }
        let opts = if a == b"-o" { it.next() } else { a.strip_prefix(b"-o") };
        if opts.is_some_and(|o| o.split(|&c| c == b',').any(|opt| opt.starts_with(b"lowerdir="))) {
            return true;
        }
    }
    false
}

/// The mount form (arguments after the program name).
pub fn mount_main(args: &[OsString]) -> Result<(), String> {
    let argv = config::parse_argv(args)?;
    if argv.help {
        print!("{USAGE}");
        return Ok(());
    }
    if argv.version {
        println!("layerfs {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let cfg = MountConfig::from_argv(&argv)?;
    let source = argv.source.as_ref().and_then(|s| s.to_str().map(str::to_owned));
    crate::mount::run(cfg, source.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_mount_form_is_told_by_its_lowerdir_whatever_the_first_word() {
        assert!(mount_form(&args(&["diff", "/mnt", "-o", "lowerdir=/l,upperdir=/u,workdir=/w"])));
        assert!(mount_form(&args(&["store", "/mnt", "-oro,lowerdir=/l"])));
        assert!(!mount_form(&args(&["diff", "/upper", "-o", "out.tar"])));
        assert!(!mount_form(&args(&["compare", "/l", "--", "x", "-o", "lowerdir=/l"])));
        assert!(!mount_form(&args(&["unpack", "a.tar", "dir"])));
    }
}
