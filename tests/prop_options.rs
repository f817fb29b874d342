//! Property tests of the mount option parser: arbitrary input never panics, and any list of
//! layer paths survives escaping into `-o lowerdir=...` and parsing back.
use layerfs::config::{parse_argv, parse_options, split_layers, split_options};
use proptest::prelude::*;
use std::ffi::OsString;
use std::path::PathBuf;

fn escape(p: &str) -> String {
    let mut o = String::new();
    for c in p.chars() {
        if matches!(c, ':' | ',' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_option_strings_never_panic(s in "\\PC{0,80}", t in "[a-z=,:\\\\\"]{0,40}") {
        let _ = parse_options(std::slice::from_ref(&s));
        let _ = parse_options(&[t.clone(), s.clone()]);
        for e in split_options(&t) {
            prop_assert!(!e.is_empty());
        }
        let _ = split_layers(&s);
        let _ = parse_argv(&[OsString::from(&s), OsString::from(&t)]);
    }

    #[test]
    fn layer_paths_round_trip(paths in prop::collection::vec("/[a-zA-Z0-9 :,\\\\._-]{1,20}", 1..8)) {
        let joined: Vec<String> = paths.iter().map(|p| escape(p)).collect();
        let opt = format!("lowerdir={},upperdir={},workdir=/w", joined.join(":"), escape(&paths[0]));
        let o = parse_options(&[opt]).unwrap();
        let want: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        prop_assert_eq!(o.lowers, want);
        prop_assert_eq!(o.upper, Some(PathBuf::from(&paths[0])));
        prop_assert!(o.warnings.is_empty());
    }
}
