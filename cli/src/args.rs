//! The command line: what `vat --help` shows, parsed by clap, and turned
//! into a [`Request`] (absolute paths, plain options) that this process or
//! the home's daemon runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kernel::VatOptions;

use crate::home::LOCK_WAIT_MS_DEFAULT;
use crate::request::{
    ListArgs, Request, SendArgs, SpawnOptions, StateArg, UcanDelegation, UcanInvocation,
    UcanSubject,
};

/// `spawn_count_max`: the most vats one `vat spawn --count` makes.
pub const SPAWN_COUNT_MAX: u32 = 1_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "vat",
    version,
    about = "A durable object-capability vat kernel"
)]
pub struct Cli {
    /// The home folder: store and kernel key.
    #[arg(long, global = true, env = "VAT_HOME", default_value = ".vat")]
    pub home: PathBuf,

    /// How long to wait for another `vat` process using the same home.
    #[arg(long, global = true, default_value_t = LOCK_WAIT_MS_DEFAULT)]
    pub lock_wait_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    Process,
    Thread,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Spawn N vats from the module, named NAME-1 to NAME-N (a vat per
        /// user or document): the bundle is stored once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=SPAWN_COUNT_MAX as i64))]
        count: Option<u32>,
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
    /// UCAN 1.0: delegate, invoke and verify (tokens in base64, one per line).
    #[command(subcommand)]
    Ucan(UcanCommand),
    /// CARs of UCAN invocations: the bucket VM's programs.
    #[command(subcommand)]
    Car(CarCommand),
    /// The HTTP device (system/invoke): commands routed to foreign functions.
    #[command(subcommand)]
    Http(HttpCommand),
    /// List vats (in name order), their workers, whether they are awake and
    /// what keeps them so, pet names, and their krefs.
    List {
        /// Only vats that are awake (have a worker).
        #[arg(long)]
        resident: bool,
        /// Only vats in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only vats whose name starts with PREFIX.
        #[arg(long, value_name = "PREFIX", default_value = "")]
        prefix: String,
        /// Only vats named after NAME (the last one of the previous page).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
        /// At most N vats (and N pet names).
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Put vat NAME to sleep now: its worker stops, and its next message
    /// wakes it. Refused while its heap holds what its store does not.
    Sleep { name: String },
    /// Print the last lines vat NAME wrote with `vom::log!` (lines of
    /// failed deliveries too).
    Log {
        name: String,
        /// How many lines, at most.
        #[arg(long, value_name = "N", default_value_t = 100)]
        lines: usize,
    },
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
        /// How many vats keep a worker at once (vats_resident_max): the
        /// least recently used sleep, writing nothing, and wake when a
        /// message comes. Vats whose heaps hold what their store does not
        /// stay awake beyond it.
        #[arg(long, value_name = "N", default_value_t = kernel::VATS_RESIDENT_MAX_DEFAULT as u32,
              value_parser = clap::value_parser!(u32).range(1..))]
        vats_resident_max: u32,
        /// Set a bound on what peers' connections may cost, NAME=VALUE
        /// (repeatable). NAME is one of connections_max (256),
        /// frames_in_flight_max (64), bytes_in_flight_max (2097152),
        /// run_queue_intake_max (10000), handshake_timeout_ms (10000),
        /// idle_timeout_ms (1800000), frame_read_timeout_ms (30000),
        /// outgoing_bytes_max (67108864), write_timeout_ms (30000),
        /// keepalive_interval_ms (1000), keepalive_timeout_ms (5000),
        /// connect_timeout_ms (2000), redial_max_ms (1000),
        /// session_away_max_s (604800), ended_peers_max (100),
        /// ended_peers_kept_s (3600); defaults in parentheses.
        #[arg(long = "net-limit", value_name = "NAME=VALUE", value_parser = parse_net_limit)]
        net_limits: Vec<String>,
        /// Also serve HTTP here (default 127.0.0.1:0, loopback): the
        /// inspector page, for whoever has the token it prints, and JSON
        /// CapTP over WebSocket at /captp. HOME/http.url says where.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
        http: Option<String>,
    },
    /// Print a sturdy ref (captp://DID@ADDRESS/SWISS) for TARGET: whoever
    /// holds it can reach TARGET over CapTP while the daemon listens.
    Share {
        /// A pet name or kref of an object.
        target: String,
        /// Print instead the URL of the world's text client on the HTTP
        /// face (http://HOST:PORT/world#SWISS), for a world's lobby facet.
        #[arg(long)]
        web: bool,
    },
    /// Connect to the kernel a sturdy ref names and bind NAME to its object;
    /// `vat send NAME ...` then reaches it. Needs the daemon (`vat start`).
    /// A captp+json://HOST:PORT/SWISS ref names an object of a listening
    /// @endo/captp peer (its bootstrap object's `restore(swiss)`): reached
    /// while its connection lasts.
    Enliven {
        /// The sturdy ref, as `vat share` printed it.
        uri: String,
        /// The pet name to bind.
        #[arg(long = "as", value_name = "NAME")]
        bind_as: String,
    },
    /// Forget a sturdy ref `vat share` printed: it restores nothing from
    /// now on (connections that restored it keep what they got).
    Unshare {
        /// The sturdy ref (captp://...), or its swiss number alone.
        sturdy: String,
    },
    /// Print what the kernel holds as one JSON document: vats, pet names,
    /// peers and the run queue's length (what the HTTP face's inspector shows).
    Inspect,
    /// List CapTP peers: who, their state, how many references they share.
    Peers {
        #[command(subcommand)]
        action: Option<PeersAction>,
    },
    /// Stop the home's daemon.
    Stop,
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Store a Wasm module; print its CID (raw, sha2-256: the CID IPFS gives those bytes).
    Add {
        /// The module file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ValueCommand {
    /// Store a JSON value; print its CID (DAG-CBOR, sha2-256). Jobs name it as {"/": CID}.
    Add {
        /// The value, as JSON.
        json: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HttpCommand {
    /// Send commands under PREFIX (`/weather`) to URL: a message to the pet
    /// name `http` whose method is such a command, or a bucket-VM
    /// invocation of one, is POSTed there as {"cmd", "args"} once its crank
    /// commits, and the JSON answer settles it.
    Route {
        /// A command path.
        prefix: String,
        /// An http:// URL.
        url: String,
    },
    /// The routes, one per line.
    Routes,
}

#[derive(Subcommand, Debug)]
pub enum CarCommand {
    /// Store FILE.car's blocks (each checked against its CID); print the
    /// CAR's CID (`/store/add`).
    Add {
        /// The CAR file.
        file: PathBuf,
    },
    /// Run the invocations at the roots of CAR CID as messages to this
    /// kernel's capabilities, each receipted (`/system/enqueue`).
    Enqueue {
        /// The CAR's CID, as `vat car add` printed it.
        cid: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UcanCommand {
    /// Print a delegation (base64) from this home letting DID use CMD on a
    /// subject (this home's kernel, unless --subject or --powerline).
    Delegate {
        /// Who may: a did:key.
        to: String,
        /// What: a command path; `/` is everything, `/ipvm/run` pure job
        /// tasks, `/ipvm/effect/NAME` effects on pet name NAME.
        #[arg(long, default_value = "/")]
        cmd: String,
        /// Re-delegate authority over another subject (a did:key).
        #[arg(long, conflicts_with = "powerline")]
        subject: Option<String>,
        /// Any subject: pass on whatever this home is delegated.
        #[arg(long)]
        powerline: bool,
        /// A policy on the arguments, as DAG-JSON: `[["<=", ".size", 10]]`.
        #[arg(long, default_value = "[]")]
        policy: String,
        /// For how many seconds (none: no expiry).
        #[arg(long)]
        expires_in_s: Option<u64>,
        /// Not valid before this many seconds from now.
        #[arg(long)]
        not_before_in_s: Option<u64>,
    },
    /// Print an invocation (base64) by this home of CMD on a subject, with
    /// its proofs' CIDs (root first).
    Invoke {
        /// The command path.
        cmd: String,
        /// The arguments, a DAG-JSON map.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Whose authority: a did:key (default: this home's).
        #[arg(long)]
        subject: Option<String>,
        /// A delegation proving it; repeat for a chain, the root first.
        #[arg(long = "proof", value_name = "DELEGATION")]
        proofs: Vec<PathBuf>,
        /// For how many seconds it may run (none: no expiry).
        #[arg(long)]
        expires_in_s: Option<u64>,
        /// Write a CAR (the invocation as its root, with its proofs) to
        /// this file instead of printing the invocation.
        #[arg(long, value_name = "FILE.car")]
        car: Option<PathBuf>,
    },
    /// Write every receipt this kernel signed as a CAR.
    Receipts {
        /// The CAR file to write.
        #[arg(long, value_name = "FILE.car")]
        out: PathBuf,
    },
    /// Check TOKEN: a delegation's shape and signature, or an invocation
    /// against its proofs (each --proof a delegation it links), or each
    /// root of a CAR against the CAR's blocks.
    Verify {
        /// A token file (base64 or raw DAG-CBOR), or a CAR.
        token: PathBuf,
        /// A delegation the invocation links.
        #[arg(long = "proof", value_name = "DELEGATION")]
        proofs: Vec<PathBuf>,
        /// Judge it at this time (seconds since the Unix epoch; default: now).
        #[arg(long)]
        at_s: Option<u64>,
    },
}

impl HttpCommand {
    fn into_request(self) -> Request {
        match self {
            HttpCommand::Route { prefix, url } => Request::HttpRoute { prefix, url },
            HttpCommand::Routes => Request::HttpRoutes,
        }
    }
}

impl CarCommand {
    fn into_request(self) -> Result<Request> {
        Ok(match self {
            CarCommand::Add { file } => Request::AddCar {
                file: absolute(file, "file")?,
            },
            CarCommand::Enqueue { cid } => Request::EnqueueCar { cid },
        })
    }
}

impl UcanCommand {
    fn into_request(self) -> Result<Request> {
        let files = |paths: Vec<PathBuf>| -> Result<Vec<PathBuf>> {
            paths.into_iter().map(|p| absolute(p, "proof")).collect()
        };
        Ok(match self {
            UcanCommand::Delegate {
                to,
                cmd,
                subject,
                powerline,
                policy,
                expires_in_s,
                not_before_in_s,
            } => Request::UcanDelegate(UcanDelegation {
                to,
                cmd,
                subject: if powerline {
                    UcanSubject::Any
                } else {
                    subject.map_or(UcanSubject::Home, UcanSubject::Did)
                },
                policy,
                expires_in_s,
                not_before_in_s,
            }),
            UcanCommand::Invoke {
                cmd,
                args,
                subject,
                proofs,
                expires_in_s,
                car,
            } => Request::UcanInvoke(UcanInvocation {
                cmd,
                args,
                subject,
                proofs: files(proofs)?,
                expires_in_s,
                car: car.map(|car| absolute(car, "car")).transpose()?,
            }),
            UcanCommand::Receipts { out } => Request::UcanReceipts {
                out: absolute(out, "out")?,
            },
            UcanCommand::Verify {
                token,
                proofs,
                at_s,
            } => Request::UcanVerify {
                token: absolute(token, "token")?,
                proofs: files(proofs)?,
                at_s,
            },
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Sign JOB.json with this home's key (setting its requestor), in place.
    Sign {
        /// The job file.
        file: PathBuf,
        /// A UCAN delegation (from `vat ucan delegate`) to attach as proof,
        /// for a kernel this home does not own. Repeat for a chain, the
        /// owner's first.
        #[arg(long = "proof", value_name = "DELEGATION")]
        proofs: Vec<PathBuf>,
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

/// What the command line asks for, once parsed.
#[derive(Debug)]
pub enum Invocation {
    /// `vat init`: runs here, without a kernel.
    Init,
    /// `vat start`: becomes the daemon.
    Start {
        listen: Option<String>,
        vats_resident_max: usize,
        net: captp_engine::node::NetLimits,
        http: Option<String>,
    },
    /// Anything else: runs in the daemon if one answers, else here.
    Run(Request),
}

/// The daemon may run elsewhere in the file system: paths are made absolute.
fn absolute(path: PathBuf, what: &str) -> Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("{what} path {}", Path::display(&path)))
}

impl Command {
    /// The request of a `spawn` command (only called on one).
    fn spawn_request(self) -> Result<Request> {
        let Command::Spawn {
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
            count,
        } = self
        else {
            unreachable!("cli invariant: spawn_request is called on its own command")
        };
        Ok(Request::Spawn {
            name,
            module: absolute(module, "module")?,
            options: SpawnOptions {
                thread: worker == Worker::Thread,
                fuel,
                deadline_ms,
                memory_bytes,
                message_bytes,
                syscalls_max,
                pipelining: !no_pipelining,
                faults_in_a_row_max,
                count,
            },
        })
    }

    /// The request of a `list` command (only called on one).
    fn list_request(self) -> Request {
        let Command::List {
            resident,
            state,
            prefix,
            after,
            limit,
        } = self
        else {
            unreachable!("cli invariant: list_request is called on its own command")
        };
        Request::List(ListArgs {
            resident,
            state,
            prefix,
            after,
            limit: limit as usize,
        })
    }

    /// The request this command makes.
    pub fn into_invocation(self) -> Result<Invocation> {
        Ok(Invocation::Run(match self {
            Command::Init => return Ok(Invocation::Init),
            Command::Start {
                listen,
                vats_resident_max,
                net_limits,
                http,
            } => {
                let mut net = captp_engine::node::NetLimits::default();
                for assignment in &net_limits {
                    net.set(assignment)?;
                }
                return Ok(Invocation::Start {
                    listen,
                    vats_resident_max: vats_resident_max as usize,
                    net,
                    http,
                });
            }
            spawn @ Command::Spawn { .. } => spawn.spawn_request()?,
            Command::Send {
                target,
                method,
                args,
                bind_as,
                idempotency_key,
            } => Request::Send(SendArgs {
                target,
                method,
                args,
                bind_as,
                idempotency_key,
            }),
            Command::Upgrade { name, module } => Request::Upgrade {
                name,
                module: absolute(module, "module")?,
            },
            Command::Name { kref, name } => Request::Name { kref, name },
            Command::Unname { name } => Request::Unname { name },
            Command::Forget { kref } => Request::Forget { kref },
            Command::Resume { name } => Request::Resume { name },
            Command::Terminate { name } => Request::Terminate { name },
            Command::Rm { name } => Request::Rm { name },
            Command::Collect { name } => Request::Collect { name },
            Command::Bundle(BundleCommand::Add { file }) => Request::AddBundle {
                file: absolute(file, "file")?,
            },
            Command::Value(ValueCommand::Add { json }) => Request::AddValue { json },
            Command::Job(job) => job.into_request()?,
            Command::Ucan(ucan) => ucan.into_request()?,
            Command::Car(car) => car.into_request()?,
            Command::Http(http) => http.into_request(),
            list @ Command::List { .. } => list.list_request(),
            Command::Sleep { name } => Request::Sleep { name },
            Command::Log { name, lines } => Request::Log { name, lines },
            Command::Key => Request::Key,
            Command::Check => Request::Check,
            Command::Share { target, web } => Request::Share { target, web },
            Command::Enliven { uri, bind_as } => Request::Enliven { uri, bind_as },
            Command::Unshare { sturdy } => Request::Unshare { sturdy },
            Command::Inspect => Request::Inspect,
            Command::Peers { action: None } => Request::Peers,
            Command::Peers {
                action: Some(PeersAction::Forget { peer }),
            } => Request::ForgetPeer { peer },
            Command::Stop => Request::Stop,
        }))
    }
}

impl JobCommand {
    fn into_request(self) -> Result<Request> {
        Ok(match self {
            JobCommand::Sign { file, proofs } => Request::SignJob {
                file: absolute(file, "file")?,
                proofs: proofs
                    .into_iter()
                    .map(|proof| absolute(proof, "proof"))
                    .collect::<Result<_>>()?,
            },
            JobCommand::Run { file } => Request::RunJob {
                file: absolute(file, "file")?,
            },
            JobCommand::Status { id } => Request::JobStatus { id },
            JobCommand::Receipts { id } => Request::JobReceipts { id },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Request {
        let cli = Cli::try_parse_from([&["vat"], args].concat()).unwrap();
        match cli.command.into_invocation().unwrap() {
            Invocation::Run(request) => request,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_become_absolute_and_flags_plain_options() {
        let Request::Spawn {
            module, options, ..
        } = parse(&[
            "spawn",
            "c",
            "counter.wasm",
            "--worker",
            "thread",
            "--no-pipelining",
        ])
        else {
            panic!("a spawn")
        };
        assert!(module.is_absolute());
        assert!(options.thread && !options.pipelining);
        assert_eq!(options.fuel, VatOptions::default().fuel_per_delivery);
    }

    #[test]
    fn negative_numbers_are_arguments() {
        let Request::Send(send) = parse(&["send", "c", "add", "-5"]) else {
            panic!("a send")
        };
        assert_eq!(send.args, ["-5"]);
    }

    #[test]
    fn clap_checks_the_command_line() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// Checks a `--net-limit NAME=VALUE` when the command line is parsed.
fn parse_net_limit(text: &str) -> Result<String, captp_engine::node::NetLimitError> {
    captp_engine::node::NetLimits::default().set(text)?;
    Ok(text.to_owned())
}

/// What `vat peers` does besides listing.
#[derive(Debug, clap::Subcommand)]
pub enum PeersAction {
    /// End a peer now: a connected one is sent Abort, a kernel session's
    /// kept frames are deleted and it is not dialled again, and what it
    /// held is released.
    Forget {
        /// The peer's id, as `vat peers` lists it (r<N>).
        peer: String,
    },
}

#[cfg(test)]
mod net_limit_help {
    use clap::CommandFactory;

    /// `vat start --help` names every network limit with its default.
    #[test]
    fn the_net_limit_help_states_every_default() {
        let mut command = super::Cli::command();
        let start = command.find_subcommand_mut("start").expect("vat start");
        let help = start.render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let defaults = captp_engine::node::NetLimits::default();
        for name in captp_engine::node::NetLimits::NAMES {
            let mut probe = defaults;
            assert!(help.contains(name), "{name} is not in vat start --help");
            // The number after the name is its default: setting it changes nothing.
            let stated = help
                .split(&format!("{name} ("))
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .unwrap_or_else(|| panic!("{name} has no default in the help"));
            probe.set(&format!("{name}={stated}")).unwrap();
            assert_eq!(
                probe, defaults,
                "the help says {name} ({stated}), not its default"
            );
        }
    }
}
