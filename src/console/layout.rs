//! The page shell (navigation, notices, sign-out) and small pieces every page uses.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::session::{Session, SessionKey};

/// The stylesheet, served by the binary at [`CSS_PATH`].
pub const CSS: &str = include_str!("console.css");
/// Where the stylesheet is served (a fixed name: the console changes with the binary).
pub const CSS_PATH: &str = "/console/console.css";

/// A message shown above a page's content.
#[derive(Clone, Debug)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

impl Notice {
    /// A success message.
    pub fn ok(text: impl Into<String>) -> Self {
        Self { error: false, text: text.into() }
    }
    /// An error message.
    pub fn error(text: impl Into<String>) -> Self {
        Self { error: true, text: text.into() }
    }
}

/// The sections in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Features,
    Rollouts,
    Report,
    Notifications,
}

const SECTIONS: [(Section, &str, &str); 4] = [
    (Section::Features, "/console", "Features"),
    (Section::Rollouts, "/console/rollouts", "Rollouts"),
    (Section::Report, "/console/report", "Report"),
    (Section::Notifications, "/console/notifications", "Notifications"),
];

/// A signed-in page.
pub fn page(
    key: &SessionKey,
    session: &Session,
    section: Section,
    title: &str,
    notice: Option<&Notice>,
    body: Markup,
) -> Markup {
    let header = html! {
        nav aria-label="Console" {
            ul class="nav" {
                @for (s, href, label) in SECTIONS {
                    li {
                        @if s == section {
                            a href=(href) aria-current="page" { (label) }
                        } @else {
                            a href=(href) { (label) }
                        }
                    }
                }
            }
        }
        div class="who" {
            span { "Signed in as " strong { (session.name) } @if !session.can_write() { " (read-only)" } }
            form method="post" action="/console/sign-out" class="inline" {
                (csrf_field(key, session))
                button type="submit" class="link" { "Sign out" }
            }
        }
    };
    shell(title, Some(header), notice, body)
}

/// A page for signed-out visitors (sign-in, errors before sign-in).
pub fn page_signed_out(title: &str, notice: Option<Notice>, body: Markup) -> Markup {
    shell(title, None, notice.as_ref(), body)
}

fn shell(title: &str, header: Option<Markup>, notice: Option<&Notice>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ebg-notify console" }
                link rel="stylesheet" href=(CSS_PATH);
            }
            body {
                a href="#main" class="skip" { "Skip to main content" }
                header class="top" {
                    p class="brand" { "ebg-notify" }
                    @if let Some(header) = header { (header) }
                }
                main id="main" tabindex="-1" {
                    @if let Some(n) = notice {
                        @if n.error {
                            div class="notice error" role="alert" { (n.text) }
                        } @else {
                            div class="notice ok" role="status" { (n.text) }
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf_field(key: &SessionKey, session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf(key)); }
}

/// Percent-encodes one path segment (feature keys may hold any character).
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn query_value(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

/// A percentage as people write it: `2%`, `2.5%`.
pub fn pct(value: f64) -> String {
    format!("{}%", crate::toggles::format_percentage(value))
}

/// A fraction as a percentage with one decimal, `—` when there is no value.
pub fn rate(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// A UTC time, minutes precision.
pub fn when(at: chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M UTC")) } }
}

/// A duration in words: `4 h`, `1 d`, `90 s`.
pub fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A decorative status dot; the word next to it carries the meaning.
pub fn dot(status: &str) -> Markup {
    html! { span class={ "dot " (status) } aria-hidden="true" {} (PreEscaped("&nbsp;")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("event_bus_gateway_emails_enabled"), "event_bus_gateway_emails_enabled");
        assert_eq!(segment("a b/c<"), "a%20b%2Fc%3C");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(4 * 3600), "4 h");
        assert_eq!(duration(86_400), "1 d");
        assert_eq!(duration(90), "90 s");
        assert_eq!(duration(120), "2 min");
    }
}
