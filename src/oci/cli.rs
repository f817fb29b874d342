//! Command line of the OCI subcommands: `unpack`, `diff`, `digest`, `store`.
//!
//! `main(args)` takes the arguments starting at the subcommand name (what
//! `src/main.rs` passes when argv[1] is one of them), prints
//! `layerfs: <one-line error>` on failure and returns the exit code
//! (0 success, 1 failure, 2 usage error).
//!
//! Hard parts: clap's multi-line usage errors are folded to one line; the
//! `diff` tar goes to stdout only when stdout is not a terminal; `store
//! mount` runs the current executable with the computed options and returns
//! its exit status.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::digest;
use super::error::{Error, Result};
use super::export;
use super::fsutil;
use super::store::{self, Store};
use super::unpack::{self, UnpackOptions, WhiteoutMode};

#[derive(Parser, Debug)]
#[command(name = "layerfs", about = "OCI layer tools of layerfs", disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Apply layer tars (plain, gzip or zstd) to a new layer directory.
    Unpack(UnpackArgs),
    /// Turn an overlay upper directory into an OCI layer tar.
    Diff(DiffArgs),
    /// Print the DiffID of each layer tar and the ChainID of the list.
    Digest(DigestArgs),
    /// A content-addressed layer store.
    Store(StoreArgs),
}

#[derive(Args, Debug)]
#[command(override_usage = "layerfs unpack [--whiteouts chardev|wh|auto] [--flatten] TAR... TARGETDIR")]
struct UnpackArgs {
    /// Whiteout form: chardev (0/0 device + trusted.overlay.opaque), wh (.wh.* files), auto.
    #[arg(long, value_name = "FORM", default_value = "auto", value_parser = ["chardev", "wh", "auto"])]
    whiteouts: String,
    /// Apply the whole chain (bottom first) onto one directory, performing the deletions.
    #[arg(long)]
    flatten: bool,
    /// TAR... TARGETDIR (`-` reads a tar from stdin)
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct DiffArgs {
    /// The overlay upper directory.
    upper: PathBuf,
    /// Write the tar to FILE (default: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DigestArgs {
    /// Layer tars, bottom first (`-` is stdin).
    #[arg(required = true)]
    tars: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// Store directory (default: $LAYERFS_STORE or /var/lib/layerfs).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: StoreCmd,
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Import a chain of layer tars (bottom first); prints the top ChainID.
    Import {
        /// Put the chain on top of this stored layer.
        #[arg(long, value_name = "CHAINID")]
        parent: Option<String>,
        #[arg(required = true)]
        tars: Vec<PathBuf>,
    },
    /// List layers: chainid diffid parent size.
    Ls,
    /// Remove a layer (refused while another layer depends on it).
    Rm { chainid: String },
    /// Add an upper directory as a new top layer; prints its ChainID.
    Commit {
        upper: PathBuf,
        #[arg(long, value_name = "CHAINID")]
        parent: Option<String>,
    },
    /// Mount a stored chain with layerfs.
    Mount {
        chainid: String,
        mountpoint: PathBuf,
        #[arg(long, value_name = "DIR", requires = "work")]
        upper: Option<PathBuf>,
        #[arg(long, value_name = "DIR", requires = "upper")]
        work: Option<PathBuf>,
        /// Extra arguments for the mount (e.g. `-- -o allow_other`).
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
}

/// Entry point: `args[0]` is the subcommand name.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut argv: Vec<OsString> = Vec::with_capacity(args.len() + 1);
    argv.push("layerfs".into());
    argv.extend(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand { 2 } else { 0 };
            }
            let text = e.render().to_string();
            let body = text.split("Usage:").next().unwrap_or("usage error");
            let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let body = body.strip_prefix("error: ").unwrap_or(&body);
            eprintln!("layerfs: {body} (see layerfs <command> --help)");
            return 2;
        }
    };
    init_logging();
    // Unpack and diff hold a descriptor per directory level of the path they are at: a tree
    // deeper than the usual soft limit of 1024 must not fail with EMFILE where tar does not.
    crate::sys::raise_nofile_limit();
    // The tools that write unwind on a signal and remove what they staged (see `stop`).
    let writes = match &cli.cmd {
        Cmd::Unpack(_) | Cmd::Diff(_) => true,
        Cmd::Store(s) => {
            matches!(s.cmd, StoreCmd::Import { .. } | StoreCmd::Commit { .. } | StoreCmd::Rm { .. })
        }
        Cmd::Digest(_) => false,
    };
    if writes {
        super::stop::take_signals();
    }
    match run(cli.cmd) {
        Ok(code) => code,
        // A signal the tool stopped for (finished work stands: the signal came too late).
        Err(_) if super::stop::stopped().is_some() => {
            let sig = super::stop::stopped().unwrap_or(0);
            eprintln!("layerfs: interrupted by signal {sig}");
            128 + sig
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

/// Warnings of the layer tools (an xattr that could not be set, an entry skipped) go to stderr
/// as `layerfs: warning: ...` lines; `RUST_LOG` tunes them.
fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn);
    if let Ok(s) = std::env::var("RUST_LOG") {
        b.parse_filters(&s);
    }
    b.format(|buf, rec| {
        let level = match rec.level() {
            log::Level::Warn => "warning".to_string(),
            l => l.as_str().to_ascii_lowercase(),
        };
        writeln!(buf, "layerfs: {level}: {}", rec.args())
    });
    let _ = b.try_init();
}

fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Unpack(a) => {
            let mut paths = a.paths;
            let target = paths.pop().expect("clap requires two paths");
            let opts = UnpackOptions {
                whiteouts: a.whiteouts.parse::<WhiteoutMode>()?,
                flatten: a.flatten,
                diff_ids: false,
            };
            unpack::unpack(&paths, &target, &opts)
                .map_err(|e| e.context(format!("unpack into {}", target.display())))?;
            Ok(0)
        }
        Cmd::Diff(a) => {
            match a.output {
                Some(f) => {
                    let r = export::export_to_file(&a.upper, &f)
                        .map_err(|e| e.context(format!("diff {}", a.upper.display())))?;
                    println!("{}", r.diff_id);
                }
                None => {
                    if fsutil::is_tty(1) {
                        return Err(Error::new(
                            "refusing to write a tar to a terminal (use -o FILE or a pipe)",
                        ));
                    }
                    let stdout = io::stdout();
                    let r = export::export(&a.upper, stdout.lock())
                        .map_err(|e| e.context(format!("diff {}", a.upper.display())))?;
                    eprintln!("{}", r.diff_id);
                }
            }
            Ok(0)
        }
        Cmd::Digest(a) => {
            let mut ids = Vec::with_capacity(a.tars.len());
            let stdout = io::stdout();
            let mut out = stdout.lock();
            for t in &a.tars {
                let (d, _) = digest::diff_id_of_file(t)?;
                writeln!(out, "{d}  {}", t.display())?;
                ids.push(d);
            }
            if ids.len() > 1 {
                let c = digest::chain_ids(&ids);
                writeln!(out, "chainid: {}", c.last().expect("non-empty"))?;
            }
            Ok(0)
        }
        Cmd::Store(s) => {
            let root = s.root.unwrap_or_else(store::default_root);
            store_cmd(&root, s.cmd)
        }
    }
}

fn store_cmd(root: &std::path::Path, cmd: StoreCmd) -> Result<i32> {
    match cmd {
        StoreCmd::Import { parent, tars } => {
            let st = Store::open(root)?;
            let c = st.import(parent.as_deref(), &tars)?;
            println!("{c}");
            Ok(0)
        }
        StoreCmd::Ls => {
            let st = Store::open_existing(root)?;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            for l in st.list()? {
                writeln!(
                    out,
                    "{} {} {} {}",
                    l.chain_id,
                    l.diff_id,
                    l.parent.as_deref().unwrap_or("-"),
                    l.size
                )?;
            }
            Ok(0)
        }
        StoreCmd::Rm { chainid } => {
            Store::open_existing(root)?.remove(&chainid)?;
            Ok(0)
        }
        StoreCmd::Commit { upper, parent } => {
            let st = Store::open(root)?;
            let c = st.commit(&upper, parent.as_deref())?;
            println!("{c}");
            Ok(0)
        }
        StoreCmd::Mount { chainid, mountpoint, upper, work, extra } => {
            let args =
                store::mount_args(root, &chainid, &mountpoint, upper.as_deref(), work.as_deref(), &extra)?;
            let exe = std::env::current_exe()
                .map_err(|e| Error::new(format!("cannot find the layerfs executable: {e}")))?;
            let status = std::process::Command::new(&exe)
                .args(&args)
                .status()
                .map_err(|e| Error::new(format!("run {}: {e}", exe.display())))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
    }
}
