//! Subjects of lattice calls.
//!
//! A call to function `func` of interface `ns:pkg/iface@version` on target `target_id` goes to
//!
//! ```text
//! trellis.rpc.{lattice}.{target_id}.{ns}:{pkg}/{iface}@{version}.{func}
//! ```
//!
//! where every token is escaped by [`escape_token`] so that `.`, `*`, `>`, whitespace and
//! control characters never split or wildcard a subject (`@0.1.0` becomes `@0%2E1%2E0`).
//! Replicas of one target id subscribe to `trellis.rpc.{lattice}.{target_id}.*.*` in the queue
//! group named by the target id, so each call reaches exactly one of them.

/// First two tokens of every lattice-call subject.
pub const RPC_PREFIX: &str = "trellis.rpc";

/// Escapes one subject token: `%`, `.`, `*`, `>`, whitespace and control characters become
/// `%XX` per UTF-8 byte; the empty string becomes `%` (an empty token is not allowed).
pub fn escape_token(raw: &str) -> String {
    if raw.is_empty() {
        return "%".to_owned();
    }
    let needs_escape =
        |c: char| matches!(c, '%' | '.' | '*' | '>') || c.is_whitespace() || c.is_control();
    if !raw.chars().any(needs_escape) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape_token`]; `None` for a malformed escape.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    if !token.contains('%') {
        return Some(token.to_owned());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of a call to `func` of `interface` on `target_id` in `lattice`.
pub fn call_subject(lattice: &str, target_id: &str, interface: &str, func: &str) -> String {
    format!(
        "{RPC_PREFIX}.{}.{}.{}.{}",
        escape_token(lattice),
        escape_token(target_id),
        escape_token(interface),
        escape_token(func)
    )
}

/// The subject a server for `target_id` subscribes to (every interface and function).
pub fn target_wildcard(lattice: &str, target_id: &str) -> String {
    format!(
        "{RPC_PREFIX}.{}.{}.*.*",
        escape_token(lattice),
        escape_token(target_id)
    )
}

/// Splits a call subject into its unescaped `(interface, function)`; `None` if it is not one.
pub fn parse_call_subject(subject: &str) -> Option<(String, String)> {
    let mut tokens = subject.rsplitn(3, '.');
    let func = unescape_token(tokens.next()?)?;
    let interface = unescape_token(tokens.next()?)?;
    tokens.next()?;
    Some((interface, func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_subject_safe_and_reversible() {
        for raw in [
            "",
            "plain",
            "trellis:demo/inventory@0.1.0",
            "a.b*c>d e\tf%g",
            "ünï.🦀",
            "%41",
        ] {
            let escaped = escape_token(raw);
            assert!(
                trellis_protocol::subjects::is_valid_token(&escaped),
                "{escaped:?}"
            );
            assert_eq!(unescape_token(&escaped).as_deref(), Some(raw));
        }
        assert_eq!(unescape_token("%4"), None);
        assert_eq!(unescape_token("%zz"), None);
        assert_eq!(unescape_token("%FF"), None);
    }

    #[test]
    fn subject_layout() {
        let subject = call_subject(
            "default",
            "callee-1",
            "trellis:demo/inventory@0.1.0",
            "echo-item",
        );
        assert_eq!(
            subject,
            "trellis.rpc.default.callee-1.trellis:demo/inventory@0%2E1%2E0.echo-item"
        );
        assert_eq!(
            parse_call_subject(&subject),
            Some((
                "trellis:demo/inventory@0.1.0".to_owned(),
                "echo-item".to_owned()
            ))
        );
        assert_eq!(
            target_wildcard("default", "callee-1"),
            "trellis.rpc.default.callee-1.*.*"
        );
    }
}
