//! The `Link` header (RFC 8288, section 3), as far as following `rel="next"` needs.

use reqwest::Url;
use reqwest::header::{HeaderMap, LINK};

/// The target of the first link in `headers` (over every `Link` header, in order)
/// whose relation types include `rel` (compared case-insensitively), resolved against
/// `base`, the URL of the request that got the response.
///
/// Links with an `anchor` parameter describe another resource than the response's, and
/// are passed over; so are links whose target does not resolve to a URL. A malformed
/// link is skipped up to the next comma outside quotes, so one bad link does not hide
/// the others.
pub(crate) fn find_link(headers: &HeaderMap, base: &Url, rel: &str) -> Option<Url> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_links)
        .filter(|link| link.anchor.is_none())
        .filter(|link| {
            link.rel
                .as_deref()
                .is_some_and(|rels| rels.split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case(rel)))
        })
        .find_map(|link| base.join(&link.target).ok())
}

/// One link: its target (as written, not yet resolved) and the parameters this crate
/// looks at.
#[derive(Debug, PartialEq)]
pub(crate) struct Link {
    pub(crate) target: String,
    pub(crate) rel: Option<String>,
    pub(crate) anchor: Option<String>,
}

/// Every well-formed link in one `Link` header value.
pub(crate) fn parse_links(value: &str) -> Vec<Link> {
    let mut parser = Parser {
        rest: value.as_bytes(),
        text: value,
        at: 0,
    };
    let mut links = Vec::new();
    loop {
        parser.skip_separators();
        if parser.at >= parser.rest.len() {
            return links;
        }
        match parser.link() {
            Some(link) => links.push(link),
            None => parser.skip_to_next_link(),
        }
    }
}

struct Parser<'a> {
    rest: &'a [u8],
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.at += 1;
        }
    }

    /// `<target>` followed by `; name[=value]` parameters, up to a comma or the end.
    fn link(&mut self) -> Option<Link> {
        if self.peek() != Some(b'<') {
            return None;
        }
        let start = self.at + 1;
        let end = start + self.rest[start..].iter().position(|&b| b == b'>')?;
        let target = self.text.get(start..end)?.trim();
        // A URI reference holds none of these; finding one means a `>` went missing.
        if target.bytes().any(|b| matches!(b, b'<' | b'"' | b' ' | b'\t')) {
            self.at = start;
            return None;
        }
        let target = target.to_owned();
        self.at = end + 1;
        let mut link = Link {
            target,
            rel: None,
            anchor: None,
        };
        loop {
            self.skip_whitespace();
            match self.peek() {
                None | Some(b',') => return Some(link),
                Some(b';') => self.at += 1,
                Some(_) => return None,
            }
            self.skip_whitespace();
            let name = self.token()?;
            self.skip_whitespace();
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.skip_whitespace();
                if self.peek() == Some(b'"') {
                    self.quoted()?
                } else {
                    self.token()?
                }
            } else {
                String::new()
            };
            // RFC 8288 3.3: occurrences of `rel` after the first are ignored.
            if name.eq_ignore_ascii_case("rel") && link.rel.is_none() {
                link.rel = Some(value);
            } else if name.eq_ignore_ascii_case("anchor") && link.anchor.is_none() {
                link.anchor = Some(value);
            }
        }
    }

    /// An RFC 9110 token (`rel=next`, a parameter name); `None` if empty.
    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !tchar {
                break;
            }
            self.at += 1;
        }
        (self.at > start).then(|| self.text[start..self.at].to_owned())
    }

    /// A quoted string, with its backslash escapes undone; `None` if it never ends.
    fn quoted(&mut self) -> Option<String> {
        self.at += 1;
        let mut value = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return String::from_utf8(value).ok();
                }
                b'\\' => {
                    self.at += 1;
                    value.push(self.peek()?);
                    self.at += 1;
                }
                b => {
                    value.push(b);
                    self.at += 1;
                }
            }
        }
    }

    /// Skips past the next comma that is not inside quotes or angle brackets.
    fn skip_to_next_link(&mut self) {
        let mut quoted = false;
        let mut bracketed = false;
        while let Some(b) = self.peek() {
            self.at += 1;
            match b {
                b'\\' if quoted => self.at += 1,
                b'"' if !bracketed => quoted = !quoted,
                b'<' if !quoted => bracketed = true,
                b'>' if !quoted => bracketed = false,
                b',' if !quoted && !bracketed => return,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn next_of(values: &[&str], base: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(LINK, HeaderValue::from_str(value).unwrap());
        }
        find_link(&headers, &Url::parse(base).unwrap(), "next").map(String::from)
    }

    #[test]
    fn github_style_links_find_next_among_several() {
        let value = r#"<https://api.github.com/events?page=2>; rel="next", <https://api.github.com/events?page=10>; rel="last""#;
        assert_eq!(
            next_of(&[value], "https://api.github.com/events").as_deref(),
            Some("https://api.github.com/events?page=2")
        );
    }

    #[test]
    fn relative_targets_resolve_against_the_request_url() {
        assert_eq!(
            next_of(
                &["</items?page=3>; rel=next"],
                "http://host:8080/api/items?page=2"
            )
            .as_deref(),
            Some("http://host:8080/items?page=3")
        );
        assert_eq!(
            next_of(&["<?page=3>; rel=next"], "http://host/api/items?page=2").as_deref(),
            Some("http://host/api/items?page=3")
        );
    }

    #[test]
    fn quoted_parameters_may_hold_commas_semicolons_and_escapes() {
        let value = r#"<http://a/1>; title="a, b; \"c\""; rel="prev", <http://a/2>; rel="last NEXT""#;
        assert_eq!(next_of(&[value], "http://a/").as_deref(), Some("http://a/2"));
        let links = parse_links(r#"<x>; title="a, b; \"c\""; rel=prev"#);
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].rel.as_deref(), Some("prev"));
    }

    #[test]
    fn links_spread_over_several_headers_are_all_read() {
        assert_eq!(
            next_of(&["<http://a/1>; rel=prev", "<http://a/2>; rel=next"], "http://a/").as_deref(),
            Some("http://a/2")
        );
    }

    #[test]
    fn only_the_first_rel_counts_and_anchored_links_are_passed_over() {
        assert_eq!(next_of(&["<http://a/1>; rel=prev; rel=next"], "http://a/"), None);
        assert_eq!(
            next_of(
                &[r##"<http://a/1>; anchor="#x"; rel=next, <http://a/2>; rel=next"##],
                "http://a/"
            )
            .as_deref(),
            Some("http://a/2")
        );
    }

    #[test]
    fn a_malformed_link_does_not_hide_the_next_one() {
        assert_eq!(
            next_of(
                &[r#"garbage "with, quotes", <http://a/1; rel=next, <http://a/2>; rel=next"#],
                "http://a/"
            )
            .as_deref(),
            Some("http://a/2")
        );
        assert_eq!(next_of(&[r#"<http://a/1>; rel="next"#], "http://a/"), None);
        assert_eq!(
            next_of(&["<http://a/1>; rel=next"], "http://a/").as_deref(),
            Some("http://a/1")
        );
    }
}
