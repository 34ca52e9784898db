//! The HTTP device: seed 000's `system/invoke`, the FFI that hands an
//! invocation to a foreign function. The kernel's owner routes command
//! prefixes to HTTP endpoints (`vat http route /weather http://...`); a
//! message to the device's root (the pet name `http`) whose method is a
//! command under a routed prefix is kept, and sent once its crank has
//! committed: `POST URL` with `{"cmd": CMD, "args": [...]}` (plain JSON).
//! A 2xx response's JSON body fulfils the message's promise; any other
//! response, or none, rejects it with what happened.
//!
//! Whoever runs the kernel sends what is kept ([`send_pending`]): the
//! daemon on its turns, a job or the bucket VM while it runs. A request
//! sent before a crash whose answer was not committed is sent again on
//! restart (at least once, never silently dropped).
//!
//! Tables: `d<N>.route.<prefix>` (the URL), `d<N>.q.<seq>` (a kept
//! request: `{kpid, url, cmd, args}`), `d<N>.nextRequest`, `d<N>.requests`.

use std::time::Duration;

use kernel::{EndpointId, Kernel, KernelError, Kref, Message, Tables, TablesRef};
use serde_json::{Value as Json, json};
use swingstore::StoreError;
use vom::{FromPassable, Record, ToPassable};

use crate::keys;

/// The HTTP device's name, and the pet name its root is bound to.
pub const NAME: &str = "http";
/// `http_requests_pending_max`: how many requests may wait to be sent.
pub const HTTP_REQUESTS_PENDING_MAX: u64 = 10_000;
/// `http_response_bytes_max`: the largest response body read.
pub const HTTP_RESPONSE_BYTES_MAX: u64 = 1024 * 1024;
/// `http_timeout_ms`: how long one request may take, connecting included.
pub const HTTP_TIMEOUT_MS: u64 = 10_000;
/// `http_routes_max`: how many prefixes may be routed.
pub const HTTP_ROUTES_MAX: usize = 256;

fn route_key(device: &EndpointId, prefix: &str) -> String {
    keys::record(device, &format!("route.{prefix}"))
}

fn queue_prefix(device: &EndpointId) -> String {
    keys::record(device, "q.")
}

/// The HTTP device, made on first use: its root, bound to the pet name
/// `http` if that name is free. Idempotent.
pub fn install(kernel: &mut Kernel) -> Result<Kref, KernelError> {
    crate::install_named(kernel, NAME)
}

fn find(t: &TablesRef<'_>) -> Result<Option<(EndpointId, Kref)>, StoreError> {
    crate::find_named(t, NAME)
}

/// Why a route is refused.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("a route's prefix is a command path other than / (/name...), not {0:?}")]
    BadPrefix(String),
    #[error("{0:?} is not an http:// URL")]
    BadUrl(String),
    #[error("more than http_routes_max ({HTTP_ROUTES_MAX}) routes")]
    TooMany,
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Routes commands under `prefix` to `url` (installing the device).
pub fn route(kernel: &mut Kernel, prefix: &str, url: &str) -> Result<(), RouteError> {
    // A prefix is a command, and not `/` (which would route every message).
    if ucan::Command::parse(prefix).is_err() || prefix == "/" {
        return Err(RouteError::BadPrefix(prefix.to_owned()));
    }
    if !url.starts_with("http://") || url.contains(char::is_whitespace) {
        return Err(RouteError::BadUrl(url.to_owned()));
    }
    install(kernel)?;
    let (device, _) = find(&kernel.tables_ref())
        .map_err(KernelError::from)?
        .expect("kernel invariant: the http device was installed");
    let routes = routes(kernel)?;
    if routes.len() >= HTTP_ROUTES_MAX && !routes.iter().any(|(p, _)| p == prefix) {
        return Err(RouteError::TooMany);
    }
    kernel.in_crank(|k| {
        k.tables()
            .set(&route_key(&device, prefix), url)
            .map_err(KernelError::from)
    })?;
    kernel.commit()?;
    Ok(())
}

/// The routes, by prefix.
pub fn routes(kernel: &Kernel) -> Result<Vec<(String, String)>, KernelError> {
    let t = kernel.tables_ref();
    let Some((device, _)) = find(&t)? else {
        return Ok(Vec::new());
    };
    let prefix = route_key(&device, "");
    Ok(t.scan_prefix(&prefix)?
        .into_iter()
        .map(|(key, url)| (key[prefix.len()..].to_owned(), url))
        .collect())
}

/// The device's root, if a route covers `cmd`: where an invocation of
/// `cmd` goes (as the message `cmd(...args)`).
pub fn routed(kernel: &Kernel, cmd: &str) -> Result<Option<Kref>, KernelError> {
    let t = kernel.tables_ref();
    let Some((device, root)) = find(&t)? else {
        return Ok(None);
    };
    Ok(route_of(&t, &device, cmd)?.map(|_| root))
}

/// The URL of the longest routed prefix covering `cmd` by whole segments.
fn route_of(
    t: &TablesRef<'_>,
    device: &EndpointId,
    cmd: &str,
) -> Result<Option<String>, StoreError> {
    let mut path = cmd;
    loop {
        if let Some(url) = t.get(&route_key(device, path))? {
            return Ok(Some(url));
        }
        match path.rfind('/') {
            Some(0) | None => return Ok(None),
            Some(cut) => path = &path[..cut],
        }
    }
}

/// A message to the device (`result` its promise): kept to be sent, or
/// refused at once.
pub(crate) fn deliver(
    t: &mut Tables<'_>,
    device: &EndpointId,
    result: &Kref,
    message: Message,
) -> Result<(), StoreError> {
    let cmd = message.method.as_str();
    let Some(url) = route_of(&t.read(), device, cmd)? else {
        let reason = format!("no HTTP route covers {cmd:?} (vat http route PREFIX URL)");
        return t.reject_if_unresolved(Some(result), &reason);
    };
    let args = vom::capdata::decode(&message.args)
        .ok()
        .and_then(|value| Record::<Json>::from_passable(&value));
    let Some(Record(args)) = args else {
        return t.reject_if_unresolved(Some(result), "an HTTP call's arguments are plain data");
    };
    let pending = keys::record(device, "requests");
    if t.read().count(&pending)? >= HTTP_REQUESTS_PENDING_MAX {
        let reason = format!(
            "{HTTP_REQUESTS_PENDING_MAX} HTTP requests wait already (http_requests_pending_max)"
        );
        return t.reject_if_unresolved(Some(result), &reason);
    }
    let seq = t.next_id(&keys::record(device, "nextRequest"))?;
    let request = json!({"kpid": result.as_str(), "url": url, "cmd": cmd, "args": args});
    t.set(
        &format!("{}{seq:020}", queue_prefix(device)),
        &request.to_string(),
    )?;
    t.add_to_count(&pending, 1)?;
    t.set_promise_decider(result, Some(device.as_str()))?;
    t.incref(result)
}

/// Sends every kept request (committed: call it after a commit), and
/// settles each in a crank of its own with what came back; returns how
/// many were sent. Call it with nothing uncommitted.
pub fn send_pending(kernel: &mut Kernel) -> Result<usize, KernelError> {
    let Some((device, _)) = find(&kernel.tables_ref())? else {
        return Ok(0);
    };
    let kept = kernel.tables_ref().scan_prefix(&queue_prefix(&device))?;
    if kept.is_empty() {
        return Ok(0);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(HTTP_TIMEOUT_MS)))
        .http_status_as_error(false)
        .build()
        .into();
    for (key, text) in &kept {
        let request: Json = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is JSON: {e}"));
        let outcome = post(&agent, &request);
        kernel.in_crank(|k| settle(&mut k.tables(), &device, key, &request, outcome))?;
        kernel.commit()?;
    }
    Ok(kept.len())
}

/// One request: the JSON a 2xx answered, or why there is none.
fn post(agent: &ureq::Agent, request: &Json) -> Result<Json, String> {
    let url = request["url"].as_str().unwrap_or_default();
    let body = json!({"cmd": request["cmd"], "args": request["args"]}).to_string();
    let mut response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body.as_str())
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(HTTP_RESPONSE_BYTES_MAX)
        .read_to_string()
        .map_err(|e| {
            format!(
                "POST {url}: the response: {e} (http_response_bytes_max {HTTP_RESPONSE_BYTES_MAX})"
            )
        })?;
    if !status.is_success() {
        return Err(format!(
            "POST {url}: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("POST {url}: the response is not JSON: {e}"))
}

fn settle(
    t: &mut Tables<'_>,
    device: &EndpointId,
    key: &str,
    request: &Json,
    outcome: Result<Json, String>,
) -> Result<(), KernelError> {
    let kpid = request["kpid"]
        .as_str()
        .and_then(Kref::parse)
        .unwrap_or_else(|| panic!("kernel invariant: {key} names a kpid"));
    t.delete(key)?;
    t.add_to_count(&keys::record(device, "requests"), -1)?;
    if t.read().promise_state(&kpid)? == Some(kernel::PromiseState::Unresolved) {
        match outcome {
            Ok(json) => t.resolve(
                &kpid,
                false,
                &vom::capdata::encode(&Record(json).to_passable()),
            )?,
            Err(reason) => t.reject_if_unresolved(Some(&kpid), &reason)?,
        }
    }
    t.decref(&kpid)?;
    Ok(())
}

/// The device's records: as many kept requests as it counts.
pub(crate) fn check(t: &TablesRef<'_>, device: &EndpointId) -> Result<Vec<String>, StoreError> {
    let kept = t.scan_prefix(&queue_prefix(device))?.len() as u64;
    let counted = t.count(&keys::record(device, "requests"))?;
    Ok(if kept == counted {
        Vec::new()
    } else {
        vec![format!(
            "{device} (http) keeps {kept} requests but counts {counted}"
        )]
    })
}
