//! `layerfs store`: a content-addressed layer store, laid out like Docker's
//! layerdb:
//!
//! ```text
//! ROOT/layerdb/sha256/<chainid-hex>/{diff,size,cache-id,parent}
//! ROOT/layers/<cache-id>/          (the unpacked layer, whiteouts in auto form)
//! ROOT/tmp/                        (staging; same filesystem, so renames commit)
//! ROOT/lock                        (flock: one writer at a time)
//! ```
//!
//! Hard parts:
//! - **Commit by rename.** Layer content is unpacked into a temporary sibling
//!   and renamed into `layers/<cache-id>`; the metadata directory is written
//!   under `tmp/` and renamed into `layerdb/sha256/<chainid>` last, so a
//!   layer is either fully present or absent. A crash or a signal can leave
//!   content no metadata names (`layers/<cache-id>`, an unpack's `.tmp-`
//!   sibling) and staging under `tmp/`; the next writer sweeps them away
//!   under the lock, where no other writer can be under way.
//! - **Sharing.** The ChainID is known before unpacking (a digest pass), so a
//!   layer already present (same parent chain, same DiffID) is not stored
//!   twice; the unpack's own DiffID is checked against the first pass.
//! - **Untrusted names.** ChainIDs given on the command line and cache-ids
//!   read from disk are validated as 64 hex digits before they are used in
//!   paths.
//! - **Dependencies.** `rm` refuses a layer that is another layer's parent.
//! - **Mount.** The lowerdir list is top first; `\`, `:` and `,` in paths are
//!   escaped with a backslash.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::digest::{self, hex_of, parse_digest};
use super::error::{Context, Error, Result};
use super::fsutil;
use super::unpack::{self, UnpackOptions, WhiteoutMode, random_hex};

/// The default store root: `$LAYERFS_STORE` or `/var/lib/layerfs`.
pub fn default_root() -> PathBuf {
    std::env::var_os("LAYERFS_STORE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/layerfs"))
}

/// One stored layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    pub cache_id: String,
}

pub struct Store {
    root: PathBuf,
}

fn valid_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn read_trim(p: &Path) -> Result<String> {
    Ok(fs::read_to_string(p).ctx(|| format!("read {}", p.display()))?.trim().to_string())
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        let root = std::path::absolute(root).ctx(|| format!("store root {}", root.display()))?;
        for d in ["layerdb/sha256", "layers", "tmp"] {
            fs::create_dir_all(root.join(d)).ctx(|| format!("create {}", root.join(d).display()))?;
        }
        Ok(Store { root })
    }

    /// Opens an existing store without creating anything.
    pub fn open_existing(root: &Path) -> Result<Store> {
        let root = std::path::absolute(root).ctx(|| format!("store root {}", root.display()))?;
        if !root.join("layerdb/sha256").is_dir() {
            return Err(Error::new(format!("no layer store at {}", root.display())));
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the writers' lock, then sweeps away what a writer cut short left ([`Store::sweep`]).
    fn lock(&self) -> Result<File> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx(|| format!("open {}", p.display()))?;
        fsutil::flock_exclusive(&f).ctx(|| format!("lock {}", p.display()))?;
        self.sweep();
        Ok(f)
    }

    /// Removes what a writer (import, commit, `rm`) cut short by a crash or a signal left:
    /// entries of `layers/` that no layer's metadata names (content whose metadata was never
    /// written, an unpack's `.tmp-` staging directory, content whose metadata an `rm` had
    /// moved away) and everything in `tmp/`. Every writer holds the lock from before it
    /// writes there, so with the lock held none of these is in use. Nothing is removed
    /// when a layer's metadata cannot be read (its content cannot be told from leftovers).
    fn sweep(&self) {
        let named: std::collections::HashSet<String> = match self.list() {
            Ok(layers) => layers.into_iter().map(|l| l.cache_id).collect(),
            Err(e) => {
                log::warn!("store: leftovers not swept: {e}");
                return;
            }
        };
        for dir in ["layers", "tmp"] {
            let d = self.root.join(dir);
            let Ok(entries) = fs::read_dir(&d) else { continue };
            for ent in entries.flatten() {
                let name = ent.file_name();
                if dir == "layers" && name.to_str().is_some_and(|n| named.contains(n)) {
                    continue;
                }
                let p = d.join(&name);
                match remove_path(&p) {
                    Ok(()) => log::info!("store: removed {}, left by an interrupted writer", p.display()),
                    Err(e) => log::warn!("store: cannot remove the leftover {}: {e}", p.display()),
                }
            }
        }
    }

    fn meta_dir(&self, chain_id: &str) -> PathBuf {
        self.root.join("layerdb/sha256").join(hex_of(chain_id))
    }

    pub fn exists(&self, chain_id: &str) -> bool {
        self.meta_dir(chain_id).join("diff").is_file()
    }

    /// Reads one layer's metadata.
    pub fn get(&self, chain_id: &str) -> Result<LayerInfo> {
        let chain_id = parse_digest(chain_id)?;
        let d = self.meta_dir(&chain_id);
        if !d.is_dir() {
            return Err(Error::new(format!("no layer {chain_id} in the store")));
        }
        let diff_id = parse_digest(&read_trim(&d.join("diff"))?).ctx(|| format!("layer {chain_id}: diff"))?;
        let size = read_trim(&d.join("size"))?
            .parse::<u64>()
            .map_err(|_| Error::new(format!("layer {chain_id}: bad size file")))?;
        let cache_id = read_trim(&d.join("cache-id"))?;
        if !valid_hex64(&cache_id) {
            return Err(Error::new(format!("layer {chain_id}: bad cache-id {cache_id:?}")));
        }
        let parent = match fs::read_to_string(d.join("parent")) {
            Ok(s) => Some(parse_digest(s.trim()).ctx(|| format!("layer {chain_id}: parent"))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::from(e).context(format!("layer {chain_id}: parent"))),
        };
        Ok(LayerInfo { chain_id, diff_id, parent, size, cache_id })
    }

    /// All layers, sorted by ChainID.
    pub fn list(&self) -> Result<Vec<LayerInfo>> {
        let dir = self.root.join("layerdb/sha256");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
            let ent = ent?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !valid_hex64(&name) {
                continue;
            }
            match self.get(&name) {
                Ok(info) => out.push(info),
                // Removed meanwhile (`rm` renames its entry away first, under the lock that
                // listing does not take).
                Err(_) if !self.meta_dir(&name).exists() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        Ok(out)
    }

    /// Imports a chain of layer tars (bottom first) on top of `parent`;
    /// returns the top ChainID.
    pub fn import(&self, parent: Option<&str>, tars: &[PathBuf]) -> Result<String> {
        if tars.is_empty() {
            return Err(Error::new("no layer tar given"));
        }
        let _lock = self.lock()?;
        self.import_locked(parent, tars)
    }

    /// [`Store::import`] for a caller that holds the lock.
    fn import_locked(&self, parent: Option<&str>, tars: &[PathBuf]) -> Result<String> {
        // The parent is checked under the lock: an `rm` of it between the check and the
        // import left the new layer on a removed parent.
        let mut parent = parent.map(parse_digest).transpose()?;
        if let Some(p) = parent.as_ref().filter(|p| !self.exists(p)) {
            return Err(Error::new(format!("parent layer {p} is not in the store")));
        }
        for tar in tars {
            let c = self.import_one(parent.as_deref(), tar).ctx(|| format!("import {}", tar.display()))?;
            parent = Some(c);
        }
        Ok(parent.expect("at least one layer"))
    }

    /// Imports one layer; the caller holds the lock.
    fn import_one(&self, parent: Option<&str>, tar: &Path) -> Result<String> {
        // A file is hashed first, so a layer already present is not unpacked again; standard
        // input can be read once only, so it is unpacked and its DiffID taken from that.
        let stdin = tar.as_os_str() == "-";
        let known = if stdin {
            None
        } else {
            let (diff_id, _) = digest::diff_id_of_file(tar)?;
            let chain_id = digest::chain_id(parent, &diff_id);
            if self.exists(&chain_id) {
                log::info!("layer {chain_id} already present");
                return Ok(chain_id);
            }
            Some(diff_id)
        };
        let cache_id = random_hex(32);
        let content = self.root.join("layers").join(&cache_id);
        let opts = UnpackOptions { whiteouts: WhiteoutMode::Auto, flatten: false, diff_ids: true };
        let rep = unpack::unpack(&[tar.to_path_buf()], &content, &opts)?;
        let cleanup = |e: Error| -> Error {
            let _ = remove_path(&content);
            e
        };
        let diff_id = rep.diff_ids[0].clone();
        if let Some(before) = known.filter(|d| *d != diff_id) {
            return Err(cleanup(Error::new(format!(
                "layer changed while importing (DiffID {before} then {diff_id})"
            ))));
        }
        let chain_id = digest::chain_id(parent, &diff_id);
        if self.exists(&chain_id) {
            log::info!("layer {chain_id} already present");
            let _ = remove_path(&content);
            return Ok(chain_id);
        }
        let size = dir_size(&content).map_err(cleanup)?;
        self.write_meta(&chain_id, &diff_id, parent, size, &cache_id).map_err(cleanup)?;
        Ok(chain_id)
    }

    fn write_meta(
        &self,
        chain_id: &str,
        diff_id: &str,
        parent: Option<&str>,
        size: u64,
        cache_id: &str,
    ) -> Result<()> {
        let tmp = self.root.join("tmp").join(format!("meta-{}", random_hex(8)));
        fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let res = (|| -> Result<()> {
            fs::write(tmp.join("diff"), diff_id)?;
            fs::write(tmp.join("size"), size.to_string())?;
            fs::write(tmp.join("cache-id"), cache_id)?;
            if let Some(p) = parent {
                fs::write(tmp.join("parent"), p)?;
            }
            fs::rename(&tmp, self.meta_dir(chain_id)).ctx(|| format!("commit layer {chain_id}"))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        res
    }

    /// Removes a layer nobody depends on.
    pub fn remove(&self, chain_id: &str) -> Result<()> {
        let chain_id = parse_digest(chain_id)?;
        let _lock = self.lock()?;
        let info = self.get(&chain_id)?;
        let children: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|l| l.parent.as_deref() == Some(chain_id.as_str()))
            .map(|l| l.chain_id)
            .collect();
        if !children.is_empty() {
            return Err(Error::new(format!(
                "layer {chain_id} is the parent of {} (remove {} first)",
                children.join(", "),
                if children.len() == 1 { "it" } else { "them" }
            )));
        }
        let tmp = self.root.join("tmp").join(format!("rm-{}", random_hex(8)));
        fs::rename(self.meta_dir(&chain_id), &tmp).ctx(|| format!("remove layer {chain_id}"))?;
        remove_path(&self.root.join("layers").join(&info.cache_id))
            .ctx(|| format!("remove content of {chain_id}"))?;
        remove_path(&tmp).ctx(|| format!("remove {}", tmp.display()))?;
        Ok(())
    }

    /// Adds an upper directory as a new layer on top of `parent` (diff, then
    /// import, so the stored content is normalised).
    /// The lock is held from before the tar is written in `tmp/`, so a sweep never takes it.
    pub fn commit(&self, upper: &Path, parent: Option<&str>) -> Result<String> {
        let _lock = self.lock()?;
        if let Some(p) = parent {
            let p = parse_digest(p)?;
            if !self.exists(&p) {
                return Err(Error::new(format!("parent layer {p} is not in the store")));
            }
        }
        let tmp = self.root.join("tmp").join(format!("commit-{}.tar", random_hex(8)));
        let res = super::export::export_to_file(upper, &tmp)
            .and_then(|_| self.import_locked(parent, std::slice::from_ref(&tmp)));
        let _ = fs::remove_file(&tmp);
        res
    }

    /// Layer directories of the chain ending at `chain_id`, top first.
    pub fn lowerdirs(&self, chain_id: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut cur = Some(parse_digest(chain_id)?);
        while let Some(c) = cur {
            if out.len() > 4096 {
                return Err(Error::new("layer chain too long (a parent loop?)"));
            }
            let info = self.get(&c)?;
            out.push(self.root.join("layers").join(&info.cache_id));
            cur = info.parent;
        }
        Ok(out)
    }
}

/// Layer directories of `chainid`'s chain in the store at `root`, top first
/// (the `lowerdir=` order).
pub fn lowerdirs_for(root: &Path, chainid: &str) -> Result<Vec<PathBuf>> {
    Store::open_existing(root)?.lowerdirs(chainid)
}

/// Escapes `\`, `:` and `,` with a backslash for a mount option value.
pub fn escape_opt_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The arguments (after the program name) of the mount command for a layer.
pub fn mount_args(
    root: &Path,
    chainid: &str,
    mountpoint: &Path,
    upper: Option<&Path>,
    work: Option<&Path>,
    extra: &[OsString],
) -> Result<Vec<OsString>> {
    let lowers = lowerdirs_for(root, chainid)?;
    let mut opt = String::from("lowerdir=");
    opt.push_str(&lowers.iter().map(|p| escape_opt_path(p)).collect::<Vec<_>>().join(":"));
    match (upper, work) {
        (Some(u), Some(w)) => {
            let u = std::path::absolute(u)?;
            let w = std::path::absolute(w)?;
            opt.push_str(&format!(",upperdir={},workdir={}", escape_opt_path(&u), escape_opt_path(&w)));
        }
        (None, None) => {}
        _ => return Err(Error::new("--upper and --work go together")),
    }
    let mut args: Vec<OsString> = vec!["-o".into(), opt.into()];
    args.extend(extra.iter().cloned());
    args.push(mountpoint.as_os_str().to_owned());
    Ok(args)
}

/// Removes a path recursively without following symlinks.
pub fn remove_path(p: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = p.file_name().ok_or_else(|| Error::new(format!("cannot remove {}", p.display())))?;
    let dfd = fsutil::open_dir_path(parent)?;
    unpack::remove_all(dfd.as_fd(), name.as_bytes())?;
    Ok(())
}

/// Sum of the sizes of all non-directories under `p`, each inode once.
pub fn dir_size(p: &Path) -> Result<u64> {
    let fd = fsutil::open_dir_path(p).ctx(|| format!("open {}", p.display()))?;
    let mut seen = std::collections::HashSet::new();
    fn walk(fd: &std::os::fd::OwnedFd, seen: &mut std::collections::HashSet<(u64, u64)>) -> io::Result<u64> {
        let mut total = 0;
        for ent in fsutil::read_dir(fd.as_fd())? {
            let st = fsutil::stat_at(fd.as_fd(), &ent.name)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                let c = fsutil::open_dir_at(fd.as_fd(), &ent.name)?;
                total += walk(&c, seen)?;
            } else if st.st_nlink <= 1 || seen.insert((st.st_dev, st.st_ino)) {
                total += st.st_size as u64;
            }
        }
        Ok(total)
    }
    walk(&fd, &mut seen).ctx(|| format!("size of {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_opt_path(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
        assert_eq!(escape_opt_path(Path::new("/plain")), "/plain");
    }

    #[test]
    fn hex_validation() {
        assert!(valid_hex64(&"a".repeat(64)));
        assert!(!valid_hex64("../../x"));
        assert!(!valid_hex64(&"A".repeat(64)));
    }
}
