//! UCAN 1.0 from the command line: delegations and invocations signed with
//! this home's key, printed as one line of base64 (or an invocation and
//! its proofs written as a CAR), verification of a token read back (base64
//! or raw DAG-CBOR), and the bucket VM: CARs added and enqueued, and the
//! receipts written as a CAR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use ipvm::Bucket;
use kernel::Kernel;
use ucan::{Cid, Command, Delegation, Invocation, Ipld, Kind, Policy, Token};

use crate::home::Home;
use crate::request::{Outcome, UcanDelegation, UcanInvocation, UcanSubject};

fn now_s() -> u64 {
    devices::timer::now_ms() / 1000
}

/// Twelve random bytes: a token's or a job's nonce.
pub fn nonce() -> Result<Vec<u8>> {
    let mut nonce = vec![0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| anyhow!("no randomness for the nonce: {e}"))?;
    Ok(nonce)
}

fn did(text: &str, what: &str) -> Result<did_key::DidKey> {
    did_key::DidKey::parse(text).with_context(|| format!("{what} is not a did:key"))
}

fn dag_json(text: &str, what: &str) -> Result<Ipld> {
    serde_ipld_dagjson::from_slice(text.as_bytes())
        .with_context(|| format!("{what} is not DAG-JSON"))
}

fn base64_line(token: &Token) -> String {
    base64::engine::general_purpose::STANDARD.encode(token.bytes())
}

/// A token file's bytes: raw DAG-CBOR (an envelope starts with 0x82), or
/// base64 text as `vat ucan` prints it.
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.first() == Some(&0x82) {
        return Ok(bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .with_context(|| format!("{} is neither a token nor base64", path.display()))
}

pub fn delegate(home: &Home, request: &UcanDelegation, out: &mut Outcome) -> Result<()> {
    let sub = match &request.subject {
        UcanSubject::Home => Some(did(&home.did(), "this home's key")?),
        UcanSubject::Did(subject) => Some(did(subject, "--subject")?),
        UcanSubject::Any => None,
    };
    let delegation = Delegation {
        iss: did(&home.did(), "this home's key")?,
        aud: did(&request.to, "the audience")?,
        sub,
        cmd: Command::parse(&request.cmd)?,
        pol: Policy::parse(&dag_json(&request.policy, "--policy")?).context("--policy")?,
        nonce: nonce()?,
        nbf_s: request.not_before_in_s.map(|s| now_s() + s),
        exp_s: request.expires_in_s.map(|s| now_s() + s),
    };
    let token = Token::sign(Kind::Delegation, delegation.to_payload(), &|m| home.sign(m));
    out.line(base64_line(&token));
    Ok(())
}

pub fn invoke(home: &Home, request: &UcanInvocation, out: &mut Outcome) -> Result<()> {
    let Ipld::Map(args) = dag_json(&request.args, "--args")? else {
        bail!("--args must be a DAG-JSON map");
    };
    let proofs = request
        .proofs
        .iter()
        .map(|path| Token::decode(&read_token(path)?).with_context(|| path.display().to_string()))
        .collect::<Result<Vec<Token>>>()?;
    let prf = proofs.iter().map(Token::cid).collect();
    let home_did = home.did();
    let invocation = Invocation {
        iss: did(&home_did, "this home's key")?,
        sub: did(request.subject.as_deref().unwrap_or(&home_did), "--subject")?,
        aud: None,
        cmd: Command::parse(&request.cmd)?,
        args,
        prf,
        nonce: nonce()?,
        exp_s: request.expires_in_s.map(|s| now_s() + s),
        iat_s: Some(now_s()),
        cause: None,
    };
    let token = Token::sign(Kind::Invocation, invocation.to_payload(), &|m| home.sign(m));
    match &request.car {
        None => out.line(base64_line(&token)),
        Some(file) => {
            let blocks: Vec<(Cid, Vec<u8>)> = std::iter::once(&token)
                .chain(&proofs)
                .map(|t| (t.cid(), t.bytes().to_vec()))
                .collect();
            let car = ipvm::write_car(vec![token.cid()], &blocks);
            std::fs::write(file, &car)
                .with_context(|| format!("cannot write {}", file.display()))?;
            out.line(format!(
                "wrote {} (invocation {}, {} proofs)",
                file.display(),
                token.cid(),
                proofs.len()
            ));
        }
    }
    Ok(())
}

pub fn add_car(home: &Home, kernel: &mut Kernel, file: &Path, out: &mut Outcome) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sign = |m: &[u8]| home.sign(m);
    let mut bucket = Bucket::new(kernel, &home.did(), &sign)?;
    let (cid, car) = bucket
        .add_car(&bytes)
        .with_context(|| file.display().to_string())?;
    out.line(cid);
    eprintln!(
        "stored {} blocks; {} roots",
        car.blocks.len(),
        car.roots.len()
    );
    Ok(())
}

pub fn enqueue(home: &Home, kernel: &mut Kernel, cid: &str, out: &mut Outcome) -> Result<()> {
    let car = Cid::try_from(cid).with_context(|| format!("{cid:?} is not a CID"))?;
    let sign = |m: &[u8]| home.sign(m);
    let did = home.did();
    let mut bucket = Bucket::new(kernel, &did, &sign)?;
    let done = bucket.enqueue(&car, &did)?;
    out.line(format!(
        "{} ok, {} failed, {} had run before (receipts: vat ucan receipts --out FILE.car)",
        done.ok, done.failed, done.memo_hits
    ));
    Ok(())
}

pub fn receipts(home: &Home, kernel: &mut Kernel, file: &Path, out: &mut Outcome) -> Result<()> {
    let sign = |m: &[u8]| home.sign(m);
    let bucket = Bucket::new(kernel, &home.did(), &sign)?;
    let car = bucket.receipts_car()?;
    std::fs::write(file, &car).with_context(|| format!("cannot write {}", file.display()))?;
    out.line(format!("wrote {} ({} bytes)", file.display(), car.len()));
    Ok(())
}

fn describe_delegation(delegation: &Delegation) -> String {
    let subject = delegation
        .sub
        .as_ref()
        .map_or("any subject".to_owned(), ToString::to_string);
    let until = delegation
        .exp_s
        .map_or("no expiry".to_owned(), |s| format!("until {s}"));
    format!(
        "{} lets {} use {} on {subject}, {until}",
        delegation.iss, delegation.aud, delegation.cmd
    )
}

/// Judges each root of a CAR as an invocation, with the CAR's blocks as
/// the proofs it may link.
fn verify_car(car: &ipvm::Car, at_s: u64, out: &mut Outcome) -> Result<()> {
    let blocks: BTreeMap<Cid, &Vec<u8>> =
        car.blocks.iter().map(|(cid, data)| (*cid, data)).collect();
    for root in &car.roots {
        let bytes = blocks
            .get(root)
            .with_context(|| format!("root {root} is not in the CAR"))?;
        let validated = ucan::validate(bytes, &|cid| blocks.get(cid).map(|b| (*b).clone()), at_s)
            .map_err(|e| anyhow!("{}: invocation {root}: {e}", e.name()))?;
        out.line(describe_invocation(&validated));
    }
    Ok(())
}

fn describe_invocation(validated: &ucan::Validated) -> String {
    let invocation = &validated.invocation;
    format!(
        "invocation {}: {} may run {} on {} (a chain of {})",
        validated.cid,
        invocation.iss,
        invocation.cmd,
        invocation.sub,
        validated.proofs.len()
    )
}

pub fn verify(path: &Path, proofs: &[PathBuf], at_s: Option<u64>, out: &mut Outcome) -> Result<()> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(car) = ipvm::read_car(&raw) {
        return verify_car(&car, at_s.unwrap_or_else(now_s), out);
    }
    let bytes = read_token(path)?;
    let token = Token::decode(&bytes).with_context(|| path.display().to_string())?;
    if token.kind() == Kind::Delegation {
        let delegation = Delegation::from_token(&token)?;
        token
            .verify(&delegation.iss)
            .map_err(|_| anyhow!("InvalidSignature: the delegation's signature does not verify"))?;
        out.line(format!(
            "delegation {}: {}",
            token.cid(),
            describe_delegation(&delegation)
        ));
        return Ok(());
    }
    let store = proofs
        .iter()
        .map(|path| {
            let bytes = read_token(path)?;
            Ok((
                Token::decode(&bytes)
                    .with_context(|| path.display().to_string())?
                    .cid(),
                bytes,
            ))
        })
        .collect::<Result<BTreeMap<Cid, Vec<u8>>>>()?;
    let validated = ucan::validate(
        &bytes,
        &|cid| store.get(cid).cloned(),
        at_s.unwrap_or_else(now_s),
    )
    .map_err(|e| anyhow!("{}: {e}", e.name()))?;
    out.line(describe_invocation(&validated));
    Ok(())
}
