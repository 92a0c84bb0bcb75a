//! The headers and credentials both HTTP sources send with every request.

use std::fmt;

use reqwest::RequestBuilder;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers and credentials for every request of a source.
#[derive(Clone, Default)]
pub(crate) struct RequestSettings {
    headers: HeaderMap,
    auth: Option<Auth>,
}

#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic(String, Option<String>),
}

impl RequestSettings {
    /// Adds a header.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    #[track_caller]
    pub(crate) fn header(&mut self, name: &str, value: &str) {
        let name = HeaderName::try_from(name).unwrap_or_else(|e| panic!("invalid header name `{name}`: {e}"));
        let value =
            HeaderValue::try_from(value).unwrap_or_else(|e| panic!("invalid value for header `{name}`: {e}"));
        self.headers.append(name, value);
    }

    pub(crate) fn bearer_auth(&mut self, token: String) {
        self.auth = Some(Auth::Bearer(token));
    }

    pub(crate) fn basic_auth(&mut self, user: String, password: Option<String>) {
        self.auth = Some(Auth::Basic(user, password));
    }

    /// The request with these headers and credentials (reqwest marks the
    /// `Authorization` value sensitive, so it is not logged).
    pub(crate) fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        let request = request.headers(self.headers.clone());
        match &self.auth {
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            Some(Auth::Basic(user, password)) => request.basic_auth(user, password.as_ref()),
            None => request,
        }
    }
}

impl fmt::Debug for RequestSettings {
    /// Header names and the kind of credentials; never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Some(Auth::Bearer(_)) => Some("bearer".to_owned()),
            Some(Auth::Basic(user, _)) => Some(format!("basic ({user})")),
            None => None,
        };
        f.debug_struct("RequestSettings")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("auth", &auth)
            .finish()
    }
}
