//! Identifiers as the kernel's tables spell them: krefs (`ko<N>`, `kp<N>`)
//! and vrefs (`o+N`, `p-N`, a vat's virtual and durable objects).

/// `ko12` or `kp40`.
pub fn is_kref(text: &str) -> bool {
    (text.starts_with("ko") || text.starts_with("kp"))
        && text.len() > 2
        && text[2..].bytes().all(|b| b.is_ascii_digit())
}

/// A vref: `o+N`, `o-N`, `p+N`, `p-N`, or a vat's durable or virtual object
/// `o+dK/I`, `o+vK/I`, with `:F` for a facet.
pub(crate) fn is_vref(text: &str) -> bool {
    fn digits(text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
    }
    let bytes = text.as_bytes();
    if bytes.len() < 3 || !matches!(bytes[0], b'o' | b'p') || !matches!(bytes[1], b'+' | b'-') {
        return false;
    }
    if digits(&text[2..]) {
        return true;
    }
    let Some(virtual_ref) = text
        .strip_prefix("o+d")
        .or_else(|| text.strip_prefix("o+v"))
    else {
        return false;
    };
    let (instance, facet) = match virtual_ref.split_once(':') {
        Some((instance, facet)) => (instance, Some(facet)),
        None => (virtual_ref, None),
    };
    matches!(instance.split_once('/'), Some((kind, id)) if digits(kind) && digits(id))
        && facet.is_none_or(digits)
}

/// A kernel reference, `ko<N>` (an object) or `kp<N>` (a promise), parsed
/// once where it enters (a pet name resolved, a CLI argument, a result's
/// slot) and then passed as itself. It reads as its text (`Deref<str>`), the
/// form the tables and the wire use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kref(String);

impl Kref {
    /// `text` as a kref, if it is one.
    pub fn parse(text: &str) -> Option<Kref> {
        is_kref(text).then(|| Kref(text.to_owned()))
    }

    /// A kref the kernel's own tables hold.
    ///
    /// # Panics
    ///
    /// If `text` is not a kref: the tables hold only krefs where they hold one.
    pub(crate) fn from_table(text: impl Into<String>) -> Kref {
        let text = text.into();
        assert!(is_kref(&text), "kernel invariant: a kref, not {text:?}");
        Kref(text)
    }

    /// Whether it names a promise.
    pub fn is_promise(&self) -> bool {
        self.0.starts_with("kp")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Kref {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Kref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Kref> for String {
    fn from(kref: Kref) -> String {
        kref.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krefs_parse_once_and_read_as_text() {
        let kref = Kref::parse("kp40").unwrap();
        assert!(kref.is_promise());
        assert_eq!(&*kref, "kp40");
        assert_eq!(kref.to_string(), "kp40");
        assert!(!Kref::parse("ko12").unwrap().is_promise());
        for not in ["ko", "kx1", "ko1a", "v1", "o+1", ""] {
            assert_eq!(Kref::parse(not), None, "{not:?}");
        }
    }
}
