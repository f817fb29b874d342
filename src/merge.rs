//! The union rules as pure functions (kernel `namei.c` and `readdir.c` semantics).
//!
//! Layers are always given top-down: the upper layer (if any) first, then the lowers in
//! `lowerdir=` order. Hard parts and where they are handled:
//! 1. A name resolves to the topmost layer that has it, but a directory keeps merging with the
//!    directories of the same name below until one of them is opaque, or a whiteout or a
//!    non-directory sits below it ([`Resolver`]).
//! 2. A whiteout hides the name in the layers *below* it only; in its own layer a real entry of
//!    the same name still shows (OCI layer.md). The probe of one layer folds both facts into one
//!    [`Probe`] (a dir next to its own `.wh.` is an opaque dir; a non-dir stops anyway).
//! 3. Listings merge upper-first; each name appears once; a whiteout hides the name in every
//!    layer below the one holding it ([`merge_listings`]).

use std::collections::{HashMap, HashSet};

/// What one layer holds under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Absent,
    Whiteout,
    NonDir,
    Dir { opaque: bool },
}

/// The outcome of resolving a name through the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing visible (absent everywhere, or whited out above anything present).
    Negative,
    /// A non-directory supplied by layer `layer`.
    NonDir { layer: usize },
    /// A directory; `layers` are the layers that merge, top-down.
    Dir { layers: Vec<usize> },
}

/// Incremental resolution, so a lookup can stop probing as soon as the answer is known.
#[derive(Debug, Default)]
pub struct Resolver {
    next: usize,
    dir_layers: Vec<usize>,
    result: Option<Resolution>,
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `n` layers known to be absent (no name, no whiteout) without probing them.
    pub fn skip_absent(&mut self, n: usize) {
        self.next += n;
    }

    /// Feeds the probe of the next layer down; returns false once no lower layer can matter.
    pub fn feed(&mut self, p: Probe) -> bool {
        let layer = self.next;
        self.next += 1;
        if self.result.is_some() {
            return false;
        }
        let have_dir = !self.dir_layers.is_empty();
        match p {
            Probe::Absent => true,
            Probe::Whiteout => {
                self.stop();
                false
            }
            Probe::NonDir => {
                if !have_dir {
                    self.result = Some(Resolution::NonDir { layer });
                } else {
                    self.stop();
                }
                false
            }
            Probe::Dir { opaque } => {
                self.dir_layers.push(layer);
                if opaque {
                    self.stop();
                    false
                } else {
                    true
                }
            }
        }
    }

    fn stop(&mut self) {
        if self.result.is_none() {
            self.result = Some(if self.dir_layers.is_empty() {
                Resolution::Negative
            } else {
                Resolution::Dir { layers: std::mem::take(&mut self.dir_layers) }
            });
        }
    }

    pub fn finish(mut self) -> Resolution {
        self.stop();
        self.result.unwrap_or(Resolution::Negative)
    }
}

/// Resolves a whole column of probes at once.
pub fn resolve(probes: &[Probe]) -> Resolution {
    let mut r = Resolver::new();
    for p in probes {
        if !r.feed(*p) {
            break;
        }
    }
    r.finish()
}

/// One item of a layer's listing, already classified by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListItem<T> {
    /// A visible-candidate entry with the caller's payload (kind, inode...).
    Entry(Vec<u8>, T),
    /// A whiteout for this name (0/0 char device, `.wh.NAME`, or xattr whiteout).
    Whiteout(Vec<u8>),
}

/// One visible entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged<T> {
    pub name: Vec<u8>,
    /// The layer index (in the caller's list) of the entry shown.
    pub layer: usize,
    pub payload: T,
    /// The first entry of the same name in a layer below it that no whiteout hides: where a
    /// directory shown continues (the caller checks both are directories and the top one is not
    /// opaque).
    pub below: Option<(usize, T)>,
}

/// Merges per-layer listings (top-down; the caller already cut the list below an opaque
/// directory) into the visible entries, each name once, in upper-first order.
pub fn merge_listings<T>(layers: Vec<Vec<ListItem<T>>>) -> Vec<Merged<T>> {
    // Name -> its index in `out`, and whether an entry below it was recorded or hidden.
    let mut seen: HashMap<Vec<u8>, (usize, bool)> = HashMap::new();
    let mut hidden: HashSet<Vec<u8>> = HashSet::new();
    let mut out: Vec<Merged<T>> = Vec::new();
    for (li, items) in layers.into_iter().enumerate() {
        let mut whiteouts = Vec::new();
        for item in items {
            match item {
                ListItem::Whiteout(n) => whiteouts.push(n),
                ListItem::Entry(n, payload) => {
                    if hidden.contains(&n) {
                        continue;
                    }
                    if let Some((i, done)) = seen.get_mut(&n) {
                        if !*done {
                            out[*i].below = Some((li, payload));
                            *done = true;
                        }
                        continue;
                    }
                    seen.insert(n.clone(), (out.len(), false));
                    out.push(Merged { name: n, layer: li, payload, below: None });
                }
            }
        }
        hidden.extend(whiteouts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Probe::*;

    #[test]
    fn topmost_non_dir_wins() {
        assert_eq!(resolve(&[Absent, NonDir, NonDir]), Resolution::NonDir { layer: 1 });
        assert_eq!(resolve(&[NonDir, Dir { opaque: false }]), Resolution::NonDir { layer: 0 });
    }

    #[test]
    fn upper_whiteout_hides_lower_file() {
        assert_eq!(resolve(&[Whiteout, NonDir]), Resolution::Negative);
        assert_eq!(resolve(&[Absent, Whiteout, NonDir]), Resolution::Negative);
        assert_eq!(resolve(&[Absent, Absent]), Resolution::Negative);
        assert_eq!(resolve(&[]), Resolution::Negative);
    }

    #[test]
    fn dirs_merge_until_opaque_or_non_dir_or_whiteout() {
        let d = Dir { opaque: false };
        let o = Dir { opaque: true };
        assert_eq!(resolve(&[d, Absent, d]), Resolution::Dir { layers: vec![0, 2] });
        assert_eq!(resolve(&[d, o, d]), Resolution::Dir { layers: vec![0, 1] });
        assert_eq!(resolve(&[o, d]), Resolution::Dir { layers: vec![0] });
        assert_eq!(resolve(&[d, NonDir, d]), Resolution::Dir { layers: vec![0] });
        assert_eq!(resolve(&[d, Whiteout, d]), Resolution::Dir { layers: vec![0] });
        assert_eq!(resolve(&[Absent, d, d, d]), Resolution::Dir { layers: vec![1, 2, 3] });
    }

    #[test]
    fn file_in_upper_lower_hides_dir_below() {
        assert_eq!(resolve(&[Absent, NonDir, Dir { opaque: false }]), Resolution::NonDir { layer: 1 });
    }

    #[test]
    fn skipped_layers_count_as_absent() {
        let mut r = Resolver::new();
        assert!(r.feed(Absent));
        r.skip_absent(3);
        assert!(r.feed(Dir { opaque: false }));
        assert!(!r.feed(Dir { opaque: true }));
        assert_eq!(r.finish(), Resolution::Dir { layers: vec![4, 5] });
    }

    #[test]
    fn resolver_stops_early() {
        let mut r = Resolver::new();
        assert!(r.feed(Absent));
        assert!(!r.feed(NonDir));
        assert!(!r.feed(Dir { opaque: false }));
        assert_eq!(r.finish(), Resolution::NonDir { layer: 1 });
    }

    fn e(n: &str) -> ListItem<()> {
        ListItem::Entry(n.as_bytes().to_vec(), ())
    }
    fn w(n: &str) -> ListItem<()> {
        ListItem::Whiteout(n.as_bytes().to_vec())
    }
    fn names(v: Vec<Merged<()>>) -> Vec<(String, usize)> {
        v.into_iter().map(|m| (String::from_utf8(m.name).unwrap(), m.layer)).collect()
    }

    #[test]
    fn listings_merge_upper_first_once_each() {
        let m = merge_listings(vec![vec![e("a"), e("b")], vec![e("b"), e("c")]]);
        assert_eq!(names(m), vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 1)]);
    }

    #[test]
    fn whiteouts_hide_below_only() {
        // Layer 0 whites out `x` and also has `y` plus a whiteout for `y`: `y` shows (same layer).
        let m = merge_listings(vec![vec![w("x"), e("y"), w("y")], vec![e("x"), e("y"), e("z")]]);
        assert_eq!(names(m), vec![("y".into(), 0), ("z".into(), 1)]);
        // A whiteout in the middle layer hides the bottom copy.
        let m = merge_listings(vec![vec![], vec![w("z")], vec![e("z")]]);
        assert!(m.is_empty());
        // A whiteout below an entry does not hide it.
        let m = merge_listings(vec![vec![e("q")], vec![w("q")]]);
        assert_eq!(names(m), vec![("q".into(), 0)]);
    }

    #[test]
    fn the_entry_below_is_the_first_no_whiteout_hides() {
        let p = |n: &str, v: u8| ListItem::Entry(n.as_bytes().to_vec(), v);
        let m = merge_listings(vec![
            vec![p("a", 0), p("b", 0), p("c", 0), p("d", 0), ListItem::Whiteout(b"d".to_vec())],
            vec![p("b", 1), ListItem::Whiteout(b"c".to_vec()), p("d", 1)],
            vec![p("b", 2), p("c", 2)],
        ]);
        let below: Vec<_> =
            m.iter().map(|m| (String::from_utf8_lossy(&m.name).to_string(), m.below)).collect();
        assert_eq!(
            below,
            vec![("a".into(), None), ("b".into(), Some((1, 1))), ("c".into(), None), ("d".into(), None)]
        );
    }
}
