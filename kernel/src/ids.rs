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
