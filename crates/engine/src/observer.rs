//! A callback that sees every scored window of a rule with a lifecycle.
//!
//! Such a rule publishes only transitions and states, so its windows are not outputs;
//! a live view of the fleet (the HTTP endpoint's device page) still wants each
//! device's score over time. The observer is called on the engine's task with the
//! window as the lifecycle judges it (its `score` is the lifecycle's score column), so
//! it must be quick; unset, it costs one branch per window.

use std::fmt;
use std::sync::Arc;

use forewarn_alerts::Alert;

/// See the module documentation.
#[derive(Clone)]
pub struct WindowObserver(Arc<dyn Fn(&Alert) + Send + Sync>);

impl WindowObserver {
    /// An observer calling `f` for each window.
    pub fn new(f: impl Fn(&Alert) + Send + Sync + 'static) -> Self {
        WindowObserver(Arc::new(f))
    }

    /// Hands `window` to the callback.
    pub(crate) fn observe(&self, window: &Alert) {
        (self.0)(window)
    }
}

impl fmt::Debug for WindowObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WindowObserver(..)")
    }
}
