//! The web view's HTML: escaping, URL segments, and the one page frame every page is drawn
//! in (navigation, the CSRF token for forms and scripts, the embedded style and script).

use std::fmt::Write;

/// `text` escaped for HTML text and attribute values (quoted with `"`).
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one URL path segment or query value: every byte but the unreserved ones
/// percent-encoded (a `team/service` reference stays one segment).
pub(crate) fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Fleet,
    Services,
    Jobs,
    Schedules,
    /// The login page (no navigation).
    Login,
}

/// Who the page is drawn for: shown in the bar, and the CSRF token its forms carry.
pub(crate) struct Viewer<'a> {
    pub(crate) identity: &'a str,
    pub(crate) team: &'a str,
    pub(crate) csrf: &'a str,
}

/// A whole page: `body` inside the frame.
pub(crate) fn page(title: &str, section: Section, viewer: Option<&Viewer>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let csrf = viewer.map_or("", |v| v.csrf);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <meta name=csrf content=\"{}\"><title>{} · triggerFS</title>\
         <link rel=stylesheet href=\"/assets/app.css\"></head><body>",
        esc(csrf),
        esc(title)
    );
    out.push_str("<header><a class=brand href=\"/\">triggerFS</a>");
    if let Some(viewer) = viewer {
        out.push_str("<nav>");
        for (s, href, label) in [
            (Section::Fleet, "/fleet", "Fleet"),
            (Section::Services, "/services", "Services"),
            (Section::Jobs, "/jobs", "Jobs"),
            (Section::Schedules, "/schedules", "Schedules"),
        ] {
            let current = if s == section {
                " aria-current=page"
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{href}\"{current}>{label}</a>");
        }
        let _ = write!(
            out,
            "</nav><form class=who method=post action=\"/logout\">{}\
             <span>{} @ {}</span><button>Log out</button></form>",
            csrf_field(viewer.csrf),
            esc(viewer.identity),
            esc(viewer.team)
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main><script src=\"/assets/app.js\" defer></script></body></html>");
    out
}

/// The hidden field every form of the view carries.
pub(crate) fn csrf_field(token: &str) -> String {
    format!("<input type=hidden name=csrf value=\"{}\">", esc(token))
}

/// A short message box (`kind`: `error` or `note`).
pub(crate) fn message(kind: &str, text: &str) -> String {
    format!("<p class=\"msg {kind}\" role=status>{}</p>", esc(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("main/fleet a"), "main%2Ffleet%20a");
        assert_eq!(seg("w-1.a_b~"), "w-1.a_b~");
    }
}
