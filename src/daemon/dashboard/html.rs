//! Markup that cannot be injected into: [`Html`] is a string that only ever grows by
//! *literal* markup (`&'static str`, so it was written in this source tree) or by *text*,
//! which is escaped on the way in. There is no way to append a runtime `String` as markup,
//! so a VM name, a line of console output, an error message or a kernel's version banner
//! always arrives in the page as text, whatever it contains.
//!
//! Escaping covers element content and double-quoted attribute values alike (`& < > " '`);
//! every attribute in the dashboard's markup is double-quoted. C0 control characters other
//! than tab and newline (a guest's console is full of escape sequences) become U+FFFD, so
//! the page stays well-formed whatever bytes a guest printed.

use std::fmt::{self, Write};

/// HTML known to be safe: literal markup from this crate, and escaped text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::new())
    }

    /// Appends literal markup. `'static` on purpose: only text written in the source can be
    /// markup.
    pub fn markup(&mut self, markup: &'static str) -> &mut Html {
        self.0.push_str(markup);
        self
    }

    /// Appends `text`, escaped.
    pub fn text(&mut self, text: impl fmt::Display) -> &mut Html {
        // Writing into a String cannot fail.
        let _ = write!(Escaper(&mut self.0), "{text}");
        self
    }

    /// Appends `segment` as one URL path segment (percent-encoded, then escaped), for
    /// `href` and `action` attributes.
    pub fn path_segment(&mut self, segment: &str) -> &mut Html {
        self.text(PathSegment(segment))
    }

    /// Appends markup built elsewhere (itself made of literals and escaped text).
    pub fn html(&mut self, html: &Html) -> &mut Html {
        self.0.push_str(&html.0);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A `fmt::Write` that escapes what goes through it.
struct Escaper<'a>(&'a mut String);

impl Write for Escaper<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                '\t' | '\n' => self.0.push(c),
                c if c.is_control() => self.0.push(char::REPLACEMENT_CHARACTER),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// A URL path segment: every byte outside RFC 3986's unreserved set percent-encoded.
struct PathSegment<'a>(&'a str);

impl fmt::Display for PathSegment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                f.write_char(char::from(byte))?;
            } else {
                write!(f, "%{byte:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_markup_is_not() {
        let mut html = Html::new();
        html.markup("<p title=\"")
            .text("\"><script>alert('x')</script>&")
            .markup("\">")
            .text("a\u{1b}[31mred\0\ttab\nline")
            .markup("</p>");
        assert_eq!(
            html.as_str(),
            "<p title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\">\
             a\u{fffd}[31mred\u{fffd}\ttab\nline</p>"
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let mut html = Html::new();
        html.markup("<a href=\"/vms/")
            .path_segment("dev-1")
            .markup("\">")
            .markup("</a><a href=\"/vms/")
            .path_segment("../x?y=\"<z>\"/é")
            .markup("\"></a>");
        assert_eq!(
            html.as_str(),
            "<a href=\"/vms/dev-1\"></a><a href=\"/vms/..%2Fx%3Fy%3D%22%3Cz%3E%22%2F%C3%A9\"></a>"
        );
    }
}
