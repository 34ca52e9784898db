//! The two payloads, parsed from a token's payload map once.

use std::collections::BTreeMap;

use did_key::DidKey;
use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;

use crate::command::{Command, CommandError};
use crate::envelope::{Kind, Token};
use crate::policy::{Policy, PolicyError};

/// What is wrong with a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the token is a {found:?}, not a {wanted:?}")]
    WrongKind { wanted: Kind, found: Kind },
    #[error("the payload has no {0}")]
    Missing(&'static str),
    #[error("{field} is not {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("{field}: {error}")]
    BadDid {
        field: &'static str,
        error: did_key::DidKeyError,
    },
    #[error(transparent)]
    BadCommand(#[from] CommandError),
    #[error("pol: {0}")]
    BadPolicy(#[from] PolicyError),
}

/// `iss` lets `aud` use `cmd` on `sub` (any subject, when `None`: a
/// powerline), within the policy and the time bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub iss: DidKey,
    pub aud: DidKey,
    pub sub: Option<DidKey>,
    pub cmd: Command,
    pub pol: Policy,
    pub nonce: Vec<u8>,
    pub nbf_s: Option<u64>,
    pub exp_s: Option<u64>,
}

/// `iss` asks that `cmd` be run on `sub` with `args`, proved by `prf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub iss: DidKey,
    pub sub: DidKey,
    pub aud: Option<DidKey>,
    pub cmd: Command,
    pub args: BTreeMap<String, Ipld>,
    /// The delegations that prove it, root first.
    pub prf: Vec<Cid>,
    pub nonce: Vec<u8>,
    pub exp_s: Option<u64>,
    pub iat_s: Option<u64>,
    pub cause: Option<Cid>,
}

/// Reads the fields of one payload map.
struct Fields<'a>(&'a BTreeMap<String, Ipld>);

impl Fields<'_> {
    fn required(&self, field: &'static str) -> Result<&Ipld, PayloadError> {
        self.0.get(field).ok_or(PayloadError::Missing(field))
    }

    fn did(&self, field: &'static str) -> Result<DidKey, PayloadError> {
        match self.required(field)? {
            Ipld::String(did) => {
                DidKey::parse(did).map_err(|error| PayloadError::BadDid { field, error })
            }
            _ => Err(wrong(field, "a DID")),
        }
    }

    fn optional_did(&self, field: &'static str) -> Result<Option<DidKey>, PayloadError> {
        match self.0.get(field) {
            None | Some(Ipld::Null) => Ok(None),
            Some(_) => self.did(field).map(Some),
        }
    }

    fn command(&self) -> Result<Command, PayloadError> {
        match self.required("cmd")? {
            Ipld::String(cmd) => Ok(Command::parse(cmd)?),
            _ => Err(wrong("cmd", "a string")),
        }
    }

    fn bytes(&self, field: &'static str) -> Result<Vec<u8>, PayloadError> {
        match self.required(field)? {
            Ipld::Bytes(bytes) => Ok(bytes.clone()),
            _ => Err(wrong(field, "bytes")),
        }
    }

    /// A time in seconds: absent or null is `None`.
    fn seconds(&self, field: &'static str) -> Result<Option<u64>, PayloadError> {
        match self.0.get(field) {
            None | Some(Ipld::Null) => Ok(None),
            Some(Ipld::Integer(n)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| wrong(field, "a time in seconds")),
            Some(_) => Err(wrong(field, "a time in seconds")),
        }
    }

    fn links(&self, field: &'static str) -> Result<Vec<Cid>, PayloadError> {
        match self.required(field)? {
            Ipld::List(items) => items
                .iter()
                .map(|item| match item {
                    Ipld::Link(cid) => Ok(*cid),
                    _ => Err(wrong(field, "a list of links")),
                })
                .collect(),
            _ => Err(wrong(field, "a list of links")),
        }
    }
}

fn wrong(field: &'static str, expected: &'static str) -> PayloadError {
    PayloadError::WrongType { field, expected }
}

fn expect_kind(token: &Token, wanted: Kind) -> Result<(), PayloadError> {
    match token.kind() {
        found if found == wanted => Ok(()),
        found => Err(PayloadError::WrongKind { wanted, found }),
    }
}

impl Delegation {
    pub fn from_token(token: &Token) -> Result<Delegation, PayloadError> {
        expect_kind(token, Kind::Delegation)?;
        let fields = Fields(token.payload());
        if !fields.0.contains_key("sub") {
            return Err(PayloadError::Missing("sub"));
        }
        Ok(Delegation {
            iss: fields.did("iss")?,
            aud: fields.did("aud")?,
            sub: fields.optional_did("sub")?,
            cmd: fields.command()?,
            pol: Policy::parse(fields.required("pol")?)?,
            nonce: fields.bytes("nonce")?,
            nbf_s: fields.seconds("nbf")?,
            exp_s: fields.seconds("exp")?,
        })
    }

    /// The payload map this delegation is written as.
    pub fn to_payload(&self) -> BTreeMap<String, Ipld> {
        let mut map = BTreeMap::from([
            ("iss".to_owned(), did(&self.iss)),
            ("aud".to_owned(), did(&self.aud)),
            ("sub".to_owned(), self.sub.as_ref().map_or(Ipld::Null, did)),
            ("cmd".to_owned(), Ipld::String(self.cmd.to_string())),
            ("pol".to_owned(), self.pol.to_ipld()),
            ("nonce".to_owned(), Ipld::Bytes(self.nonce.clone())),
            ("exp".to_owned(), seconds(self.exp_s)),
        ]);
        if let Some(nbf) = self.nbf_s {
            map.insert("nbf".to_owned(), Ipld::Integer(nbf.into()));
        }
        map
    }
}

impl Invocation {
    pub fn from_token(token: &Token) -> Result<Invocation, PayloadError> {
        expect_kind(token, Kind::Invocation)?;
        let fields = Fields(token.payload());
        let args = match fields.required("args")? {
            Ipld::Map(args) => args.clone(),
            _ => return Err(wrong("args", "a map")),
        };
        let cause = match fields.0.get("cause") {
            None | Some(Ipld::Null) => None,
            Some(Ipld::Link(cid)) => Some(*cid),
            Some(_) => return Err(wrong("cause", "a link")),
        };
        Ok(Invocation {
            iss: fields.did("iss")?,
            sub: fields.did("sub")?,
            aud: fields.optional_did("aud")?,
            cmd: fields.command()?,
            args,
            prf: fields.links("prf")?,
            nonce: fields.bytes("nonce")?,
            exp_s: fields.seconds("exp")?,
            iat_s: fields.seconds("iat")?,
            cause,
        })
    }

    /// The payload map this invocation is written as.
    pub fn to_payload(&self) -> BTreeMap<String, Ipld> {
        let mut map = BTreeMap::from([
            ("iss".to_owned(), did(&self.iss)),
            ("sub".to_owned(), did(&self.sub)),
            ("cmd".to_owned(), Ipld::String(self.cmd.to_string())),
            ("args".to_owned(), Ipld::Map(self.args.clone())),
            (
                "prf".to_owned(),
                Ipld::List(self.prf.iter().copied().map(Ipld::Link).collect()),
            ),
            ("nonce".to_owned(), Ipld::Bytes(self.nonce.clone())),
            ("exp".to_owned(), seconds(self.exp_s)),
        ]);
        if let Some(aud) = &self.aud {
            map.insert("aud".to_owned(), did(aud));
        }
        if let Some(iat) = self.iat_s {
            map.insert("iat".to_owned(), Ipld::Integer(iat.into()));
        }
        if let Some(cause) = self.cause {
            map.insert("cause".to_owned(), Ipld::Link(cause));
        }
        map
    }
}

fn did(key: &DidKey) -> Ipld {
    Ipld::String(key.to_string())
}

fn seconds(value: Option<u64>) -> Ipld {
    value.map_or(Ipld::Null, |s| Ipld::Integer(s.into()))
}
