//! `vat`: run a durable object-capability kernel from the command line.
//!
//! Commands run in one of two places, with the same code and output:
//! - in this process, against the home's store: it opens the store, does its
//!   work, commits and exits, so state carries over between invocations (a
//!   home is used by one process at a time; others wait `--lock-wait-ms`);
//! - in the home's daemon (`vat start`), when one is running: the command is
//!   sent over `HOME/vat.sock` and the daemon's long-lived kernel runs it,
//!   with its vats' workers kept alive between commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kernel::captp;
use kernel::display::{parse_arg, to_display};
use kernel::node::Node;
use kernel::{
    CommitPolicy, Home, InitOutcome, Kernel, LOCK_WAIT_MS_DEFAULT, PromiseState, VatOptions,
    WorkerKind,
};
use serde::{Deserialize, Serialize};
use vom::Value;

/// How many disconnected peers `vat peers` lists (the most recent).
const PEERS_GONE_SHOWN: usize = 10;
/// The daemon's socket, inside the home.
const SOCKET_FILE: &str = "vat.sock";
/// The largest request the daemon reads (`request_bytes_max`).
const REQUEST_BYTES_MAX: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "vat",
    version,
    about = "A durable object-capability vat kernel"
)]
struct Cli {
    /// The home folder: store and kernel key.
    #[arg(long, global = true, env = "VAT_HOME", default_value = ".vat")]
    home: PathBuf,

    /// How long to wait for another `vat` process using the same home.
    #[arg(long, global = true, default_value_t = LOCK_WAIT_MS_DEFAULT)]
    lock_wait_ms: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Worker {
    Process,
    Thread,
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
enum Command {
    /// Create the home: an empty store and a new ed25519 kernel key.
    Init,
    /// Start a vat from a Wasm module and bind NAME to its root object.
    Spawn {
        /// The vat's name, also bound as a pet name for its root object.
        name: String,
        /// The vat's Wasm module (built against the vom guest SDK).
        module: PathBuf,
        /// Where the guest runs: its own `vat-supervisor` process, or in this process.
        #[arg(long, value_enum, default_value_t = Worker::Process)]
        worker: Worker,
        /// Fuel one delivery may burn (fuel_per_delivery).
        #[arg(long, default_value_t = VatOptions::default().fuel_per_delivery)]
        fuel: u64,
        /// Wall-clock time one delivery may take, in ms (deadline_ms).
        #[arg(long, default_value_t = VatOptions::default().deadline_ms)]
        deadline_ms: u64,
        /// The most linear memory the guest may have (memory_bytes_max).
        #[arg(long, default_value_t = VatOptions::default().memory_bytes_max)]
        memory_bytes: usize,
        /// The largest message, result or syscall payload (message_bytes_max).
        #[arg(long, default_value_t = VatOptions::default().message_bytes_max)]
        message_bytes: usize,
        /// The most syscalls one delivery may make (syscalls_per_delivery_max).
        #[arg(long, default_value_t = VatOptions::default().syscalls_per_delivery_max)]
        syscalls_max: u32,
        /// Queue messages to promises this vat decides in the kernel, rather
        /// than pipelining them to the vat.
        #[arg(long)]
        no_pipelining: bool,
        /// Suspend the vat after this many faulted deliveries in a row
        /// (faults_in_a_row_max); each is rolled back, and its data is kept.
        #[arg(long, default_value_t = VatOptions::default().faults_in_a_row_max,
              value_parser = clap::value_parser!(u32).range(1..))]
        faults_in_a_row_max: u32,
    },
    /// Send METHOD(ARGS) to TARGET, run the kernel until the result settles, print it.
    ///
    /// Each ARG is a pet name or kref (a reference), else JSON, else a string.
    /// JSON may use {"$ref": NAME}, {"$bigint": "12"}, {"$undefined": true}.
    /// A rejected result prints the error and exits 1.
    #[command(allow_negative_numbers = true)]
    Send {
        /// A pet name or a kref (ko12, kp40).
        target: String,
        /// The method to call.
        method: String,
        /// The arguments: pet names or krefs, JSON, or strings.
        args: Vec<String>,
        /// Bind the returned reference to this pet name.
        #[arg(long = "as", value_name = "NAME")]
        bind_as: Option<String>,
        /// Send at most once under KEY: a retry with the same KEY (after a
        /// crash, a killed client, a lost reply) is not sent again but gets
        /// the first try's result, waiting for it if need be. The kernel
        /// keeps the most recent idempotency_keys_max (10,000) keys.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Upgrade vat NAME to a new version of its module, keeping its durable state.
    ///
    /// The new version starts against the same vatstore and must define again
    /// every durable kind the old one made; if it does not, or fails to start,
    /// nothing changes and the old version keeps running. Promises the vat
    /// decided are rejected ("upgraded"); its non-durable objects are gone.
    Upgrade {
        /// The vat's name.
        name: String,
        /// The new version's Wasm module.
        module: PathBuf,
    },
    /// Bind pet name NAME to KREF (a reference a result showed), for good.
    ///
    /// A kref a result shows stays usable for the next shown_refs_max
    /// (1,000) references shown; a pet name keeps it until `vat unname`.
    Name {
        /// A kref (ko12, kp40) or a pet name.
        kref: String,
        /// The pet name to bind.
        name: String,
    },
    /// Unbind pet name NAME; what it named goes once nothing else holds it.
    Unname {
        /// The pet name.
        name: String,
    },
    /// Let go of KREF, a reference a result showed (without KREF: of all of
    /// them), so that it goes once nothing else holds it.
    Forget {
        /// A kref a result showed.
        kref: Option<String>,
    },
    /// Restart suspended vat NAME on its module and its kept state.
    ///
    /// A vat is suspended when its start faults or too many deliveries in a
    /// row fault; nothing of it is lost. To run new code instead, use
    /// `vat upgrade NAME FIXED.wasm`.
    Resume {
        /// The vat's name.
        name: String,
    },
    /// End vat NAME: its worker stops and messages to it are rejected. Its
    /// data is kept (`vat list` shows its size) until `vat rm NAME`.
    Terminate {
        /// The vat's name.
        name: String,
    },
    /// Delete the data of vat NAME, which must be suspended or terminated
    /// (`vat terminate NAME` first): its vatstore and c-list, for good.
    Rm {
        /// The vat's name.
        name: String,
    },
    /// Have vat NAME delete the durable objects nothing refers to any more
    /// (a `bringOutYourDead` delivery; the kernel also sends one every
    /// 1000 deliveries).
    Collect {
        /// The vat's name.
        name: String,
    },
    /// Content-addressed Wasm modules (bundles).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Content-addressed values, for IPVM job inputs.
    #[command(subcommand)]
    Value(ValueCommand),
    /// IPVM jobs: signed workflows of Wasm tasks.
    #[command(subcommand)]
    Job(JobCommand),
    /// List vats, their workers, pet names, and their krefs.
    List,
    /// Print the kernel's identity (did:key).
    Key,
    /// Check the kernel's tables for consistency; print each discrepancy, exit 1 if any.
    Check,
    /// Run the kernel as a daemon for this home: vats' workers stay up, and
    /// other `vat` commands are served over HOME/vat.sock. Runs until `vat stop`.
    Start {
        /// Also accept CapTP (Cap'n Proto RPC) connections here: host:port
        /// (port 0 picks one) or unix:PATH.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a sturdy ref (captp://DID@ADDRESS/SWISS) for TARGET: whoever
    /// holds it can reach TARGET over CapTP while the daemon listens.
    Share {
        /// A pet name or kref of an object.
        target: String,
    },
    /// Connect to the kernel a sturdy ref names and bind NAME to its object;
    /// `vat send NAME ...` then reaches it. Needs the daemon (`vat start`).
    Enliven {
        /// The sturdy ref, as `vat share` printed it.
        uri: String,
        /// The pet name to bind.
        #[arg(long = "as", value_name = "NAME")]
        bind_as: String,
    },
    /// List CapTP peers: who, their state, how many references they share.
    Peers,
    /// Stop the home's daemon.
    Stop,
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
enum BundleCommand {
    /// Store a Wasm module; print its CID (raw, sha2-256: the CID IPFS gives those bytes).
    Add {
        /// The module file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
enum ValueCommand {
    /// Store a JSON value; print its CID (DAG-CBOR, sha2-256). Jobs name it as {"/": CID}.
    Add {
        /// The value, as JSON.
        json: String,
    },
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
enum JobCommand {
    /// Sign JOB.json with this home's key (setting its requestor), in place.
    Sign {
        /// The job file.
        file: PathBuf,
        /// A delegation (from `vat job delegate`) to attach as proof, for a
        /// kernel this home does not own. Repeat for a chain, owner's first.
        #[arg(long = "proof", value_name = "DELEGATION.json")]
        proofs: Vec<PathBuf>,
    },
    /// Print a delegation letting DID run jobs on this home's kernel.
    Delegate {
        /// Who may: a did:key.
        to: String,
        /// What: `/ipvm` (all), `/ipvm/run` (pure tasks), `/ipvm/effect/NAME`.
        #[arg(long, default_value = "/ipvm")]
        cmd: String,
        /// For how many seconds (none: until revoked by a new key).
        #[arg(long)]
        expires_in_s: Option<u64>,
        /// Re-delegate: the subject kernel's did:key (default: this home's).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Validate and run JOB.json: progress per task, then the outputs.
    Run {
        /// The job file (signed).
        file: PathBuf,
    },
    /// Each task's state in job ID (its CID).
    Status {
        /// The job's CID, as `vat job run` printed it.
        id: String,
    },
    /// The receipts of job ID's finished tasks, one JSON per line.
    Receipts {
        /// The job's CID.
        id: String,
    },
}

/// What a command prints and how it exits, wherever it ran.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    stdout: String,
    stderr: String,
    failed: bool,
}

impl Outcome {
    fn line(&mut self, text: impl std::fmt::Display) {
        self.stdout.push_str(&format!("{text}\n"));
    }

    fn error(text: &str) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: format!("error: {}\n", one_line(text)),
            failed: true,
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = dispatch(cli).unwrap_or_else(|e| Outcome::error(&format!("{e:#}")));
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    if outcome.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn dispatch(cli: Cli) -> Result<Outcome> {
    let socket = cli.home.join(SOCKET_FILE);
    match cli.command {
        Command::Init => init(&cli.home),
        Command::Start { listen } => serve(&cli.home, cli.lock_wait_ms, listen.as_deref()),
        Command::Stop => match connect(&socket) {
            Some(stream) => request(stream, &Command::Stop),
            None => bail!("no daemon is running for home {}", cli.home.display()),
        },
        mut command => {
            // The daemon may run elsewhere in the file system: give it absolute paths.
            if let Command::Spawn { module, .. } | Command::Upgrade { module, .. } = &mut command {
                *module = std::path::absolute(&*module).context("module path")?;
            }
            if let Command::Bundle(BundleCommand::Add { file })
            | Command::Job(JobCommand::Sign { file, .. } | JobCommand::Run { file }) =
                &mut command
            {
                *file = std::path::absolute(&*file).context("file path")?;
            }
            if let Command::Job(JobCommand::Sign { proofs, .. }) = &mut command {
                for proof in proofs {
                    *proof = std::path::absolute(&*proof).context("proof path")?;
                }
            }
            if let Some(stream) = connect(&socket) {
                return request(stream, &command);
            }
            let home = Home::open(&cli.home, cli.lock_wait_ms)?;
            let mut kernel = home.kernel(CommitPolicy::GROUPED)?;
            let outcome = execute(&home, &mut kernel, &command);
            if let Command::Rm { .. } = command
                && !outcome.failed
            {
                // No daemon runs the deletion between other work: do it now.
                kernel.finish_cleanup()?;
            }
            Ok(outcome)
        }
    }
}

fn init(path: &Path) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    match Home::init(path)? {
        InitOutcome::Created { did } => {
            outcome.line(format!("created vat home {}", path.display()));
            outcome.line(format!("kernel key {did}"));
        }
        InitOutcome::AlreadyExists { did } => {
            outcome.line(format!(
                "vat home {} already exists; nothing changed",
                path.display()
            ));
            outcome.line(format!("kernel key {did}"));
        }
    }
    Ok(outcome)
}

/// Runs one command against a kernel; errors become the outcome's one line.
fn execute(home: &Home, kernel: &mut Kernel, command: &Command) -> Outcome {
    let mut outcome = Outcome::default();
    // Nothing is reported before it is durable.
    match run_command(home, kernel, command, &mut outcome).and_then(|()| Ok(kernel.commit()?)) {
        Ok(()) => outcome,
        Err(e) => Outcome::error(&format!("{e:#}")),
    }
}

fn run_command(
    home: &Home,
    kernel: &mut Kernel,
    command: &Command,
    out: &mut Outcome,
) -> Result<()> {
    match command {
        Command::Key => out.line(home.did()),
        Command::Check => {
            let (problems, keys) = kernel.check()?;
            if problems.is_empty() {
                out.line(format!("ok: {keys} keys consistent"));
            } else {
                for problem in &problems {
                    out.line(problem);
                }
                out.stderr = format!("error: {} discrepancies in {keys} keys\n", problems.len());
                out.failed = true;
            }
        }
        Command::Spawn {
            name,
            module,
            worker,
            fuel,
            deadline_ms,
            memory_bytes,
            message_bytes,
            syscalls_max,
            no_pipelining,
            faults_in_a_row_max,
        } => {
            let wasm = std::fs::read(module)
                .with_context(|| format!("cannot read {}", module.display()))?;
            let options = VatOptions {
                worker: match worker {
                    Worker::Process => WorkerKind::Process,
                    Worker::Thread => WorkerKind::Thread,
                },
                fuel_per_delivery: *fuel,
                deadline_ms: *deadline_ms,
                memory_bytes_max: *memory_bytes,
                message_bytes_max: *message_bytes,
                syscalls_per_delivery_max: *syscalls_max,
                pipelining: !*no_pipelining,
                faults_in_a_row_max: *faults_in_a_row_max,
            };
            let root = kernel
                .spawn_vat(name, &wasm, options)
                .with_context(|| format!("cannot spawn {} from {}", name, module.display()))?;
            out.line(root);
        }
        Command::Send {
            target,
            method,
            args,
            bind_as,
            idempotency_key,
        } => {
            let request = SendRequest {
                target,
                method,
                args,
                bind_as: bind_as.as_deref(),
                idempotency_key: idempotency_key.as_deref(),
            };
            let kpid = start_send(kernel, &request)?;
            let keyed = idempotency_key.is_some();
            finish_send(kernel, &kpid, request.bind_as, keyed, out)?;
        }
        Command::Upgrade { name, module } => {
            let wasm = std::fs::read(module)
                .with_context(|| format!("cannot read {}", module.display()))?;
            let cid = kernel.upgrade_vat(name, &wasm)?;
            out.line(format!("upgraded {name} to bundle {cid}"));
        }
        Command::Name { .. }
        | Command::Unname { .. }
        | Command::Forget { .. }
        | Command::Resume { .. }
        | Command::Terminate { .. }
        | Command::Rm { .. } => run_admin_command(kernel, command, out)?,
        Command::Collect { name } => {
            kernel.collect_vat_garbage(name)?;
            out.line(format!("{name}: collected"));
        }
        Command::Bundle(BundleCommand::Add { file }) => {
            let wasm =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            out.line(kernel.add_bundle(&wasm)?);
        }
        Command::Value(ValueCommand::Add { json }) => {
            let value: serde_json::Value =
                serde_json::from_str(json).context("the value is not JSON")?;
            out.line(kernel.add_value(&value)?);
        }
        Command::Job(job) => run_job_command(home, kernel, job, out)?,
        Command::List => {
            let vats = kernel.vats()?;
            if vats.is_empty() {
                out.line("no vats (spawn one with `vat spawn NAME MODULE.wasm`)");
            }
            for vat in vats {
                let reason = vat.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                let kept = match vat.kept {
                    Some((entries, bytes)) if vat.state != kernel::VatState::Removed => {
                        format!(" keeps {entries} vatstore entries ({bytes} bytes)")
                    }
                    _ => String::new(),
                };
                let worker = match (vat.worker, vat.worker_pid) {
                    (WorkerKind::Process, Some(pid)) => format!("process (pid {pid})"),
                    (WorkerKind::Process, None) => "process".to_owned(),
                    (WorkerKind::Thread, _) => "thread".to_owned(),
                };
                out.line(format!(
                    "{} {} root {} {}{}{} worker {} bundle {}",
                    vat.id, vat.name, vat.root, vat.state, reason, kept, worker, vat.bundle
                ));
            }
            let names = kernel.pet_names()?;
            if !names.is_empty() {
                out.line("pet names:");
                for (name, kref) in names {
                    out.line(format!("  {name} -> {kref}"));
                }
            }
        }
        Command::Share { target } => {
            let kref = kernel.resolve_reference(target)?;
            let Some(address) = kernel.listen_address()? else {
                bail!(
                    "the daemon is not listening for CapTP: start it with `vat start --listen ADDR`"
                );
            };
            let swiss = kernel.share(&kref)?;
            let address =
                captp::sturdy::Address::parse(&address).map_err(|e| anyhow::anyhow!(e))?;
            out.line(captp::sturdy::SturdyRef {
                did: home.did(),
                address,
                swiss,
            });
        }
        Command::Peers => {
            let peers = kernel.peers()?;
            if peers.is_empty() {
                out.line("no peers");
            }
            // Clients that came and went are many and alike: the last few
            // are shown, the rest counted.
            let gone: Vec<_> = peers.iter().filter(|p| p.gone).collect();
            let hidden = gone.len().saturating_sub(PEERS_GONE_SHOWN);
            let hide: std::collections::HashSet<&str> =
                gone.iter().take(hidden).map(|p| p.id.as_str()).collect();
            for peer in peers.iter().filter(|p| !hide.contains(p.id.as_str())) {
                out.line(format!(
                    "{} {} {} {} references {}",
                    peer.id, peer.direction, peer.name, peer.state, peer.references
                ));
            }
            if hidden > 0 {
                out.line(format!("(and {hidden} more disconnected peers)"));
            }
        }
        Command::Enliven { .. } => {
            bail!("enliven needs the daemon, which keeps the connection: run `vat start` first")
        }
        Command::Init | Command::Start { .. } | Command::Stop => {
            bail!("this command does not run inside a kernel")
        }
    }
    Ok(())
}

/// The commands that manage vats' lives and the names of references.
fn run_admin_command(kernel: &mut Kernel, command: &Command, out: &mut Outcome) -> Result<()> {
    match command {
        Command::Name { kref, name } => {
            let kref = kernel.resolve_reference(kref)?;
            kernel.bind_pet_name(name, &kref)?;
            out.line(format!("{name} -> {kref}"));
        }
        Command::Unname { name } => {
            let kref = kernel.unbind_pet_name(name)?;
            out.line(format!("unbound {name} (was {kref})"));
        }
        Command::Forget { kref } => {
            let count = kernel.forget_shown(kref.as_deref())?;
            out.line(format!("let go of {count} shown reference(s)"));
        }
        Command::Resume { name } => {
            kernel.resume_vat(name)?;
            out.line(format!("resumed {name}"));
        }
        Command::Terminate { name } => {
            kernel.terminate_vat_by_owner(name)?;
            out.line(format!(
                "terminated {name}; its data is kept until `vat rm {name}`"
            ));
        }
        Command::Rm { name } => {
            kernel.remove_vat(name)?;
            out.line(format!("removed {name}: its data is being deleted"));
        }
        _ => unreachable!("run_command hands over only these commands"),
    }
    Ok(())
}

fn read_job(file: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

fn run_job_command(
    home: &Home,
    kernel: &mut Kernel,
    command: &JobCommand,
    out: &mut Outcome,
) -> Result<()> {
    match command {
        JobCommand::Sign { file, proofs } => {
            let mut job = read_job(file)?;
            let chain = proofs
                .iter()
                .map(|proof| read_job(proof))
                .collect::<Result<Vec<_>>>()?;
            let map = job
                .as_object_mut()
                .with_context(|| format!("{} is not a JSON object", file.display()))?;
            map.insert("requestor".into(), home.did().into());
            if !chain.is_empty() {
                map.insert("prf".into(), chain.into());
            }
            if !map.contains_key("nonce") {
                let mut nonce = [0u8; 12];
                getrandom::fill(&mut nonce)
                    .map_err(|e| anyhow::anyhow!("no randomness for the nonce: {e}"))?;
                map.insert("nonce".into(), bs58::encode(nonce).into_string().into());
            }
            map.remove("signature");
            let signature = home.sign(&kernel::ipvm::signing_bytes(&job));
            job["signature"] = kernel::ipvm::encode_signature(&signature).into();
            let text = serde_json::to_string_pretty(&job).expect("JSON serializes");
            std::fs::write(file, format!("{text}\n"))
                .with_context(|| format!("cannot write {}", file.display()))?;
            out.line(format!(
                "signed job {} as {}",
                kernel::ipvm::value_cid(&job),
                home.did()
            ));
        }
        JobCommand::Run { file } => {
            let job = kernel.validate_job(read_job(file)?, &home.did())?;
            out.line(format!("job {}", job.cid));
            let outcomes = kernel.run_job(
                &job,
                &home.did(),
                &|message| home.sign(message),
                &mut |event| {
                    let line = match event {
                        kernel::JobEvent::Started { label } => format!("  {label}: started"),
                        kernel::JobEvent::Memoized { label, ok } => {
                            format!(
                                "  {label}: {} (receipt found: not run again)",
                                if ok { "ok" } else { "failed" }
                            )
                        }
                        kernel::JobEvent::Finished { label, ok, fuel } => format!(
                            "  {label}: {}{}",
                            if ok { "ok" } else { "failed" },
                            fuel.map(|f| format!(" (fuel {f})")).unwrap_or_default()
                        ),
                        kernel::JobEvent::Skipped { label } => format!("  {label}: skipped"),
                    };
                    // Progress shows as it happens (on the daemon's stderr,
                    // when a daemon runs the job).
                    eprintln!("{line}");
                },
            )?;
            let outputs: serde_json::Map<String, serde_json::Value> = outcomes
                .into_iter()
                .map(|(label, outcome)| {
                    let shown = match outcome {
                        kernel::TaskOutcome::Ok(value) => serde_json::json!({"ok": value}),
                        kernel::TaskOutcome::Error(reason) => serde_json::json!({"error": reason}),
                        kernel::TaskOutcome::Skipped => serde_json::json!({"skipped": true}),
                    };
                    (label, shown)
                })
                .collect();
            out.line(serde_json::Value::Object(outputs));
        }
        JobCommand::Delegate {
            to,
            cmd,
            expires_in_s,
            subject,
        } => {
            kernel::ipvm::did_key_public(to).map_err(|e| anyhow::anyhow!(e))?;
            let expires = expires_in_s.map(|s| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + s
            });
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let delegation = kernel::ucan::delegate(
                &home.did(),
                to,
                subject.as_deref().unwrap_or(&home.did()),
                cmd,
                expires,
                &bs58::encode(nonce).into_string(),
                &|message| home.sign(message),
            );
            out.line(delegation);
        }
        JobCommand::Status { id } => match kernel.job_status(id)? {
            None => bail!("no job {id} has run here"),
            Some(states) => {
                for (label, state) in states {
                    out.line(format!("{label}: {state}"));
                }
            }
        },
        JobCommand::Receipts { id } => {
            if kernel.job_status(id)?.is_none() {
                bail!("no job {id} has run here");
            }
            for (label, receipt) in kernel.job_receipts(id)? {
                out.line(serde_json::json!({"task": label, "receipt": receipt}));
            }
        }
    }
    Ok(())
}

/// A `vat send`, as the CLI or the daemon takes it.
#[derive(Debug, Clone, Copy)]
struct SendRequest<'a> {
    target: &'a str,
    method: &'a str,
    args: &'a [String],
    bind_as: Option<&'a str>,
    idempotency_key: Option<&'a str>,
}

/// Checks a send's arguments and queues it (once, under an idempotency
/// key); returns the result promise.
fn start_send(kernel: &mut Kernel, request: &SendRequest<'_>) -> Result<String> {
    if let Some(name) = request.bind_as {
        kernel::check_name(name)?;
    }
    let target = kernel.resolve_reference(request.target)?;
    let resolve = |text: &str| kernel.resolve_reference(text).ok();
    let values = request
        .args
        .iter()
        .map(|arg| parse_arg(arg, &resolve).map_err(|e| anyhow::anyhow!("argument {arg:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let args = vom::capdata::encode(&Value::Array(values));
    let Some(key) = request.idempotency_key else {
        check_unbound(kernel, request.bind_as)?;
        return Ok(kernel.queue_message(&target, request.method, args)?);
    };
    // A retry may find the name bound by its first try, to its result.
    if kernel.kept_send(key)?.is_none() {
        check_unbound(kernel, request.bind_as)?;
    }
    let queued = kernel.queue_message_once(key, &target, request.method, args)?;
    Ok(queued.kpid().to_owned())
}

fn check_unbound(kernel: &Kernel, bind_as: Option<&str>) -> Result<()> {
    if let Some(name) = bind_as
        && let Some(kref) = kernel.pet_name(name)?
    {
        bail!("pet name {name:?} is already bound (to {kref})");
    }
    Ok(())
}

/// Reports a send's settlement and lets go of its result promise (unless
/// an idempotency key keeps it for retries: `keyed`).
fn finish_send(
    kernel: &mut Kernel,
    kpid: &str,
    bind_as: Option<&str>,
    keyed: bool,
    out: &mut Outcome,
) -> Result<()> {
    let reported = report(kernel, kpid, bind_as, out);
    // Reported or not, nobody will read the result promise again.
    if !keyed {
        kernel.release(kpid)?;
    }
    kernel.commit()?;
    reported
}

/// Runs the kernel until `kpid` settles, then reports the settlement.
fn report(kernel: &mut Kernel, kpid: &str, bind_as: Option<&str>, out: &mut Outcome) -> Result<()> {
    let settled = kernel.run_until_settled(kpid)?;
    let names: std::collections::HashMap<String, String> = kernel
        .pet_names()?
        .into_iter()
        .map(|(name, kref)| (kref, name))
        .collect();
    let name_of = |kref: &str| names.get(kref).cloned().unwrap_or_else(|| kref.to_owned());
    match settled {
        PromiseState::Fulfilled(data) => {
            let value = vom::capdata::decode(&data).context("result")?;
            if let Some(name) = bind_as {
                let Some(reference) = value.as_ref() else {
                    bail!("the result is not a reference, so --as {name} cannot bind it");
                };
                // An idempotent retry finds the name its first try bound.
                if kernel.pet_name(name)?.as_deref() != Some(reference.slot.as_str()) {
                    kernel.bind_pet_name(name, &reference.slot)?;
                    kernel.commit()?;
                }
            }
            hold_unnamed(kernel, &data, &names)?;
            let shown = to_display(&value, &|kref| match (bind_as, value.as_ref()) {
                (Some(name), Some(r)) if r.slot == kref => name.to_owned(),
                _ => name_of(kref),
            });
            out.line(shown);
        }
        PromiseState::Rejected(data) => {
            hold_unnamed(kernel, &data, &names)?;
            let reason = match vom::capdata::decode(&data) {
                Ok(Value::Error(e)) => e.to_string(),
                Ok(other) => to_display(&other, &name_of).to_string(),
                Err(e) => e.to_string(),
            };
            *out = Outcome::error(&reason);
        }
        PromiseState::Unresolved => unreachable!("run_until_settled returns settled promises"),
    }
    Ok(())
}

/// Holds the references a result shows by kref (those without a pet name),
/// so that the next command can use them.
fn hold_unnamed(
    kernel: &mut Kernel,
    data: &vom::CapData,
    names: &std::collections::HashMap<String, String>,
) -> Result<()> {
    let unnamed: Vec<String> = data
        .slots
        .iter()
        .filter(|kref| !names.contains_key(*kref))
        .cloned()
        .collect();
    kernel.hold_shown(&unnamed)?;
    Ok(kernel.commit()?)
}

/// A connection to the home's daemon, if one answers.
fn connect(socket: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket).ok()
}

/// Sends one command to the daemon and returns what it says.
fn request(mut stream: UnixStream, command: &Command) -> Result<Outcome> {
    let mut line = serde_json::to_string(command).context("request")?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("daemon socket")?;
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if read.is_err() || reply.is_empty() {
        // The daemon went away with the request in hand: it may have been
        // carried out (and committed) or not.
        bail!("{}", daemon_gone(command));
    }
    serde_json::from_str(&reply).context("the daemon's reply")
}

/// What a client can say of a request whose daemon died before it answered.
fn daemon_gone(command: &Command) -> String {
    let changes = !matches!(
        command,
        Command::List | Command::Key | Command::Check | Command::Peers | Command::Stop
    );
    if changes {
        "the daemon stopped before it answered: the request may or may not have been applied (check with `vat list`, or retry a send with --idempotency-key)".to_owned()
    } else {
        "the daemon stopped before it answered; nothing was changed".to_owned()
    }
}

/// Removes the socket when the daemon ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A command from the CLI socket, with the connection to answer on.
struct CliRequest {
    command: std::io::Result<Result<Command, serde_json::Error>>,
    stream: UnixStream,
}

/// A send (or enliven) the daemon answers once its result settles.
struct Waiter {
    kpid: String,
    /// For an enliven: the session it waits on (it fails fast if that
    /// cannot connect).
    session: Option<String>,
    bind_as: Option<String>,
    idempotency_key: Option<String>,
    stream: UnixStream,
    deadline: std::time::Instant,
}

/// How long the daemon waits for a result before answering the CLI that
/// it has none yet (`send_timeout_ms`); the message stays queued.
const SEND_TIMEOUT_MS: u64 = 60_000;

fn reply(mut stream: &UnixStream, outcome: &Outcome) {
    let mut reply = serde_json::to_string(outcome).expect("outcomes serialize");
    reply.push('\n');
    // A client that went away does not stop the daemon.
    let _ = stream.write_all(reply.as_bytes());
}

/// `vat start`: serves commands over the home's socket, and CapTP on
/// `listen`, until `vat stop`.
fn serve(path: &Path, lock_wait_ms: u64, listen: Option<&str>) -> Result<Outcome> {
    let home = Home::open(path, lock_wait_ms)?;
    let socket = home.path().join(SOCKET_FILE);
    // Holding the home's lock, no other daemon can be alive: a socket left
    // here is stale (its daemon was killed).
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let _socket_file = SocketFile(socket.clone());
    let mut kernel = home.kernel(CommitPolicy::GROUPED)?;
    kernel.start_workers()?;
    let identity = kernel::node::Identity {
        did: home.did(),
        sign: Box::new(home.signer()),
    };
    let mut node: Node<CliRequest> = Node::new(kernel, identity, captp::Limits::default())?;
    let listening = match listen {
        Some(text) => {
            let address = captp::sturdy::Address::parse(text).map_err(|e| anyhow::anyhow!(e))?;
            let bound = node.listen(&address)?;
            Some(bound.to_string())
        }
        None => None,
    };
    node.kernel().set_listen_address(listening.as_deref())?;
    node.kernel().commit()?;
    let sender = node.sender();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // Each request is read on a thread of its own: a client that
            // connects and says nothing holds up no one else.
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let read = BufReader::new((&stream).take(REQUEST_BYTES_MAX)).read_line(&mut line);
                let command = read.map(|_| serde_json::from_str::<Command>(&line));
                sender.send(CliRequest { command, stream });
            });
        }
    });
    println!(
        "kernel {} serving {} on {}{}",
        home.did(),
        home.path().display(),
        socket.display(),
        listening
            .as_ref()
            .map(|a| format!(", CapTP on {a}"))
            .unwrap_or_default()
    );
    std::io::stdout().flush().ok();
    let mut waiters: Vec<Waiter> = Vec::new();
    'serving: loop {
        let wait = if waiters.is_empty() { 200 } else { 5 };
        for request in node.turn(std::time::Duration::from_millis(wait))? {
            let CliRequest { command, stream } = request;
            let command = match command {
                Ok(Ok(command)) => command,
                Ok(Err(e)) => {
                    let message =
                        format!("malformed request (request_bytes_max {REQUEST_BYTES_MAX}): {e}");
                    reply(&stream, &Outcome::error(&message));
                    continue;
                }
                Err(e) => {
                    reply(
                        &stream,
                        &Outcome::error(&format!("reading the request: {e}")),
                    );
                    continue;
                }
            };
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_millis(SEND_TIMEOUT_MS);
            match &command {
                Command::Stop => {
                    let mut outcome = Outcome::default();
                    outcome.line(format!("stopped the daemon for {}", home.path().display()));
                    node.flush()?;
                    reply(&stream, &outcome);
                    break 'serving;
                }
                Command::Send {
                    target,
                    method,
                    args,
                    bind_as,
                    idempotency_key,
                } => match start_send(
                    node.kernel(),
                    &SendRequest {
                        target,
                        method,
                        args,
                        bind_as: bind_as.as_deref(),
                        idempotency_key: idempotency_key.as_deref(),
                    },
                ) {
                    Ok(kpid) => waiters.push(Waiter {
                        kpid,
                        session: None,
                        bind_as: bind_as.clone(),
                        idempotency_key: idempotency_key.clone(),
                        stream,
                        deadline,
                    }),
                    Err(e) => reply(&stream, &Outcome::error(&format!("{e:#}"))),
                },
                Command::Enliven { uri, bind_as } => {
                    match enliven(&mut node, &home.did(), uri, bind_as) {
                        Ok((kpid, peer)) => waiters.push(Waiter {
                            kpid,
                            session: Some(peer),
                            bind_as: Some(bind_as.clone()),
                            idempotency_key: None,
                            stream,
                            deadline,
                        }),
                        Err(e) => reply(&stream, &Outcome::error(&format!("{e:#}"))),
                    }
                }
                command => {
                    let outcome = execute(&home, node.kernel(), command);
                    node.flush()?;
                    reply(&stream, &outcome);
                }
            }
        }
        let mut index = 0;
        while index < waiters.len() {
            let waiter = &waiters[index];
            let settled =
                node.kernel().promise_state(&waiter.kpid)? != Some(PromiseState::Unresolved);
            let expired = std::time::Instant::now() >= waiter.deadline;
            let unreachable = match &waiter.session {
                Some(peer) if !settled => node.session_error(peer),
                _ => None,
            };
            if !settled && !expired && unreachable.is_none() {
                index += 1;
                continue;
            }
            let waiter = waiters.swap_remove(index);
            let mut out = Outcome::default();
            let outcome = if settled {
                match finish_send(
                    node.kernel(),
                    &waiter.kpid,
                    waiter.bind_as.as_deref(),
                    waiter.idempotency_key.is_some(),
                    &mut out,
                ) {
                    Ok(()) => out,
                    Err(e) => Outcome::error(&format!("{e:#}")),
                }
            } else if let Some(why) = unreachable {
                if waiter.idempotency_key.is_none() {
                    node.kernel().release(&waiter.kpid)?;
                }
                Outcome::error(&format!(
                    "cannot reach that kernel ({why}); the session is kept and retried"
                ))
            } else {
                let retry = match &waiter.idempotency_key {
                    Some(key) => format!("; retry with --idempotency-key {key} to wait again"),
                    None => {
                        node.kernel().release(&waiter.kpid)?;
                        String::new()
                    }
                };
                Outcome::error(&format!(
                    "no answer within {SEND_TIMEOUT_MS} ms (send_timeout_ms); the message stays queued{retry}"
                ))
            };
            node.flush()?;
            reply(&waiter.stream, &outcome);
        }
    }
    node.flush()?;
    Ok(Outcome::default())
}

/// Dials the kernel a sturdy ref names (or reuses the connection) and asks
/// it for the object; returns the promise for it.
fn enliven(
    node: &mut Node<CliRequest>,
    home_did: &str,
    uri: &str,
    bind_as: &str,
) -> Result<(String, String)> {
    kernel::check_name(bind_as)?;
    if let Some(kref) = node.kernel().pet_name(bind_as)? {
        bail!("pet name {bind_as:?} is already bound (to {kref})");
    }
    let sturdy = captp::sturdy::SturdyRef::parse(uri).map_err(|e| anyhow::anyhow!(e))?;
    if sturdy.did == home_did {
        bail!("that sturdy ref names an object of this kernel: use it directly");
    }
    let peer = node.session(&sturdy.did, &sturdy.address)?;
    let kpid = node.kernel().enliven(&peer, &sturdy.swiss)?;
    node.flush()?;
    Ok((kpid, peer))
}
