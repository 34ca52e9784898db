//! The daemon's HTTP face (`vat start --http ADDR`), on a thread of its own:
//!
//! - `/captp`: JSON CapTP over WebSocket, one message per frame, for
//!   browsers and Node peers. Each WebSocket is bridged to a byte stream of
//!   netstrings that the network loop takes as any accepted connection, so
//!   these peers have the same tables, limits and gate as the others (the
//!   gate restores only what a sturdy ref's swiss number names).
//! - `/world`: the text client of `examples/world`, a static page with a
//!   small JSON CapTP client of its own. It needs no token: the lobby's
//!   swiss number, in the URL's fragment (`vat share lobby --web`), is the
//!   authority, and the fragment never reaches this server.
//! - `/`: the inspector page; `/live`: a WebSocket pushing what `vat
//!   inspect` says, once a second; `/send`: a message to a pet name, as
//!   `vat send` sends it. These need the token `vat start` printed
//!   (`?token=`): nothing of the kernel is shown without it.
//!
//! The face reaches the kernel as the CLI does, through the home's socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::request::{Outcome, Request, SendArgs};

/// A bridged WebSocket's two ends, as the network loop takes them.
type DuplexRead = tokio::io::ReadHalf<tokio::io::DuplexStream>;
type DuplexWrite = tokio::io::WriteHalf<tokio::io::DuplexStream>;

/// Hands a connection to the network loop (`NodeSender::accept`); false
/// once the loop is gone.
pub type Accept = Box<dyn Fn(DuplexRead, DuplexWrite) -> bool + Send + Sync>;

/// How often `/live` pushes the inspector's document.
const LIVE_INTERVAL_MS: u64 = 1_000;

struct Face {
    token: String,
    socket: PathBuf,
    accept: Accept,
    /// Places for `/captp` WebSockets (`connections_max`).
    places: Arc<Semaphore>,
    frame_bytes_max: usize,
}

/// Where a started face serves, and the inspector's token.
pub struct Serving {
    pub address: std::net::SocketAddr,
    token: String,
}

impl Serving {
    /// The inspector's URL, with its token.
    pub fn inspector_url(&self) -> String {
        format!("http://{}/?token={}", self.address, self.token)
    }
}

/// The world's text client for the lobby a swiss number names.
pub fn world_url(address: std::net::SocketAddr, swiss: &str) -> String {
    format!("http://{address}/world#{swiss}")
}

/// Serves the face on `address`.
pub fn start(
    address: &str,
    socket: PathBuf,
    accept: Accept,
    connections_max: usize,
) -> Result<Serving> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot serve HTTP on {address}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let token = new_token()?;
    let face = Arc::new(Face {
        token: token.clone(),
        socket,
        accept,
        places: Arc::new(Semaphore::new(connections_max.max(1))),
        frame_bytes_max: captp::Limits::default().frame_bytes_max,
    });
    let app = Router::new()
        .route("/", get(inspector))
        .route("/live", get(live))
        .route("/send", post(send))
        .route("/captp", get(captp_socket))
        .route("/world", get(world))
        .with_state(face);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP face's runtime")?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the HTTP face stopped: {e}");
            }
        });
    });
    Ok(Serving {
        address: bound,
        token,
    })
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(bs58::encode(bytes).into_string())
}

#[derive(serde::Deserialize)]
struct Token {
    token: Option<String>,
}

/// Whether the request carries the face's token (compared in constant time).
fn authorized(face: &Face, given: &Token) -> bool {
    let Some(given) = &given.token else {
        return false;
    };
    let (a, b) = (given.as_bytes(), face.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refused() -> Response {
    let text = "a token is needed: open the URL `vat start --http` printed (?token=...)";
    (StatusCode::UNAUTHORIZED, text).into_response()
}

async fn inspector(State(face): State<Arc<Face>>, Query(token): Query<Token>) -> Response {
    if !authorized(&face, &token) {
        return refused();
    }
    Html(include_str!("face/inspector.html")).into_response()
}

async fn world() -> Response {
    Html(include_str!("face/world.html")).into_response()
}

/// One request to the daemon, as the CLI makes it (off the async threads).
async fn ask(face: &Face, request: Request) -> Outcome {
    let socket = face.socket.clone();
    let asked = tokio::task::spawn_blocking(move || {
        let stream = crate::client::connect(&socket)
            .ok_or_else(|| anyhow::anyhow!("the daemon does not answer"))?;
        crate::client::request(stream, &request)
    })
    .await;
    match asked {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::error(&format!("{e:#}")),
        Err(e) => Outcome::error(&e.to_string()),
    }
}

async fn live(
    State(face): State<Arc<Face>>,
    Query(token): Query<Token>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The token first: without it, not even whether this is a WebSocket.
    if !authorized(&face, &token) {
        return refused();
    }
    match upgrade {
        Ok(upgrade) => upgrade.on_upgrade(move |socket| push_inspections(face, socket)),
        Err(rejection) => rejection.into_response(),
    }
}

/// Sends what `vat inspect` says, once a second, until the page goes.
async fn push_inspections(face: Arc<Face>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let pushing = async {
        loop {
            let outcome = ask(&face, Request::Inspect).await;
            let text = if outcome.failed {
                serde_json::json!({"error": outcome.stderr.trim()}).to_string()
            } else {
                outcome.stdout.trim().to_owned()
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(LIVE_INTERVAL_MS)).await;
        }
    };
    let closing = async { while let Some(Ok(_)) = stream.next().await {} };
    tokio::select! {
        () = pushing => {}
        () = closing => {}
    }
}

#[derive(serde::Deserialize)]
struct SendForm {
    target: String,
    method: String,
    #[serde(default)]
    args: Vec<String>,
}

async fn send(
    State(face): State<Arc<Face>>,
    Query(token): Query<Token>,
    axum::Json(form): axum::Json<SendForm>,
) -> Response {
    if !authorized(&face, &token) {
        return refused();
    }
    let request = Request::Send(SendArgs {
        target: form.target,
        method: form.method,
        args: form.args,
        bind_as: None,
        idempotency_key: None,
    });
    let outcome = ask(&face, request).await;
    let output = if outcome.failed {
        outcome
            .stderr
            .trim()
            .trim_start_matches("error: ")
            .to_owned()
    } else {
        outcome.stdout.trim().to_owned()
    };
    axum::Json(serde_json::json!({"ok": !outcome.failed, "output": output})).into_response()
}

async fn captp_socket(State(face): State<Arc<Face>>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(place) = face.places.clone().try_acquire_owned() else {
        let text = "too many CapTP WebSockets (connections_max)";
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    };
    upgrade
        .max_message_size(face.frame_bytes_max)
        .on_upgrade(move |socket| async move {
            bridge(&face, socket).await;
            drop(place);
        })
}

/// Carries a CapTP WebSocket's messages to and from the network loop as
/// netstrings on an in-memory byte stream, until either side ends.
async fn bridge(face: &Face, socket: WebSocket) {
    let (ours, theirs) = tokio::io::duplex(face.frame_bytes_max + 64);
    let (their_read, their_write) = tokio::io::split(theirs);
    if !(face.accept)(their_read, their_write) {
        return;
    }
    let (mut our_read, mut our_write) = tokio::io::split(ours);
    let (mut sink, mut stream) = socket.split();
    let inbound = async {
        while let Some(Ok(message)) = stream.next().await {
            let bytes = match message {
                Message::Text(text) => captp::json::netstring(text.as_bytes()),
                Message::Binary(bytes) => captp::json::netstring(&bytes),
                Message::Close(_) => break,
                _ => continue,
            };
            if our_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let outbound = async {
        let limits = captp::Limits::default();
        while let Ok(Some(bytes)) =
            captp::transport::read_netstring_within(&mut our_read, &limits, None).await
        {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}
