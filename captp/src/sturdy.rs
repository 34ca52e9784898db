//! Sturdy refs: `captp://<did:key>@<address>/<swiss>`, where the address is
//! `host:port` (TCP) or `unix:<path>` with `/` written `%2F`. The swiss
//! number is unguessable: holding the URI is the authority to the object.

/// Where a kernel listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// Why a listening address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address {0:?} has an empty socket path")]
    EmptySocketPath(String),
    #[error("address {0:?} is neither host:port nor unix:PATH")]
    Unrecognized(String),
}

impl Address {
    /// `host:port`, or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::EmptySocketPath(text.to_owned()));
            }
            return Ok(Address::Unix(path.replace("%2F", "/").into()));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(text.to_owned()))
            }
            _ => Err(AddressError::Unrecognized(text.to_owned())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(hostport) => f.write_str(hostport),
            Address::Unix(path) => {
                write!(f, "unix:{}", path.display().to_string().replace('/', "%2F"))
            }
        }
    }
}

/// A parsed sturdy ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SturdyRef {
    pub did: String,
    pub address: Address,
    pub swiss: String,
}

/// What is wrong with a sturdy ref that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SturdyFlaw {
    #[error("does not start with captp:// (or captp+json:// for an @endo/captp peer)")]
    Scheme,
    #[error("has no DID@")]
    NoDid,
    #[error("does not name a did:key")]
    NotDidKey,
    #[error("has no /SWISS")]
    NoSwiss,
    #[error("has a malformed swiss number")]
    MalformedSwiss,
    #[error("{0}")]
    Address(AddressError),
}

/// A sturdy ref that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sturdy ref {uri:?} {flaw} (expected captp://DID@ADDRESS/SWISS)")]
pub struct SturdyRefError {
    pub uri: String,
    pub flaw: SturdyFlaw,
}

impl SturdyRef {
    pub fn parse(uri: &str) -> Result<SturdyRef, SturdyRefError> {
        let bad = |flaw| SturdyRefError {
            uri: uri.to_owned(),
            flaw,
        };
        let rest = uri
            .strip_prefix("captp://")
            .ok_or_else(|| bad(SturdyFlaw::Scheme))?;
        let (did, rest) = rest.split_once('@').ok_or_else(|| bad(SturdyFlaw::NoDid))?;
        if !did.starts_with("did:key:z") {
            return Err(bad(SturdyFlaw::NotDidKey));
        }
        let (address, swiss) = rest
            .rsplit_once('/')
            .ok_or_else(|| bad(SturdyFlaw::NoSwiss))?;
        if swiss.is_empty() || !swiss.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad(SturdyFlaw::MalformedSwiss));
        }
        Ok(SturdyRef {
            did: did.to_owned(),
            address: Address::parse(address).map_err(|e| bad(SturdyFlaw::Address(e)))?,
            swiss: swiss.to_owned(),
        })
    }
}

/// The scheme of an object of a listening @endo/captp peer.
pub const ENDO_SCHEME: &str = "captp+json://";

/// An object of a listening @endo/captp peer: `captp+json://ADDRESS/SWISS`,
/// JSON CapTP in netstrings. The peer's bootstrap object is asked to
/// `restore(swiss)`, as a kernel's gate is. There is no did:key: such a
/// peer is not authenticated, and nothing of it outlives the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndoRef {
    pub address: Address,
    pub swiss: String,
}

impl EndoRef {
    pub fn parse(uri: &str) -> Result<EndoRef, SturdyRefError> {
        let bad = |flaw| SturdyRefError {
            uri: uri.to_owned(),
            flaw,
        };
        let rest = uri
            .strip_prefix(ENDO_SCHEME)
            .ok_or_else(|| bad(SturdyFlaw::Scheme))?;
        let (address, swiss) = rest
            .rsplit_once('/')
            .ok_or_else(|| bad(SturdyFlaw::NoSwiss))?;
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.~".contains(c);
        if swiss.is_empty() || !swiss.chars().all(plain) {
            return Err(bad(SturdyFlaw::MalformedSwiss));
        }
        Ok(EndoRef {
            address: Address::parse(address).map_err(|e| bad(SturdyFlaw::Address(e)))?,
            swiss: swiss.to_owned(),
        })
    }
}

impl std::fmt::Display for EndoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{ENDO_SCHEME}{}/{}", self.address, self.swiss)
    }
}

impl std::fmt::Display for SturdyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "captp://{}@{}/{}", self.did, self.address, self.swiss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sturdy_refs_round_trip_and_malformed_ones_say_why() {
        for uri in [
            "captp://did:key:z6Mkabc@127.0.0.1:7000/3xQ9",
            "captp://did:key:z6Mkabc@unix:%2Ftmp%2Fa.sock/3xQ9",
        ] {
            assert_eq!(SturdyRef::parse(uri).unwrap().to_string(), uri);
        }
        let unix = SturdyRef::parse("captp://did:key:z6Mkabc@unix:%2Ftmp%2Fa.sock/x1").unwrap();
        assert_eq!(unix.address, Address::Unix("/tmp/a.sock".into()));
        for (uri, why) in [
            ("http://x", "captp://"),
            ("captp://did:key:z6Mk@127.0.0.1:7000/", "swiss"),
            ("captp://nobody@127.0.0.1:7000/ab", "did:key"),
            ("captp://did:key:z6Mk@nowhere/ab", "host:port"),
        ] {
            let err = SturdyRef::parse(uri).unwrap_err().to_string();
            assert!(err.contains(why), "{uri}: {err}");
        }
        let endo = EndoRef::parse("captp+json://127.0.0.1:8000/any-thing").unwrap();
        assert_eq!(endo.address, Address::Tcp("127.0.0.1:8000".into()));
        assert_eq!(endo.to_string(), "captp+json://127.0.0.1:8000/any-thing");
        assert!(EndoRef::parse("captp+json://127.0.0.1:8000/").is_err());
        assert!(EndoRef::parse("captp://did:key:z6Mk@127.0.0.1:7000/ab").is_err());
    }
}
