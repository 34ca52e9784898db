//! Identifiers as the kernel's tables spell them: krefs (`ko<N>`, `kp<N>`),
//! endpoint ids (`v<N>`, `r<N>`) and vrefs (`o+N`, `p-N`, a vat's virtual
//! and durable objects). Each is parsed once, where it enters (a CLI
//! argument, a vat's syscall, a stored run-queue item), and then passed as
//! its type; each reads as its text, the form keys and the wire use.

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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

impl AsRef<str> for Kref {
    fn as_ref(&self) -> &str {
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

impl TryFrom<String> for Kref {
    type Error = String;

    /// How a stored kref is read: a corrupt one is an error, not a panic.
    fn try_from(text: String) -> Result<Kref, String> {
        if is_kref(&text) {
            Ok(Kref(text))
        } else {
            Err(format!("{text:?} is not a kref"))
        }
    }
}

/// What an endpoint id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `v<N>`: a vat.
    Vat,
    /// `r<N>`: a remote peer, through the CapTP engine.
    Peer,
    /// `d<N>`: a device (a timer), through the devices' engine.
    Device,
}

impl EndpointKind {
    fn letter(self) -> char {
        match self {
            EndpointKind::Vat => 'v',
            EndpointKind::Peer => 'r',
            EndpointKind::Device => 'd',
        }
    }

    fn of_letter(letter: u8) -> Option<EndpointKind> {
        match letter {
            b'v' => Some(EndpointKind::Vat),
            b'r' => Some(EndpointKind::Peer),
            b'd' => Some(EndpointKind::Device),
            _ => None,
        }
    }
}

/// An endpoint's id: `v<N>` for a vat, `r<N>` for a remote peer, `d<N>` for
/// a device. What the kernel routes on ([`EndpointId::kind`]); reads as its
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointId(String);

impl EndpointId {
    /// `text` as an endpoint id, if it is one.
    pub fn parse(text: &str) -> Option<EndpointId> {
        EndpointKind::of_letter(*text.as_bytes().first()?)?;
        // The number as its counter writes it: digits, no leading zero,
        // within a u64. Checked without making the text again, as this
        // runs for every id read from the tables.
        let digits = &text[1..];
        let canonical = digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && digits.parse::<u64>().is_ok();
        canonical.then(|| EndpointId(text.to_owned()))
    }

    /// The `number`th endpoint of `kind`, as its counter allocated it.
    pub fn new(kind: EndpointKind, number: u64) -> EndpointId {
        EndpointId(format!("{}{number}", kind.letter()))
    }

    /// An endpoint id the kernel's own tables hold.
    ///
    /// # Panics
    ///
    /// If `text` is not an endpoint id: the tables hold only endpoint ids
    /// where they hold one.
    pub(crate) fn from_table(text: &str) -> EndpointId {
        EndpointId::parse(text).unwrap_or_else(|| {
            panic!("kernel invariant: endpoint ids are v<N>, r<N> or d<N> ({text:?})")
        })
    }

    pub fn kind(&self) -> EndpointKind {
        EndpointKind::of_letter(self.0.as_bytes()[0])
            .expect("kernel invariant: an endpoint id parsed as one")
    }

    /// Its number among the endpoints of its kind (creation order).
    pub fn number(&self) -> u64 {
        self.0[1..]
            .parse()
            .expect("kernel invariant: an endpoint id parsed as one")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for EndpointId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EndpointId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tables keyed by endpoint id are looked up by its text too: an id
/// hashes and compares as its text.
impl std::borrow::Borrow<str> for EndpointId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<EndpointId> for String {
    fn from(id: EndpointId) -> String {
        id.0
    }
}

impl TryFrom<String> for EndpointId {
    type Error = String;

    fn try_from(text: String) -> Result<EndpointId, String> {
        EndpointId::parse(&text).ok_or_else(|| format!("{text:?} is not an endpoint id"))
    }
}

/// Who allocated a vref: the vat itself (`+`, an export) or the kernel
/// (`-`, an import).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allocator {
    Vat,
    Kernel,
}

/// A vref a vat named in a syscall, parsed once where the syscall enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vref<'a> {
    text: &'a str,
    promise: bool,
    allocator: Allocator,
}

impl<'a> Vref<'a> {
    /// `text` as a vref, if it is one (see [`is_vref`]).
    pub(crate) fn parse(text: &'a str) -> Option<Vref<'a>> {
        if !is_vref(text) {
            return None;
        }
        let bytes = text.as_bytes();
        Some(Vref {
            text,
            promise: bytes[0] == b'p',
            allocator: if bytes[1] == b'+' {
                Allocator::Vat
            } else {
                Allocator::Kernel
            },
        })
    }

    pub(crate) fn is_promise(self) -> bool {
        self.promise
    }

    pub(crate) fn allocator(self) -> Allocator {
        self.allocator
    }

    /// An object the vat exports (`o+…`).
    pub(crate) fn is_object_export(self) -> bool {
        !self.promise && self.allocator == Allocator::Vat
    }

    /// An object the vat imports (`o-N`).
    pub(crate) fn is_object_import(self) -> bool {
        !self.promise && self.allocator == Allocator::Kernel
    }

    pub(crate) fn as_str(self) -> &'a str {
        self.text
    }
}

impl std::fmt::Display for Vref<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)
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

    #[test]
    fn endpoint_ids_name_their_kind() {
        let vat = EndpointId::parse("v12").unwrap();
        assert_eq!(vat.kind(), EndpointKind::Vat);
        assert_eq!(&*vat, "v12");
        assert_eq!(
            EndpointId::new(EndpointKind::Peer, 3).kind(),
            EndpointKind::Peer
        );
        assert_eq!(
            EndpointId::parse("r3"),
            Some(EndpointId::new(EndpointKind::Peer, 3))
        );
        assert_eq!(
            EndpointId::parse("d0"),
            Some(EndpointId::new(EndpointKind::Device, 0))
        );
        for not in [
            "v",
            "x1",
            "v01",
            "v00",
            "r-1",
            "r+1",
            "v1a",
            "ko1",
            "",
            "v18446744073709551616",
        ] {
            assert_eq!(EndpointId::parse(not), None, "{not:?}");
        }
    }

    #[test]
    fn stored_ids_that_are_not_ids_are_errors() {
        let item: Result<Vec<Kref>, _> = serde_json::from_str(r#"["ko1","kx2"]"#);
        assert!(item.unwrap_err().to_string().contains("is not a kref"));
        let ids: Vec<EndpointId> = serde_json::from_str(r#"["v1","r2"]"#).unwrap();
        assert_eq!(serde_json::to_string(&ids).unwrap(), r#"["v1","r2"]"#);
    }

    #[test]
    fn vrefs_say_who_allocated_them() {
        let export = Vref::parse("o+d10/3:1").unwrap();
        assert!(export.is_object_export() && !export.is_promise());
        let import = Vref::parse("o-4").unwrap();
        assert!(import.is_object_import());
        let promise = Vref::parse("p-7").unwrap();
        assert!(promise.is_promise() && promise.allocator() == Allocator::Kernel);
        assert_eq!(Vref::parse("ko1"), None);
    }

    #[test]
    fn vrefs_include_durable_and_virtual_objects_with_facets() {
        for good in [
            "o+0",
            "o-12",
            "p+3",
            "p-9",
            "o+d10/3",
            "o+d10/3:1",
            "o+v11/2",
        ] {
            assert!(is_vref(good), "{good}");
        }
        for bad in [
            "o+",
            "o+x",
            "x+1",
            "o*1",
            "o+d10",
            "o+d/3",
            "o+d10/",
            "o+d10/3:",
            "o+d10/3:a",
            "p+d10/3",
            "o-d10/3",
            "o+q10/3",
            "o+d10/3/4",
        ] {
            assert!(!is_vref(bad), "{bad}");
        }
    }
}
