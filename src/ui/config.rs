//! The dashboard's settings (the `ui:` section of the configuration,
//! read and checked by [`crate::config`]): the CSRF key, when a lock counts
//! as stale, the host names the server is reached by, and the largest
//! state body a view parses.

/// The dashboard's validated settings.
#[derive(Clone, Default)]
pub struct UiSettings {
    /// The key CSRF tokens are HMACs under; `None` makes one at start.
    pub csrf_key: Option<Vec<u8>>,
    pub stale_lock_hours: u64,
    /// Lower-case host names, no port.
    pub hosts: Vec<String>,
    /// State bodies larger than this are not parsed by any view: each
    /// parse costs memory in proportion to the body.
    pub max_view_bytes: u64,
}

impl std::fmt::Debug for UiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiSettings")
            .field("csrf_key", &self.csrf_key.as_ref().map(|_| "<hidden>"))
            .field("stale_lock_hours", &self.stale_lock_hours)
            .field("hosts", &self.hosts)
            .field("max_view_bytes", &self.max_view_bytes)
            .finish()
    }
}
