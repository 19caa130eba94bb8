//! In-memory stand-ins for the host imports, used when a policy is compiled
//! natively (its unit tests). State is per thread, so each `#[test]` starts
//! empty: no pool has free addresses and nothing is logged.
//!
//! ```
//! use ohno_policy_sdk::{host, mock, Level};
//! mock::set_free("prod", vec!["10.85.0.9".parse().unwrap(), "10.85.0.3".parse().unwrap()]);
//! assert_eq!(host::next_free("prod", None), Some("10.85.0.3".parse().unwrap()));
//! assert_eq!(host::free_count("prod"), 2);
//! host::log(Level::Info, "hello");
//! assert_eq!(mock::logs(), vec![(Level::Info, "hello".to_string())]);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{IpAddress, Level};

#[derive(Default)]
struct State {
    free: BTreeMap<String, BTreeSet<IpAddr>>,
    logs: Vec<(Level, String)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Sets the free addresses of `pool` (any order; duplicates are merged).
pub fn set_free(pool: &str, free: Vec<IpAddr>) {
    STATE.with(|s| {
        s.borrow_mut()
            .free
            .insert(pool.to_string(), free.into_iter().collect());
    });
}

/// Every line logged so far on this thread, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    STATE.with(|s| s.borrow().logs.clone())
}

/// Forgets all pools and logs of this thread.
pub fn reset() {
    STATE.with(|s| *s.borrow_mut() = State::default());
}

pub(crate) fn log(level: Level, message: &str) {
    STATE.with(|s| s.borrow_mut().logs.push((level, message.to_string())));
}

pub(crate) fn next_free(pool: &str, after: Option<IpAddress>) -> Option<IpAddress> {
    let after = after.map(IpAddr::from);
    STATE.with(|s| {
        let s = s.borrow();
        let free = s.free.get(pool)?;
        // BTreeSet<IpAddr> orders all IPv4 before IPv6; a pool holds one family.
        let next = match after {
            Some(a) => free
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next(),
            None => free.iter().next(),
        };
        next.copied().map(IpAddress::from)
    })
}

pub(crate) fn is_free(pool: &str, address: IpAddress) -> bool {
    let address = IpAddr::from(address);
    STATE.with(|s| {
        s.borrow()
            .free
            .get(pool)
            .is_some_and(|f| f.contains(&address))
    })
}

pub(crate) fn free_count(pool: &str) -> u64 {
    STATE.with(|s| s.borrow().free.get(pool).map_or(0, |f| f.len() as u64))
}

#[cfg(test)]
mod tests {
    use crate::{host, mock, Level};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mocks_answer_like_the_host() {
        mock::set_free("p", vec![ip("10.0.0.7"), ip("10.0.0.3"), ip("10.0.0.5")]);
        assert_eq!(host::next_free("p", None), Some(ip("10.0.0.3")));
        assert_eq!(
            host::next_free("p", Some(ip("10.0.0.3"))),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            host::next_free("p", Some(ip("10.0.0.4"))),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(host::next_free("p", Some(ip("10.0.0.7"))), None);
        assert_eq!(host::next_free("unknown", None), None);
        assert!(host::is_free("p", ip("10.0.0.5")));
        assert!(!host::is_free("p", ip("10.0.0.4")));
        assert_eq!(host::free_count("p"), 3);
        assert_eq!(host::free_count("unknown"), 0);
        assert_eq!(
            host::free_addresses("p", 2),
            vec![ip("10.0.0.3"), ip("10.0.0.5")]
        );
        assert_eq!(host::free_addresses("p", 10).len(), 3);
        host::log(Level::Warn, "w");
        assert_eq!(mock::logs(), vec![(Level::Warn, "w".to_string())]);
        mock::reset();
        assert!(mock::logs().is_empty());
        assert_eq!(host::free_count("p"), 0);
    }
}
