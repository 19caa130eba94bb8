//! The pure part of the node clean-up: the agent's view of Kubernetes Nodes
//! (a complete list, then the watch's events) and which of Ohno's nodes are
//! due to be re-checked and released. No I/O: values in, values out.
//!
//! Calico's rule: never release on a partial view. A node is due only when
//! - the view is whole (a complete list, and a watch following it without a
//!   gap since),
//! - the node has been absent from that view for the whole grace period,
//! - its agent has not confirmed its record (`seen`) within the grace
//!   period either (an agent still running says its node exists),
//! - it is not this agent's own node.
//!
//! A due node is then asked for once more by name (a 404 from the API, not
//! the view, releases it): see `super::sweep`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// One change of the Nodes the API reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Added {
        name: String,
        rv: String,
    },
    Modified {
        name: String,
        rv: String,
    },
    Deleted {
        name: String,
        rv: String,
    },
    /// Nothing changed up to `rv` (a watch bookmark).
    Bookmark {
        rv: String,
    },
    /// The watch's resource version is too old (410 Gone): list again.
    Expired(String),
}

/// The Nodes the API has, as far as the list and the watch told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    names: BTreeSet<String>,
    /// Where a watch resumes.
    pub resource_version: String,
}

impl NodeView {
    /// The view of a complete list at `rv`.
    pub fn listed(names: impl IntoIterator<Item = String>, rv: String) -> NodeView {
        NodeView {
            names: names.into_iter().collect(),
            resource_version: rv,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// A node the API answered for by name: it exists.
    pub fn insert(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// Apply one watch event; `false` for [`Event::Expired`] (the view can no
    /// longer follow: list again).
    pub fn apply(&mut self, event: &Event) -> bool {
        let rv = match event {
            Event::Added { name, rv } | Event::Modified { name, rv } => {
                self.names.insert(name.clone());
                rv
            }
            Event::Deleted { name, rv } => {
                self.names.remove(name);
                rv
            }
            Event::Bookmark { rv } => rv,
            Event::Expired(_) => return false,
        };
        if !rv.is_empty() {
            self.resource_version = rv.clone();
        }
        true
    }
}

/// A node Ohno knows in the store: a node record or block affinities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OhnoNode {
    pub name: String,
    /// The record's `seen` (seconds since the epoch); `None` without a record.
    pub seen: Option<u64>,
}

/// Since when each of Ohno's nodes has been missing from a whole view.
#[derive(Debug, Default)]
pub struct Absences {
    since: HashMap<String, Instant>,
}

impl Absences {
    pub fn forget(&mut self, name: &str) {
        self.since.remove(name);
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// What [`due`] needs to know besides the view.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    /// Seconds since the epoch (compared with records' `seen` only).
    pub unix: u64,
}

/// The nodes of `ohno` due for release now, given a whole `view`. Updates
/// `absences`: a node present in the view is forgotten, a node newly
/// missing starts its grace period now, a node no longer in the store is
/// dropped.
pub fn due(
    view: &NodeView,
    absences: &mut Absences,
    ohno: &[OhnoNode],
    me: &str,
    clock: Clock,
    grace: Duration,
) -> Vec<String> {
    absences
        .since
        .retain(|name, _| ohno.iter().any(|n| n.name == *name));
    let mut out = Vec::new();
    for node in ohno {
        if node.name == me || view.has(&node.name) {
            absences.forget(&node.name);
            continue;
        }
        let since = *absences.since.entry(node.name.clone()).or_insert(clock.now);
        let gone_long_enough = clock.now.saturating_duration_since(since) >= grace;
        let agent_silent = node
            .seen
            .is_none_or(|seen| clock.unix.saturating_sub(seen) >= grace.as_secs());
        if gone_long_enough && agent_silent {
            out.push(node.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);

    fn node(name: &str, seen: Option<u64>) -> OhnoNode {
        OhnoNode {
            name: name.into(),
            seen,
        }
    }

    fn view(names: &[&str]) -> NodeView {
        NodeView::listed(names.iter().map(|s| s.to_string()), "100".into())
    }

    fn at(t0: Instant, secs: u64) -> Clock {
        Clock {
            now: t0 + Duration::from_secs(secs),
            unix: 1_000_000 + secs,
        }
    }

    #[test]
    fn a_node_is_due_only_after_the_whole_grace_period() {
        let t0 = Instant::now();
        let v = view(&["a", "c"]);
        let ohno = [node("a", None), node("b", Some(0)), node("c", None)];
        let mut abs = Absences::default();
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 0), GRACE).is_empty());
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 299), GRACE).is_empty());
        assert_eq!(
            due(&v, &mut abs, &ohno, "a", at(t0, 300), GRACE),
            vec!["b".to_string()]
        );
    }

    #[test]
    fn a_node_back_in_the_view_starts_over() {
        let t0 = Instant::now();
        let mut v = view(&["a"]);
        let ohno = [node("a", None), node("b", None)];
        let mut abs = Absences::default();
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 0), GRACE).is_empty());
        assert!(v.apply(&Event::Added {
            name: "b".into(),
            rv: "101".into()
        }));
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 200), GRACE).is_empty());
        assert!(v.apply(&Event::Deleted {
            name: "b".into(),
            rv: "102".into()
        }));
        assert_eq!(v.resource_version, "102");
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 250), GRACE).is_empty());
        // 300 s after the first absence, but only 299 after the second.
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 549), GRACE).is_empty());
        assert_eq!(due(&v, &mut abs, &ohno, "a", at(t0, 550), GRACE), ["b"]);
    }

    #[test]
    fn a_node_whose_agent_confirms_its_record_is_never_due() {
        let t0 = Instant::now();
        let v = view(&[]);
        let mut abs = Absences::default();
        // seen 10 s before each sweep: the agent runs.
        for s in [0, 300, 900] {
            let ohno = [node("b", Some(1_000_000 + s - 10))];
            assert!(due(&v, &mut abs, &ohno, "a", at(t0, s), GRACE).is_empty());
        }
        // The agent stops: due once its record is a grace period old.
        let ohno = [node("b", Some(1_000_000 + 890))];
        assert!(due(&v, &mut abs, &ohno, "a", at(t0, 1189), GRACE).is_empty());
        assert_eq!(due(&v, &mut abs, &ohno, "a", at(t0, 1190), GRACE), ["b"]);
    }

    #[test]
    fn the_agents_own_node_is_never_due() {
        let t0 = Instant::now();
        let v = view(&[]);
        let ohno = [node("me", None)];
        let mut abs = Absences::default();
        assert!(due(&v, &mut abs, &ohno, "me", at(t0, 0), GRACE).is_empty());
        assert!(due(&v, &mut abs, &ohno, "me", at(t0, 10_000), GRACE).is_empty());
    }

    #[test]
    fn nodes_gone_from_the_store_are_forgotten() {
        let t0 = Instant::now();
        let v = view(&[]);
        let mut abs = Absences::default();
        assert!(due(&v, &mut abs, &[node("b", None)], "a", at(t0, 0), GRACE).is_empty());
        assert_eq!(abs.len(), 1);
        assert!(due(&v, &mut abs, &[], "a", at(t0, 1), GRACE).is_empty());
        assert!(abs.is_empty());
    }

    #[test]
    fn bookmarks_move_the_resource_version_and_expiry_asks_for_a_list() {
        let mut v = view(&["a"]);
        assert!(v.apply(&Event::Bookmark { rv: "150".into() }));
        assert_eq!(v.resource_version, "150");
        assert!(v.has("a"));
        assert!(!v.apply(&Event::Expired("too old resource version".into())));
        assert_eq!(v.len(), 1);
    }
}
