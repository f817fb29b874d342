//! The "override stat" xattr of fuse-overlayfs and containers-storage (pure parsing and
//! formatting).
//!
//! Where the real owner, mode or file type cannot be stored (a rootless server cannot chown or
//! mknod a device), they are kept in an xattr on the real object instead:
//! `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`),
//! `user.containers.override_stat` (`xattr_permissions=2`, and what containers-storage writes
//! into layers it extracts with `force_mask`), or `user.fuseoverlayfs.override_stat` (older
//! fuse-overlayfs). The value is `uid:gid:mode[:type]`: decimal ids, octal mode with the
//! setuid/setgid/sticky bits, and a type among `file`, `dir`, `symlink`, `pipe`, `socket`,
//! `block-MAJ-MIN`, `char-MAJ-MIN`. Without a type the real object's type stands (a mode that
//! carries `S_IFMT` bits, as fuse-overlayfs writes it, gives the type by those bits).

use std::ffi::CStr;

/// `xattr_permissions=1`.
pub const PRIVILEGED: &CStr = c"security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2`, containers-storage.
pub const CONTAINERS: &CStr = c"user.containers.override_stat";
/// Older fuse-overlayfs (`=2` reads it where the containers name is missing).
pub const USER: &CStr = c"user.fuseoverlayfs.override_stat";
/// In the order fuse-overlayfs checks a layer root for them.
pub const NAMES: [&CStr; 3] = [PRIVILEGED, CONTAINERS, USER];

/// True for any of the three names (hidden and read-only through the mount).
pub fn is_override_xattr(name: &[u8]) -> bool {
    NAMES.iter().any(|n| n.to_bytes() == name)
}

/// The file type an override gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Pipe,
    Socket,
    Block(u32, u32),
    Char(u32, u32),
}

impl Kind {
    /// The `S_IFMT` bits.
    pub fn fmt(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Pipe => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::Block(..) => libc::S_IFBLK,
            Kind::Char(..) => libc::S_IFCHR,
        }
    }

    /// The device number (0 for non-devices).
    pub fn rdev(self) -> u64 {
        match self {
            Kind::Block(a, b) | Kind::Char(a, b) => libc::makedev(a, b),
            _ => 0,
        }
    }

    /// From `S_IFMT` bits and a device number; None for 0 or an unknown type.
    pub fn from_mode(mode: u32, rdev: u64) -> Option<Kind> {
        let (ma, mi) = (libc::major(rdev), libc::minor(rdev));
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Pipe,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK => Kind::Block(ma, mi),
            libc::S_IFCHR => Kind::Char(ma, mi),
            _ => return None,
        })
    }
}

/// One override value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky (`& 0o7777`).
    pub perm: u32,
    /// None: the real object's type.
    pub kind: Option<Kind>,
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let s = s.trim_start_matches('-');
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses a value; the error says what is wrong with it.
pub fn parse(v: &[u8]) -> Result<Override, String> {
    let s = std::str::from_utf8(v).map_err(|_| "not UTF-8".to_string())?;
    // Tolerate a trailing NUL or newline (some writers include one).
    let s = s.trim_end_matches(['\0', '\n']);
    let mut it = s.splitn(4, ':');
    let uid = it.next().unwrap_or("");
    let gid = it.next().ok_or_else(|| format!("{s:?}: want uid:gid:mode[:type]"))?;
    let mode = it.next().ok_or_else(|| format!("{s:?}: want uid:gid:mode[:type]"))?;
    let uid: u32 = uid.parse().map_err(|_| format!("{s:?}: bad uid {uid:?}"))?;
    let gid: u32 = gid.parse().map_err(|_| format!("{s:?}: bad gid {gid:?}"))?;
    let mode_n = u32::from_str_radix(mode, 8).map_err(|_| format!("{s:?}: bad octal mode {mode:?}"))?;
    if mode_n & !(0o7777 | libc::S_IFMT) != 0 {
        return Err(format!("{s:?}: mode {mode:?} out of range"));
    }
    let kind = match it.next() {
        None => {
            if mode_n & libc::S_IFMT == 0 {
                None
            } else {
                Some(Kind::from_mode(mode_n, 0).ok_or_else(|| format!("{s:?}: bad type bits in mode"))?)
            }
        }
        Some(t) => Some(match t {
            "file" => Kind::File,
            "dir" => Kind::Dir,
            "symlink" => Kind::Symlink,
            "pipe" => Kind::Pipe,
            "socket" => Kind::Socket,
            _ => {
                let bad = || format!("{s:?}: bad type {t:?}");
                if let Some(d) = t.strip_prefix("block") {
                    let (a, b) = parse_dev(d).ok_or_else(bad)?;
                    Kind::Block(a, b)
                } else if let Some(d) = t.strip_prefix("char") {
                    let (a, b) = parse_dev(d).ok_or_else(bad)?;
                    Kind::Char(a, b)
                } else {
                    return Err(bad());
                }
            }
        }),
    };
    Ok(Override { uid, gid, perm: mode_n & 0o7777, kind })
}

/// The value as containers-storage writes it: `uid:gid:MODE:type` (mode as 4 octal digits).
pub fn format(o: &Override) -> String {
    let t = match o.kind {
        None => return format!("{}:{}:{:04o}", o.uid, o.gid, o.perm),
        Some(Kind::File) => "file".to_string(),
        Some(Kind::Dir) => "dir".to_string(),
        Some(Kind::Symlink) => "symlink".to_string(),
        Some(Kind::Pipe) => "pipe".to_string(),
        Some(Kind::Socket) => "socket".to_string(),
        Some(Kind::Block(a, b)) => format!("block-{a}-{b}"),
        Some(Kind::Char(a, b)) => format!("char-{a}-{b}"),
    };
    format!("{}:{}:{:04o}:{t}", o.uid, o.gid, o.perm)
}

/// What a stat of the real object shows once the override is applied: `(mode, uid, gid, rdev)`.
/// Owner and permissions apply to any object that carries an override (fuse-overlayfs reads
/// them on regular files and directories only; layerfs records them on fifos, sockets,
/// symlinks and devices too, where the xattr can be set). A type is taken where it fits the
/// real object: a regular file may stand for a device, FIFO or socket (a symlink or directory
/// type on it is ignored, since the data it would need is not there); anything else keeps its
/// own type, and a symlink its 0777.
pub fn apply(o: &Override, real_mode: u32, real_rdev: u64) -> Option<(u32, u32, u32, u64)> {
    let fmt = real_mode & libc::S_IFMT;
    let (fmt, rdev) = match o.kind {
        Some(k) if fmt == libc::S_IFREG && !matches!(k, Kind::Dir | Kind::Symlink) => (k.fmt(), k.rdev()),
        _ => (fmt, real_rdev),
    };
    // Any other object keeps its type; a symlink's mode is always 0777.
    let perm = if fmt == libc::S_IFLNK { 0o777 } else { o.perm };
    Some((fmt | perm, o.uid, o.gid, rdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for o in [
            Override { uid: 0, gid: 0, perm: 0o755, kind: Some(Kind::Dir) },
            Override { uid: 1000, gid: 100, perm: 0o4755, kind: Some(Kind::File) },
            Override { uid: 7, gid: 8, perm: 0o1777, kind: Some(Kind::Symlink) },
            Override { uid: 0, gid: 5, perm: 0o620, kind: Some(Kind::Char(136, 3)) },
            Override { uid: 0, gid: 6, perm: 0o660, kind: Some(Kind::Block(8, 0)) },
            Override { uid: 1, gid: 1, perm: 0o644, kind: Some(Kind::Pipe) },
            Override { uid: 1, gid: 1, perm: 0o755, kind: Some(Kind::Socket) },
            Override { uid: 4294967294, gid: 65534, perm: 0o2750, kind: None },
        ] {
            let s = format(&o);
            assert_eq!(parse(s.as_bytes()), Ok(o), "{s}");
        }
        assert_eq!(
            format(&Override { uid: 0, gid: 5, perm: 0o620, kind: Some(Kind::Char(1, 3)) }),
            "0:5:0620:char-1-3"
        );
        assert_eq!(format(&Override { uid: 3, gid: 4, perm: 0o7, kind: None }), "3:4:0007");
    }

    #[test]
    fn reads_what_others_write() {
        // containers-storage (idtools.go), with 3 fields, and fuse-overlayfs' "%o" of a full mode.
        assert_eq!(
            parse(b"0:0:0666:char-1-3").unwrap(),
            Override { uid: 0, gid: 0, perm: 0o666, kind: Some(Kind::Char(1, 3)) }
        );
        assert_eq!(
            parse(b"1000:1000:755").unwrap(),
            Override { uid: 1000, gid: 1000, perm: 0o755, kind: None }
        );
        assert_eq!(parse(b"0:0:20644").unwrap().kind, Some(Kind::Char(0, 0)));
        assert_eq!(parse(b"0:0:40755").unwrap().kind, Some(Kind::Dir));
        assert_eq!(parse(b"5:6:644\n").unwrap().perm, 0o644);
        assert_eq!(parse(b"0:0:0660:block--8-1").unwrap().kind, Some(Kind::Block(8, 1)));
    }

    #[test]
    fn rejects_bad_values_with_a_reason() {
        for (v, why) in [
            (&b"1000:1000"[..], "want uid:gid:mode"),
            (b"abc:0:644", "bad uid"),
            (b"0:-1:644", "bad gid"),
            (b"0:0:9", "bad octal mode"),
            (b"0:0:17777777", "out of range"),
            (b"0:0:644:bogus", "bad type"),
            (b"0:0:644:char-1", "bad type"),
            (b"0:0:644:block-x-1", "bad type"),
            (b"", "want uid:gid:mode"),
            (b"\xff:0:644", "not UTF-8"),
        ] {
            let e = parse(v).unwrap_err();
            assert!(e.contains(why), "{v:?}: {e}");
        }
    }

    #[test]
    fn applies_to_files_and_dirs_only() {
        let o = Override { uid: 1, gid: 2, perm: 0o4711, kind: None };
        assert_eq!(apply(&o, libc::S_IFREG | 0o600, 0), Some((libc::S_IFREG | 0o4711, 1, 2, 0)));
        assert_eq!(apply(&o, libc::S_IFDIR | 0o700, 0), Some((libc::S_IFDIR | 0o4711, 1, 2, 0)));
        assert_eq!(apply(&o, libc::S_IFLNK | 0o777, 0), Some((libc::S_IFLNK | 0o777, 1, 2, 0)));
        assert_eq!(apply(&o, libc::S_IFCHR | 0o600, 5), Some((libc::S_IFCHR | 0o4711, 1, 2, 5)));
        assert_eq!(apply(&o, libc::S_IFIFO | 0o644, 0), Some((libc::S_IFIFO | 0o4711, 1, 2, 0)));
        let dev = Override { uid: 0, gid: 0, perm: 0o666, kind: Some(Kind::Char(1, 3)) };
        assert_eq!(
            apply(&dev, libc::S_IFREG | 0o600, 0),
            Some((libc::S_IFCHR | 0o666, 0, 0, libc::makedev(1, 3)))
        );
        // A device type on a real directory, or a directory type on a file, is not taken.
        assert_eq!(apply(&dev, libc::S_IFDIR | 0o700, 0).unwrap().0, libc::S_IFDIR | 0o666);
        let d = Override { kind: Some(Kind::Dir), ..dev };
        assert_eq!(apply(&d, libc::S_IFREG | 0o600, 0).unwrap().0, libc::S_IFREG | 0o666);
    }

    #[test]
    fn names() {
        assert!(is_override_xattr(b"user.containers.override_stat"));
        assert!(is_override_xattr(b"security.fuseoverlayfs.override_stat"));
        assert!(is_override_xattr(b"user.fuseoverlayfs.override_stat"));
        assert!(!is_override_xattr(b"user.containers.override_stat2"));
        assert!(!is_override_xattr(b"user.other"));
    }
}
