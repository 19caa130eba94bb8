//! Version handling: `Version::parse` on any string, and `negotiate` on any
//! (`cniVersion`, `cniVersions`) pair. Never a panic; a parsed version prints
//! back to itself; negotiation only ever answers a supported version, the newest
//! one the list offers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ohno::cni::version::{negotiate, require_supported, Version, SUPPORTED};

fuzz_target!(|input: (String, Option<String>, Option<Vec<String>>)| {
    let (s, cni_version, cni_versions) = input;
    if let Some(v) = Version::parse(&s) {
        let printed = format!("{}.{}.{}", v.0, v.1, v.2);
        assert_eq!(Version::parse(&printed), Some(v), "{s:?}");
        let _ = v.is_legacy();
    }
    assert_eq!(
        require_supported(&s).is_ok(),
        SUPPORTED.contains(&s.as_str()),
        "{s:?}"
    );

    match negotiate(cni_version.as_deref(), cni_versions.as_deref()) {
        Ok(v) => {
            assert!(SUPPORTED.contains(&v.as_str()), "{v:?}");
            let newest_listed = cni_versions
                .iter()
                .flatten()
                .filter(|x| SUPPORTED.contains(&x.as_str()))
                .filter_map(|x| Version::parse(x))
                .max();
            match newest_listed {
                Some(best) => assert_eq!(Version::parse(&v), Some(best)),
                None => assert_eq!(Some(v.as_str()), cni_version.as_deref()),
            }
        }
        Err(e) => assert!(matches!(e.code(), 1 | 7), "{e}"),
    }
});
