//! The bucket VM (seed 000): UCAN invocations are the kernel's
//! instructions, and a CAR of them is a program.
//!
//! - `/store/add {link: CarCID}` is [`Bucket::add_car`]: the CAR's blocks
//!   are checked against their CIDs and stored, and the CAR is named by the
//!   CID of its bytes (codec `car`).
//! - `/system/enqueue {task: CarCID}` is [`Bucket::enqueue`]: each root of
//!   the CAR is an invocation, validated against the proofs stored beside
//!   it; its `sub` must be this kernel, its `cmd` is under a route of the
//!   HTTP device (`system/invoke`: the foreign function answers it) or
//!   `/PET/METHOD` (a message to the capability the kernel's owner named
//!   PET), and its
//!   `args` the message (`{args: [...]}` positional, any other map one
//!   record argument, `{}` none).
//! - Each invocation gets one receipt, signed by the kernel as a
//!   self-issued invocation of `/ucan/assert/receipt` with `args {ran,
//!   out}` (provisional: no receipt spec is ratified). An invocation that
//!   has a receipt is not run again (replay protection by CID); enqueued
//!   again, it is a memo hit.
//!
//! # Store layout (namespace `ipvm`)
//!
//! | key | value |
//! |---|---|
//! | `block.<cid>` | a block's bytes, base64 |
//! | `car.<car cid>` | the CAR's roots, a JSON list |
//! | `ran.<invocation cid>` | `running <kpid> <billed>` or `receipt <receipt cid> <billed>` |

use std::collections::BTreeMap;

use base64::Engine;
use cid::Cid;
use kernel::{Kernel, KernelError, Kref, Namespace, PromiseState};
use serde_json::Value as Json;
use ucan::{Command, Invocation, Ipld, Kind, Token};
use vom::Value;

use crate::car::{self, Car, CarError};
use crate::outcome::{decode_output, rejection, run_until_quiet};

const IPVM: Namespace = Namespace::new("ipvm");

/// What goes wrong adding or enqueuing a CAR (an invocation that fails is
/// no error: its receipt says so).
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error(transparent)]
    Car(#[from] CarError),
    #[error("no CAR {0} was added here (vat car add FILE.car)")]
    UnknownCar(String),
    #[error("the kernel has no receipts yet")]
    NoReceipts,
    #[error("the kernel's DID: {0}")]
    Owner(did_key::DidKeyError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Store(#[from] swingstore::StoreError),
}

/// What enqueuing a CAR did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub ok: usize,
    pub failed: usize,
    /// Invocations that had a receipt already, and were not run again.
    pub memo_hits: usize,
    /// Each root's receipt, in the CAR's order.
    pub receipts: Vec<Cid>,
}

/// The bucket VM on a kernel whose owner (its DID) signs receipts.
pub struct Bucket<'k> {
    kernel: &'k mut Kernel,
    owner: did_key::DidKey,
    sign: &'k dyn Fn(&[u8]) -> [u8; 64],
}

impl std::fmt::Debug for Bucket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("owner", &self.owner.to_string())
            .finish()
    }
}

fn block_key(cid: &Cid) -> String {
    format!("block.{cid}")
}

fn ran_key(cid: &Cid) -> String {
    format!("ran.{cid}")
}

impl<'k> Bucket<'k> {
    pub fn new(
        kernel: &'k mut Kernel,
        owner: &str,
        sign: &'k dyn Fn(&[u8]) -> [u8; 64],
    ) -> Result<Bucket<'k>, BucketError> {
        let owner = did_key::DidKey::parse(owner).map_err(BucketError::Owner)?;
        Ok(Bucket {
            kernel,
            owner,
            sign,
        })
    }

    /// `/store/add`: checks and stores a CAR's blocks; returns the CAR's
    /// CID and what it held.
    pub fn add_car(&mut self, bytes: &[u8]) -> Result<(Cid, Car), BucketError> {
        let car = car::read(bytes)?;
        let cid = car::car_cid(bytes);
        let roots: Vec<Json> = car
            .roots
            .iter()
            .map(|r| Json::from(r.to_string()))
            .collect();
        self.kernel.in_crank(|kernel| -> Result<(), KernelError> {
            for (block, data) in &car.blocks {
                let text = base64::engine::general_purpose::STANDARD.encode(data);
                kernel.set_record(IPVM, &block_key(block), &text)?;
            }
            kernel.set_record(IPVM, &format!("car.{cid}"), &Json::Array(roots).to_string())
        })?;
        self.kernel.commit()?;
        Ok((cid, car))
    }

    /// A stored block's bytes.
    pub fn block(&self, cid: &Cid) -> Option<Vec<u8>> {
        let text = self.kernel.record(IPVM, &block_key(cid)).ok()??;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    fn roots(&self, car: &Cid) -> Result<Vec<Cid>, BucketError> {
        let text = self
            .kernel
            .record(IPVM, &format!("car.{car}"))?
            .ok_or_else(|| BucketError::UnknownCar(car.to_string()))?;
        let roots: Vec<String> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("ipvm invariant: car.{car} lists CIDs: {e}"));
        Ok(roots
            .iter()
            .map(|r| {
                Cid::try_from(r.as_str())
                    .unwrap_or_else(|e| panic!("ipvm invariant: car.{car} root {r}: {e}"))
            })
            .collect())
    }

    /// `/system/enqueue`: runs the CAR's root invocations as messages, each
    /// to its end, and receipts them; `billed` is the account recorded.
    pub fn enqueue(&mut self, car: &Cid, billed: &str) -> Result<Enqueued, BucketError> {
        let mut enqueued = Enqueued::default();
        let running = self.start_all(car, billed, &mut enqueued)?;
        self.kernel.commit()?;
        run_until_quiet(self.kernel)?;
        for (root, kpid) in running {
            let outcome = match self.kernel.promise_state(&kpid)? {
                Some(PromiseState::Fulfilled(data)) => decode_output(&data),
                Some(PromiseState::Rejected(data)) => Err(rejection(&data)),
                Some(PromiseState::Unresolved) => Err("the message did not settle".to_owned()),
                None => Err("the message's result promise is gone".to_owned()),
            };
            if outcome.is_ok() {
                enqueued.ok += 1;
            } else {
                enqueued.failed += 1;
            }
            enqueued.receipts.push(self.finish(&root, outcome, billed)?);
            self.kernel.release(&kpid)?;
        }
        self.kernel.commit()?;
        Ok(enqueued)
    }

    /// Queues the message of each root not run yet (its `ran` record says
    /// so in the same commit), receipts at once those that fail validation,
    /// and counts those with a receipt already. Returns what is running,
    /// including what a killed enqueue had left running.
    fn start_all(
        &mut self,
        car: &Cid,
        billed: &str,
        enqueued: &mut Enqueued,
    ) -> Result<Vec<(Cid, Kref)>, BucketError> {
        let mut running = Vec::new();
        let now = devices::timer::now_ms() / 1000;
        for root in self.roots(car)? {
            let state = self.kernel.record(IPVM, &ran_key(&root))?;
            let parts: Option<Vec<String>> =
                state.map(|s| s.split(' ').map(str::to_owned).collect());
            match parts {
                Some(parts) if parts[0] == "receipt" => {
                    enqueued.memo_hits += 1;
                    enqueued.receipts.push(parse_cid(&parts[1]));
                }
                Some(parts) => {
                    let kpid = Kref::parse(&parts[1]).unwrap_or_else(|| {
                        panic!("ipvm invariant: ran.{root} names a kpid, not {parts:?}")
                    });
                    running.push((root, kpid));
                }
                None => match self.start(&root, now) {
                    Ok(kpid) => {
                        let state = format!("running {kpid} {billed}");
                        self.kernel.set_record(IPVM, &ran_key(&root), &state)?;
                        running.push((root, kpid));
                    }
                    Err(reason) => {
                        enqueued.failed += 1;
                        enqueued
                            .receipts
                            .push(self.finish(&root, Err(reason), billed)?);
                    }
                },
            }
        }
        Ok(running)
    }

    /// Validates one invocation and queues its message.
    fn start(&mut self, root: &Cid, now: u64) -> Result<Kref, String> {
        let bytes = self
            .block(root)
            .ok_or_else(|| format!("UnavailableProof: the invocation {root} is not in the CAR"))?;
        let validated = ucan::validate(&bytes, &|cid| self.block(cid), now)
            .map_err(|e| format!("{}: {e}", e.name()))?;
        let invocation = validated.invocation;
        if invocation.sub != self.owner {
            return Err(format!(
                "InvalidSubject: sub is {}, not this kernel {}",
                invocation.sub, self.owner
            ));
        }
        let args = message_args(&invocation)?;
        let cmd = invocation.cmd.as_str();
        // A command under an HTTP route goes to the foreign function.
        if let Some(http) = devices::http::routed(self.kernel, cmd).map_err(|e| e.to_string())? {
            return self
                .kernel
                .queue_message(&http, cmd, vom::capdata::encode(&Value::Array(args)))
                .map_err(|e| e.to_string());
        }
        let (pet, method) = invocation
            .cmd
            .as_str()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .filter(|(_, method)| !method.contains('/'))
            .ok_or_else(|| format!("cmd {} is not /PET/METHOD", invocation.cmd))?;
        let kref = self
            .kernel
            .pet_name(pet)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no capability is named {pet:?}"))?;
        self.kernel
            .queue_message(&kref, method, vom::capdata::encode(&Value::Array(args)))
            .map_err(|e| e.to_string())
    }

    /// Signs and stores `root`'s receipt, in one crank with its `ran` record.
    fn finish(
        &mut self,
        root: &Cid,
        outcome: crate::ReceiptOut,
        billed: &str,
    ) -> Result<Cid, BucketError> {
        let token = self.receipt(root, &outcome);
        let cid = token.cid();
        let text = base64::engine::general_purpose::STANDARD.encode(token.bytes());
        self.kernel.in_crank(|kernel| -> Result<(), KernelError> {
            kernel.set_record(IPVM, &block_key(&cid), &text)?;
            kernel.set_record(IPVM, &ran_key(root), &format!("receipt {cid} {billed}"))
        })?;
        Ok(cid)
    }

    /// A receipt: the kernel's self-issued `/ucan/assert/receipt` of `ran`.
    fn receipt(&self, ran: &Cid, outcome: &crate::ReceiptOut) -> Token {
        let out = match outcome {
            Ok(value) => ("ok", json_to_ipld(value)),
            Err(reason) => ("error", Ipld::String(reason.clone())),
        };
        let receipt = Invocation {
            iss: self.owner.clone(),
            sub: self.owner.clone(),
            aud: None,
            cmd: Command::parse("/ucan/assert/receipt")
                .expect("ipvm invariant: the receipt command parses"),
            args: BTreeMap::from([
                ("ran".to_owned(), Ipld::Link(*ran)),
                (
                    "out".to_owned(),
                    Ipld::Map(BTreeMap::from([(out.0.to_owned(), out.1)])),
                ),
            ]),
            prf: Vec::new(),
            // Deterministic: one receipt per invocation, the same bytes each time.
            nonce: ran.hash().digest().iter().take(12).copied().collect(),
            exp_s: None,
            iat_s: None,
            cause: None,
        };
        Token::sign(Kind::Invocation, receipt.to_payload(), self.sign)
    }

    /// Every receipt this kernel signed, as a CAR (roots: the receipts).
    pub fn receipts_car(&self) -> Result<Vec<u8>, BucketError> {
        let mut blocks = Vec::new();
        for (_, state) in self.kernel.records_under(IPVM, "ran.")? {
            if let Some(rest) = state.strip_prefix("receipt ") {
                let cid = parse_cid(rest.split(' ').next().unwrap_or_default());
                let bytes = self
                    .block(&cid)
                    .unwrap_or_else(|| panic!("ipvm invariant: receipt {cid} is stored"));
                blocks.push((cid, bytes));
            }
        }
        if blocks.is_empty() {
            return Err(BucketError::NoReceipts);
        }
        Ok(car::write(
            blocks.iter().map(|(cid, _)| *cid).collect(),
            &blocks,
        ))
    }
}

/// A task output as IPLD (integers stay integers, as serde reads them).
fn json_to_ipld(value: &Json) -> Ipld {
    serde_json::from_value(value.clone()).expect("ipvm invariant: plain JSON is IPLD")
}

fn parse_cid(text: &str) -> Cid {
    Cid::try_from(text)
        .unwrap_or_else(|e| panic!("ipvm invariant: a stored CID parses ({text}): {e}"))
}

/// The message an invocation's `args` make.
fn message_args(invocation: &Invocation) -> Result<Vec<Value>, String> {
    let args = &invocation.args;
    match (args.len(), args.get("args")) {
        (0, _) => Ok(Vec::new()),
        (1, Some(Ipld::List(items))) => items.iter().map(ipld_to_value).collect(),
        _ => Ok(vec![ipld_to_value(&Ipld::Map(args.clone()))?]),
    }
}

/// An argument value: plain data; bytes and links are not passable here.
fn ipld_to_value(value: &Ipld) -> Result<Value, String> {
    Ok(match value {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(*b),
        #[allow(clippy::cast_precision_loss)]
        Ipld::Integer(n) if n.unsigned_abs() <= (1 << 53) => Value::Number(*n as f64),
        Ipld::Integer(n) => Value::BigInt(*n),
        Ipld::Float(f) => Value::Number(*f),
        Ipld::String(s) => Value::String(s.clone()),
        Ipld::List(items) => {
            Value::Array(items.iter().map(ipld_to_value).collect::<Result<_, _>>()?)
        }
        Ipld::Map(map) => Value::Record(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), ipld_to_value(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Ipld::Bytes(_) => return Err("bytes are not a message argument".to_owned()),
        Ipld::Link(cid) => return Err(format!("a link ({cid}) is not a message argument")),
    })
}
