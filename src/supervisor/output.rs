//! The kernel's own stdout and stderr, printed on the launcher's stderr as a local kernel's
//! would be. Remote text is not trusted with the user's terminal: escape sequences (which can
//! retitle windows, rewrite the screen or, on some terminals, answer back) and other control
//! characters are dropped. A stderr that is gone (a closed terminal, a dead `| tee`) loses the
//! text and nothing else.

use std::io::Write;

/// Prints `text` on stderr, made safe for a terminal; errors are ignored.
pub(crate) fn print(text: &str) {
    let _ = std::io::stderr()
        .lock()
        .write_all(terminal_safe(text).as_bytes());
}

/// `text` without escape sequences (CSI, OSC, DCS and two-byte ones) and control characters
/// other than newline and tab.
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: up to BEL or ST (ESC \).
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn escape_sequences_and_controls_are_dropped() {
        assert_eq!(terminal_safe("plain é\tx\n"), "plain é\tx\n");
        assert_eq!(terminal_safe("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(terminal_safe("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(terminal_safe("a\u{1b}]8;;http://x\u{1b}\\b"), "ab");
        assert_eq!(terminal_safe("a\u{1b}Pq#0\u{1b}\\b"), "ab");
        assert_eq!(terminal_safe("a\rb\u{8}c\u{9b}2Jd\u{7f}"), "abc2Jd");
        assert_eq!(terminal_safe("cut\u{1b}["), "cut");
    }
}
