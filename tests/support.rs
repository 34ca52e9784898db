//! What every end-to-end test needs: a fresh home in a temporary folder, the
//! real `vat` binary run against it, and the guest modules built for Wasm.
//!
//! The binary and the guests are built by `scripts/test` before the tests
//! run (`VAT_BIN` and `VAT_GUESTS` override where they are looked for).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder cargo builds into, found from this test binary's own path
/// (`<target>/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// The `vat` binary under test.
pub fn vat_bin() -> PathBuf {
    let path = std::env::var_os("VAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(Path::parent)
                .expect("profile dir")
                .join("vat")
        });
    assert!(
        path.is_file(),
        "{} is missing: build it first (scripts/test does: cargo build -p vat-cli)",
        path.display()
    );
    path
}

/// A guest module, `counter`, `pingpong` or `faulty`, built for wasm32.
pub fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("VAT_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-unknown-unknown/guest"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the guests first (scripts/build-guests)",
        path.display()
    );
    path
}

/// The Python with pycapnp and libipld that `scripts/test` prepares (`VAT_PYTHON`
/// overrides it).
pub fn python() -> PathBuf {
    let path = std::env::var_os("VAT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("pyenv/bin/python"));
    assert!(
        path.is_file(),
        "{} is missing: scripts/test makes it (python3 -m venv, pip install pycapnp libipld)",
        path.display()
    );
    path
}

/// `node SCRIPT ARGS` for a script of `tests/node` (the Node peers on
/// @endo/captp), with `--expose-gc` so a script can force a collection
/// (`script` may also be a Node flag, the script then first in `args`).
pub fn node_script(script: &str, args: &[&str]) -> Command {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/@endo/captp").is_dir(),
        "{} has no node_modules: scripts/test installs them (npm ci --prefix tests/node)",
        dir.display()
    );
    let mut command = Command::new("node");
    command
        .current_dir(&dir)
        .arg("--expose-gc")
        .arg(script)
        .args(args)
        // Node's note that WebSocket is experimental is no failure.
        .env("NODE_NO_WARNINGS", "1");
    command
}

/// An @endo/captp server in Node (`tests/node/bench.mjs serve`) whose
/// bootstrap restores any swiss number to an object with `echo(x)`; the
/// child and the port it listens on (127.0.0.1).
pub fn node_echo_server() -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = node_script("bench.mjs", &["serve"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("the server's port");
    let json: serde_json::Value = serde_json::from_str(&line).expect("{\"port\"}");
    let port = json["port"].as_u64().expect("a port") as u16;
    (child, port)
}

/// Where tests keep what a person may want to look at afterwards
/// (screenshots): `<target>/artifacts`, made if missing.
pub fn artifacts_dir() -> PathBuf {
    let dir = target_dir().join("artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts folder");
    dir
}

/// The repository's root folder: where `cargo test` says this crate is
/// when it runs the test (a build folder shared between checkouts may hold
/// a test binary compiled in another), else where it was compiled.
pub fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// A TCP port nothing listens on right now (for a daemon that must come
/// back on the same address after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A vat home in a temporary folder, removed when dropped.
#[derive(Debug)]
pub struct VatHome {
    dir: tempfile::TempDir,
}

impl Default for VatHome {
    fn default() -> Self {
        Self::new()
    }
}

impl VatHome {
    /// A home made by `vat init`.
    pub fn new() -> VatHome {
        let home = VatHome::uninitialized();
        home.ok(&["init"]);
        home
    }

    /// A folder for a home that `vat init` has not created.
    pub fn uninitialized() -> VatHome {
        VatHome {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A `vat` command against this home, ready to run or spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(vat_bin());
        command
            .arg("--home")
            .arg(self.path())
            .args(args)
            .env_remove("VAT_HOME");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run vat")
    }

    /// Runs `vat ARGS`, expects success, returns stdout without the trailing newline.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vat {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 output")
            .trim_end()
            .to_owned()
    }

    /// Runs `vat ARGS`, expects a non-zero exit with exactly one line on
    /// stderr, and returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).expect("utf-8 errors");
        assert!(
            !out.status.success(),
            "vat {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "vat {args:?}: one error line expected, got {stderr:?}"
        );
        stderr.trim_end().to_owned()
    }

    /// Every key and value in the home's store, read straight from SQLite.
    pub fn dump(&self) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open_with_flags(
            self.path().join("store.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open store");
        let mut stmt = conn
            .prepare("SELECT key, value FROM kv ORDER BY key")
            .expect("query");
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("kv rows")
    }

    /// One key of the store, read straight from SQLite.
    pub fn get(&self, key: &str) -> Option<String> {
        self.dump()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Runs `vat check` and expects the kernel's tables to be consistent.
    pub fn check(&self) {
        let report = self.ok(&["check"]);
        assert!(report.starts_with("ok: "), "vat check: {report}");
    }

    /// SQLite's own integrity check of the store file.
    pub fn integrity(&self) -> String {
        let conn =
            rusqlite::Connection::open(self.path().join("store.sqlite")).expect("open store");
        conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity_check")
    }

    /// Spawns `guest` as vat `name`, returning the root kref it printed.
    pub fn spawn(&self, name: &str, guest_name: &str) -> String {
        let module = guest(guest_name);
        self.ok(&["spawn", name, module.to_str().expect("utf-8 path")])
    }
}

/// Polls `ready` every 20 ms until it holds; fails naming `what` after `limit_s` seconds.
pub fn wait_until(what: &str, limit_s: u64, mut ready: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed().as_secs() < limit_s,
            "{what} (waited {limit_s} s)"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A process's resident memory (`VmRSS`), in bytes.
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Sends SIGKILL to `pid`. A process that exited meanwhile is no failure.
pub fn kill_hard(pid: u32) {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    // The signal is delivered asynchronously: until the process is dead (a
    // zombie, or gone), a client may still connect to its socket and lose
    // its request, which is not what the caller is testing.
    wait_until(
        "the killed process to die",
        10,
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        },
    );
}

/// A `vat start` daemon on a home, killed when dropped if still running.
#[derive(Debug)]
pub struct Daemon {
    pub child: std::process::Child,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VatHome {
    /// Where the daemon's stderr goes: `daemon.log` beside the home.
    pub fn daemon_log(&self) -> PathBuf {
        self.path().with_extension("daemon.log")
    }

    /// Starts `vat start` on this home and waits until it serves its socket.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&["start"])
    }

    /// Starts `vat start --listen ADDR` (CapTP on ADDR; port 0 picks one).
    pub fn start_listening(&self, address: &str) -> Daemon {
        self.start_daemon_with(&["start", "--listen", address])
    }

    /// Starts `vat ARGS` (a `start` with flags) and waits until it serves its socket.
    pub fn start_daemon_with(&self, args: &[&str]) -> Daemon {
        self.start_daemon_as(self.command(args))
    }

    /// Starts `vat ARGS` in the network namespace `netns` (`ip netns exec`);
    /// the CLI still reaches it through the home's socket.
    pub fn start_daemon_in(&self, netns: &str, args: &[&str]) -> Daemon {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(vat_bin())
            .arg("--home")
            .arg(self.path())
            .args(args)
            .env_remove("VAT_HOME");
        self.start_daemon_as(command)
    }

    /// Starts `vat start --listen 127.0.0.1:0 --http` and waits for its
    /// HTTP face: the daemon, the inspector's URL (with its token, from
    /// HOME/http.url) and the face's `host:port`.
    pub fn start_with_face(&self) -> (Daemon, String, String) {
        self.start_with_face_at("127.0.0.1:0")
    }

    /// As [`VatHome::start_with_face`], the face on `http` (`HOST:PORT`).
    pub fn start_with_face_at(&self, http: &str) -> (Daemon, String, String) {
        let file = self.path().join("http.url");
        let _ = std::fs::remove_file(&file);
        let daemon = self.start_daemon_with(&["start", "--listen", "127.0.0.1:0", "--http", http]);
        wait_until("the daemon wrote no HOME/http.url", 30, || file.is_file());
        let url = std::fs::read_to_string(file).expect("HOME/http.url");
        let url = url.trim().to_owned();
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        (daemon, url, host)
    }

    fn start_daemon_as(&self, mut command: Command) -> Daemon {
        let child = command
            .stdout(std::process::Stdio::null())
            // Kept beside the home, for a failing test to show.
            .stderr(std::fs::File::create(self.daemon_log()).expect("daemon log"))
            .spawn()
            .expect("start the daemon");
        let daemon = Daemon { child };
        let socket = self.path().join("vat.sock");
        wait_until("the daemon did not come up", 60, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        daemon
    }
}

impl VatHome {
    /// Sends `vat send TARGET METHOD` (no arguments) straight to the
    /// daemon's socket, as the CLI does, without a process per message.
    /// `None`: the daemon went away before it answered; else the command's
    /// output, or its error line.
    pub fn send_to_daemon(
        &self,
        target: &str,
        method: &str,
        idempotency_key: Option<&str>,
    ) -> Option<Result<String, String>> {
        use std::io::{BufRead, Write};
        let request = serde_json::json!({"Send": {
            "target": target,
            "method": method,
            "args": [],
            "bind_as": null,
            "idempotency_key": idempotency_key,
        }});
        let socket = self.path().join("vat.sock");
        let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
        stream.write_all(format!("{request}\n").as_bytes()).ok()?;
        let mut reply = String::new();
        std::io::BufReader::new(stream).read_line(&mut reply).ok()?;
        if reply.is_empty() {
            return None;
        }
        let outcome: serde_json::Value = serde_json::from_str(&reply).expect("the daemon's reply");
        let text = |field: &str| outcome[field].as_str().unwrap_or("").trim_end().to_owned();
        Some(if outcome["failed"].as_bool() == Some(true) {
            Err(text("stderr"))
        } else {
            Ok(text("stdout"))
        })
    }
}

/// The `vat-supervisor` processes whose parent is `parent`, with the vat each hosts.
pub fn workers_of(parent: u32) -> Vec<(u32, String)> {
    let out = Command::new("ps")
        .args(["-eo", "pid,ppid,args"])
        .output()
        .expect("ps");
    String::from_utf8(out.stdout)
        .expect("ps output")
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            let args: Vec<&str> = fields.collect();
            let is_worker =
                args.len() == 3 && args[0].ends_with("vat-supervisor") && args[1] == "--vat";
            (ppid == parent && is_worker).then(|| (pid, args[2].to_owned()))
        })
        .collect()
}

/// A capnp-rpc (Rust) client of a kernel: what any Cap'n Proto peer does.
pub mod rpc {
    use std::future::Future;

    use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
    use captp::exo_capnp::{exo, gate};
    use futures::AsyncReadExt;

    /// Connects to `address`, bootstraps the gate, and runs `body` with it
    /// on a single-threaded runtime (capnp-rpc's objects are not `Send`).
    pub fn with_gate<F, Fut, T>(address: &str, body: F) -> T
    where
        F: FnOnce(gate::Client) -> Fut,
        Fut: Future<Output = T>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect to the kernel");
            stream.set_nodelay(true).expect("nodelay");
            let (reader, writer) =
                tokio_util::compat::TokioAsyncReadCompatExt::compat(stream).split();
            let network = Box::new(twoparty::VatNetwork::new(
                futures::io::BufReader::new(reader),
                futures::io::BufWriter::new(writer),
                rpc_twoparty_capnp::Side::Client,
                Default::default(),
            ));
            let mut system = RpcSystem::new(network, None);
            let gate: gate::Client = system.bootstrap(rpc_twoparty_capnp::Side::Server);
            tokio::task::spawn_local(system);
            body(gate).await
        })
    }

    /// The object a swiss number names (pipelined: no round trip of its own).
    pub fn restore(gate: &gate::Client, swiss: &str) -> exo::Client {
        let mut request = gate.restore_request();
        request.get().set_swiss(swiss);
        request.send().pipeline.get_object()
    }

    /// A call request of `method` with a smallcaps `body` and capabilities.
    pub fn request(
        target: &exo::Client,
        method: &str,
        body: &str,
        caps: Vec<exo::Client>,
    ) -> capnp::capability::Request<exo::call_params::Owned, exo::call_results::Owned> {
        let mut request = target.call_request();
        let mut params = request.get();
        params.set_method(method);
        let mut args = params.init_args();
        args.set_body(body);
        let mut list = args.init_caps(caps.len() as u32);
        for (i, cap) in caps.into_iter().enumerate() {
            list.set(i as u32, cap.client.hook);
        }
        request
    }

    /// Calls and waits: the result's smallcaps body, or the exception's text.
    pub async fn call(
        target: &exo::Client,
        method: &str,
        body: &str,
        caps: Vec<exo::Client>,
    ) -> Result<String, String> {
        let response = request(target, method, body, caps)
            .send()
            .promise
            .await
            .map_err(|e| e.to_string())?;
        let results = response.get().map_err(|e| e.to_string())?;
        let body = results
            .get_result()
            .and_then(|r| r.get_body())
            .map_err(|e| e.to_string())?;
        Ok(body.to_str().map_err(|e| e.to_string())?.to_owned())
    }
}

/// A peer that writes raw frames, well-formed or not.
#[derive(Debug)]
pub struct RawPeer {
    pub stream: std::net::TcpStream,
    /// What each of our questions expects back.
    pub kinds: std::collections::HashMap<u32, captp::ReturnKind>,
    /// How many bytes of frames it has read.
    pub bytes_read: u64,
}

impl RawPeer {
    pub fn connect(address: &str) -> RawPeer {
        let stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        RawPeer {
            stream,
            kinds: Default::default(),
            bytes_read: 0,
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write;
        // The kernel may already have closed: later reads tell.
        let _ = self.stream.write_all(bytes);
    }

    pub fn send(&mut self, message: &captp::Message) {
        match message {
            captp::Message::Bootstrap { question } => {
                self.kinds.insert(*question, captp::ReturnKind::Bootstrap);
            }
            captp::Message::Call(call) => {
                let kind = match call.content {
                    captp::CallContent::Restore { .. } => captp::ReturnKind::Restore,
                    _ => captp::ReturnKind::Exo,
                };
                self.kinds.insert(call.question, kind);
            }
            _ => {}
        }
        self.send_bytes(&captp::wire::encode(message));
    }

    /// The next frame, or `None` once the kernel closed the connection.
    pub fn receive(&mut self) -> Option<captp::Message> {
        use std::io::Read;
        let limits = captp::Limits::default();
        let mut frame = Vec::new();
        let total = loop {
            if let Some(total) = captp::wire::frame_length(&frame, &limits).unwrap() {
                break total;
            }
            let mut word = [0u8; 4];
            if self.stream.read_exact(&mut word).is_err() {
                return None;
            }
            frame.extend_from_slice(&word);
        };
        let mut rest = vec![0u8; total - frame.len()];
        self.stream.read_exact(&mut rest).ok()?;
        frame.extend(rest);
        self.bytes_read += frame.len() as u64;
        let kinds = self.kinds.clone();
        Some(captp::wire::decode(&frame, &limits, &|q| kinds.get(&q).copied()).unwrap())
    }

    /// Reads until the kernel's `Abort`, which must be followed by the end
    /// of the connection; returns its reason.
    pub fn expect_abort(&mut self) -> String {
        loop {
            match self.receive() {
                Some(captp::Message::Abort { reason }) => {
                    assert!(
                        self.receive().is_none(),
                        "the connection stays open after Abort"
                    );
                    return reason;
                }
                Some(_) => continue,
                None => panic!("the connection closed without an Abort"),
            }
        }
    }

    /// Bootstraps and restores `swiss`; returns the export id it got.
    pub fn restore(&mut self, swiss: &str) -> u32 {
        self.try_restore(swiss)
            .unwrap_or_else(|e| panic!("restore failed: {e}"))
    }

    /// Bootstraps and restores `swiss`: the export id it got, or what the
    /// restore's answer said instead.
    pub fn try_restore(&mut self, swiss: &str) -> Result<u32, String> {
        self.send(&captp::Message::Bootstrap { question: 0 });
        self.send(&captp::Message::Call(captp::Call {
            question: 1,
            target: captp::Target::Answer {
                question: 0,
                transform: vec![],
            },
            content: captp::CallContent::Restore {
                swiss: swiss.to_owned(),
            },
            caps: vec![],
        }));
        loop {
            let Some(message) = self.receive() else {
                return Err("the connection closed".into());
            };
            if let captp::Message::Return(ret) = message
                && ret.answer == 1
            {
                let captp::ReturnOutcome::Results { caps, .. } = ret.outcome else {
                    return Err(format!("{:?}", ret.outcome));
                };
                let captp::CapDescriptor::SenderHosted(id) = caps[0] else {
                    panic!("restore returned {caps:?}")
                };
                return Ok(id);
            }
        }
    }

    /// Reads until the return of our question `question` (other frames are
    /// skipped); panics if the connection ends first.
    pub fn answer(&mut self, question: u32) -> captp::Return {
        loop {
            match self.receive() {
                Some(captp::Message::Return(ret)) if ret.answer == question => return ret,
                Some(_) => continue,
                None => panic!("the connection ended before question {question} was answered"),
            }
        }
    }

    pub fn call(&mut self, question: u32, target: captp::Target, method: &str) {
        self.send(&captp::Message::Call(captp::Call {
            question,
            target,
            content: captp::CallContent::Exo {
                method: method.to_owned(),
                args: captp::Body {
                    body: "#[]".into(),
                    caps: vec![],
                },
            },
            caps: vec![],
        }));
    }
}
