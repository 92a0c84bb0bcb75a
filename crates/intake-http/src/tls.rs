//! TLS without aws-lc-rs.

use std::sync::Once;

/// Installs rustls' ring crypto provider as the process default, once, unless the
/// application installed one already (then that one is kept).
///
/// intake-http builds reqwest without a crypto provider of its own (reqwest's
/// default, aws-lc-rs, builds C code with cmake), and reqwest panics when a client
/// is built with no process default. The sources call this before they build their
/// client; call it yourself before building a `reqwest::Client` to hand to
/// [`SseSource::client`](crate::SseSource::client) or
/// [`PollSource::client`](crate::PollSource::client).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is installed already, which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
