//! Reading `policy.config` and keeping it between `configure` and the decisions.

use std::cell::RefCell;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::Error;

/// Parses the JSON handed to `configure` into the policy's config type.
///
/// The host passes `null` when the CNI config has no `policy.config`; use an
/// `Option<T>` (or a type with `#[serde(default)]` fields that deserializes
/// from `null`) to accept that. A parse failure is
/// [`Error::InvalidConfig`] with serde's message, which names the field and
/// position: `invalid policy config: missing field `rules` at line 1 column 2`.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    serde_json::from_str(json)
        .map_err(|e| Error::InvalidConfig(format!("invalid policy config: {e}")))
}

/// The configuration of a policy instance, set by `configure` and read by the
/// decisions. Keep one in a `thread_local!`:
///
/// ```
/// use ohno_policy_sdk::Configured;
/// struct Config { pool: String }
/// thread_local! {
///     static CONFIG: Configured<Config> = const { Configured::new() };
/// }
/// CONFIG.with(|c| c.set(Config { pool: "prod".into() }));
/// let config = CONFIG.with(Configured::get).unwrap();
/// assert_eq!(config.pool, "prod");
/// ```
///
/// The host uses a fresh instance per ADD and calls `configure` first; in a
/// component the `thread_local!` is a plain global, and in native tests every
/// test thread gets its own.
pub struct Configured<T> {
    value: RefCell<Option<Rc<T>>>,
}

impl<T> Configured<T> {
    /// Not configured yet.
    pub const fn new() -> Configured<T> {
        Configured {
            value: RefCell::new(None),
        }
    }

    /// Stores the configuration, replacing any earlier one.
    pub fn set(&self, value: T) {
        *self.value.borrow_mut() = Some(Rc::new(value));
    }

    /// The configuration, or [`Error::Internal`] when `configure` has not
    /// succeeded on this instance.
    pub fn get(&self) -> Result<Rc<T>, Error> {
        self.value
            .borrow()
            .clone()
            .ok_or_else(|| Error::Internal("policy used before configure succeeded".into()))
    }
}

impl<T> Default for Configured<T> {
    fn default() -> Self {
        Configured::new()
    }
}
