//! Path components and the reserved overlay names.
//!
//! A name that reaches the union code is always one path component: not empty, no `/`, no NUL,
//! not `.` or `..`, at most `NAME_MAX` bytes. Names beginning with `.wh.` are reserved: they are
//! whiteouts (`.wh.NAME`) or the opaque marker (`.wh..wh..opq`) in a layer, never visible in the
//! mount, and cannot be created through it (EINVAL, as fuse-overlayfs does).

/// The marker file that makes its directory opaque (OCI layer format, AUFS heritage).
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The prefix of a whiteout file.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Longest name a component may have.
pub const NAME_MAX: usize = 255;

/// Why a name was refused; maps to an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty, `.`, `..`, or contains `/` or NUL.
    Invalid,
    /// Longer than NAME_MAX.
    TooLong,
    /// Starts with `.wh.`: reserved for whiteouts.
    Reserved,
}

impl NameError {
    pub fn errno(self) -> i32 {
        match self {
            NameError::Invalid | NameError::Reserved => libc::EINVAL,
            NameError::TooLong => libc::ENAMETOOLONG,
        }
    }
}

/// Checks that `name` is a single valid component.
pub fn validate(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(NameError::Invalid);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// Checks a name for an object created through the mount: valid, and not reserved.
pub fn validate_new(name: &[u8]) -> Result<(), NameError> {
    validate(name)?;
    if is_reserved(name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// True for names the mount never shows: whiteouts and the opaque marker.
pub fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// `.wh.X` → `Some(X)`; the opaque marker and a bare `.wh.` give `None`.
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_MARKER {
        return None;
    }
    let t = name.strip_prefix(WH_PREFIX)?;
    if t.is_empty() || t == b"." || t == b".." { None } else { Some(t) }
}

/// `X` → `.wh.X`, or `None` when that would exceed NAME_MAX.
pub fn whiteout_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + WH_PREFIX.len() > NAME_MAX {
        return None;
    }
    let mut v = Vec::with_capacity(name.len() + 4);
    v.extend_from_slice(WH_PREFIX);
    v.extend_from_slice(name);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_components() {
        assert_eq!(validate(b"a"), Ok(()));
        assert_eq!(validate(b""), Err(NameError::Invalid));
        assert_eq!(validate(b"."), Err(NameError::Invalid));
        assert_eq!(validate(b".."), Err(NameError::Invalid));
        assert_eq!(validate(b"a/b"), Err(NameError::Invalid));
        assert_eq!(validate(b"a\0b"), Err(NameError::Invalid));
        assert_eq!(validate(&[b'x'; 255]), Ok(()));
        assert_eq!(validate(&[b'x'; 256]), Err(NameError::TooLong));
        assert_eq!(validate(b"..."), Ok(()));
    }

    #[test]
    fn reserved_names_cannot_be_created() {
        assert_eq!(validate_new(b".wh.x"), Err(NameError::Reserved));
        assert_eq!(validate_new(OPAQUE_MARKER), Err(NameError::Reserved));
        assert_eq!(validate_new(b".wh"), Ok(()));
        assert_eq!(validate_new(b"x.wh.y"), Ok(()));
        assert_eq!(NameError::Reserved.errno(), libc::EINVAL);
    }

    #[test]
    fn whiteout_targets() {
        assert_eq!(whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(whiteout_target(b".wh."), None);
        assert_eq!(whiteout_target(b".wh.."), None);
        assert_eq!(whiteout_target(b".wh..."), None);
        assert_eq!(whiteout_target(b"foo"), None);
        assert_eq!(whiteout_target(b".wh..hidden"), Some(&b".hidden"[..]));
        assert_eq!(whiteout_name(b"foo"), Some(b".wh.foo".to_vec()));
        assert_eq!(whiteout_name(&[b'x'; 252]), None);
        assert_eq!(whiteout_name(&[b'x'; 251]).map(|v| v.len()), Some(255));
    }
}
