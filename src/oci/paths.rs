//! Pure rules for layer entry paths: sanitising and whiteout classification.
//!
//! Hard parts:
//! - a layer is untrusted: absolute paths, `..` components and NUL bytes are
//!   refused (never "cleaned"), so a hostile entry cannot be turned into a
//!   different, valid one by accident;
//! - `./x`, `x/`, `a//b` and `a/./b` are harmless spellings and are
//!   normalised; `.` or `./` alone is the layer root (its attributes);
//! - whiteouts (OCI image-spec layer.md): `.wh.NAME` hides `NAME` of lower
//!   layers, `.wh..wh..opq` makes its directory opaque; a bare `.wh.`, a
//!   whiteout of `.` or `..`, and other `.wh..wh.` names (AUFS metadata) are
//!   invalid.
//!
//! A sanitised path is the normalised byte string (components joined by `/`,
//! empty for the root), so it can be used directly as a set key.

use std::fmt;

/// Prefix of whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix reserved for AUFS metadata (`.wh..wh.plnk` and friends).
pub const WH_META_PREFIX: &[u8] = b".wh..wh.";

/// Why an entry path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Nul,
    Absolute,
    DotDot,
    BareWhiteout,
    WhiteoutOfDot,
    ReservedWhiteout,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "empty path",
            PathError::Nul => "path contains a NUL byte",
            PathError::Absolute => "absolute path refused (layer paths must be relative)",
            PathError::DotDot => "path escapes the layer ('..' component refused)",
            PathError::BareWhiteout => "invalid whiteout: bare '.wh.' names nothing",
            PathError::WhiteoutOfDot => "invalid whiteout of '.' or '..'",
            PathError::ReservedWhiteout => "reserved '.wh..wh.' name refused (only '.wh..wh..opq' is valid)",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises an entry path or refuses it. Returns the components joined by
/// `/` (empty for the root directory).
pub fn sanitize(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    if raw[0] == b'/' {
        return Err(PathError::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a sanitised path into (parent, name). The root has no name.
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Joins a sanitised parent path and one component.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Components of a sanitised path (none for the root).
pub fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty())
}

/// Is `path` equal to `prefix` or beneath it? (sanitised paths)
pub fn is_within(path: &[u8], prefix: &[u8]) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/')
}

/// What a (sanitised) entry path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A regular entry at this path.
    Create,
    /// `.wh.NAME`: hide this path (parent/NAME) of lower layers.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: this directory hides everything of lower layers.
    Opaque(Vec<u8>),
}

/// Classifies a sanitised path.
pub fn classify(path: &[u8]) -> Result<Action, PathError> {
    let (parent, name) = split_last(path);
    if !name.starts_with(WH_PREFIX) {
        return Ok(Action::Create);
    }
    if name == WH_OPAQUE {
        return Ok(Action::Opaque(parent.to_vec()));
    }
    if name.starts_with(WH_META_PREFIX) {
        return Err(PathError::ReservedWhiteout);
    }
    match &name[WH_PREFIX.len()..] {
        b"" => Err(PathError::BareWhiteout),
        b"." | b".." => Err(PathError::WhiteoutOfDot),
        target => Ok(Action::Whiteout(join(parent, target))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_refuses_escapes() {
        assert_eq!(sanitize(b"../x"), Err(PathError::DotDot));
        assert_eq!(sanitize(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(sanitize(b"a/../../b"), Err(PathError::DotDot));
        assert_eq!(sanitize(b"a/.."), Err(PathError::DotDot));
        assert_eq!(sanitize(b"a/b/../c"), Err(PathError::DotDot));
        assert_eq!(sanitize(b"./../x"), Err(PathError::DotDot));
        assert_eq!(sanitize(b"//x"), Err(PathError::Absolute));
        assert_eq!(sanitize(b""), Err(PathError::Empty));
        assert_eq!(sanitize(b"a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn sanitize_normalises_harmless_forms() {
        assert_eq!(sanitize(b"./a").unwrap(), b"a");
        assert_eq!(sanitize(b".").unwrap(), b"");
        assert_eq!(sanitize(b"./").unwrap(), b"");
        assert_eq!(sanitize(b"a/").unwrap(), b"a");
        assert_eq!(sanitize(b"a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(sanitize(b"...").unwrap(), b"...");
        assert_eq!(sanitize(b"..a/b..").unwrap(), b"..a/b..");
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
        assert!(is_within(b"a/b", b"a"));
        assert!(is_within(b"a", b"a"));
        assert!(!is_within(b"ab", b"a"));
        assert!(is_within(b"x", b""));
    }

    #[test]
    fn classify_whiteouts() {
        assert_eq!(classify(b"etc/.wh.gone"), Ok(Action::Whiteout(b"etc/gone".to_vec())));
        assert_eq!(classify(b".wh.x"), Ok(Action::Whiteout(b"x".to_vec())));
        assert_eq!(classify(b"etc/keep/.wh..wh..opq"), Ok(Action::Opaque(b"etc/keep".to_vec())));
        assert_eq!(classify(b".wh..wh..opq"), Ok(Action::Opaque(Vec::new())));
        assert_eq!(classify(b"a/.wh."), Err(PathError::BareWhiteout));
        assert_eq!(classify(b".wh."), Err(PathError::BareWhiteout));
        assert_eq!(classify(b".wh.."), Err(PathError::WhiteoutOfDot));
        assert_eq!(classify(b"d/.wh..."), Err(PathError::WhiteoutOfDot));
        assert_eq!(classify(b".wh..wh.plnk"), Err(PathError::ReservedWhiteout));
        assert_eq!(classify(b"a/.wh.x"), Ok(Action::Whiteout(b"a/x".to_vec())));
        assert_eq!(classify(b"a/x.wh.y"), Ok(Action::Create));
        assert_eq!(classify(b"a/.whx"), Ok(Action::Create));
        assert_eq!(classify(b""), Ok(Action::Create));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn path_strategy() -> impl Strategy<Value = Vec<u8>> {
            let comp = prop_oneof![
                Just(b"..".to_vec()),
                Just(b".".to_vec()),
                Just(b"".to_vec()),
                Just(b".wh.".to_vec()),
                Just(b".wh..".to_vec()),
                Just(b".wh..wh..opq".to_vec()),
                "[a-z.]{1,4}".prop_map(|s| s.into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..6),
            ];
            (any::<bool>(), proptest::collection::vec(comp, 0..8)).prop_map(|(abs, comps)| {
                let mut v = if abs { b"/".to_vec() } else { Vec::new() };
                v.extend(comps.join(&b'/'));
                v
            })
        }

        proptest! {
            #[test]
            fn sanitized_paths_never_escape(raw in path_strategy()) {
                if let Ok(p) = sanitize(&raw) {
                    prop_assert!(!p.starts_with(b"/"));
                    prop_assert!(!p.contains(&0));
                    // Every component is a plain name: the path stays beneath
                    // the layer root whatever the depth.
                    if !p.is_empty() {
                        for c in p.split(|b| *b == b'/') {
                            prop_assert!(!c.is_empty());
                            prop_assert!(c != b"." && c != b"..");
                        }
                    }
                    // Sanitising is idempotent.
                    if !p.is_empty() {
                        prop_assert_eq!(sanitize(&p), Ok(p.clone()));
                    }
                    // Any whiteout target is a sanitised path too.
                    match classify(&p) {
                        Ok(Action::Whiteout(t)) => {
                            prop_assert!(!t.is_empty());
                            prop_assert_eq!(sanitize(&t), Ok(t.clone()));
                        }
                        Ok(Action::Opaque(d)) => prop_assert!(d.is_empty() || sanitize(&d) == Ok(d.clone())),
                        _ => {}
                    }
                } else {
                    prop_assert!(raw.is_empty() || raw[0] == b'/' || raw.contains(&0)
                        || raw.split(|b| *b == b'/').any(|c| c == b".."));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(p) = sanitize(&raw) {
                    let _ = classify(&p);
                }
            }
        }
    }
}
