//! A kernel's home folder: its SQLite store, its ed25519 key, and the lock
//! that keeps two processes from running the same kernel at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use swingstore::{Durability, SwingStore};

use kernel::{CommitPolicy, Kernel, KernelError};

const STORE_FILE: &str = "store.sqlite";
const KEY_FILE: &str = "kernel.key";
const LOCK_FILE: &str = "lock";
/// Compiled modules, by CID and engine: a cache that can always be deleted.
const MODULES_DIR: &str = "modules";
/// Where the vats' log files are (`vat log`).
const LOGS_DIR: &str = "logs";
/// Where the daemon's HTTP face is, with its token (`vat start --http`).
const HTTP_URL_FILE: &str = "http.url";
/// `log_file_bytes_max`: how large a vat's log file grows before it is rotated.
pub const LOG_FILE_BYTES_MAX: u64 = 1 << 20;
/// How long a command waits for another process to release the home.
pub const LOCK_WAIT_MS_DEFAULT: u64 = 30_000;

/// Errors about the home folder itself.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("no vat home at {0} (run `vat init` first, or pass --home)")]
    Missing(PathBuf),
    #[error("home {path} is in use by another vat process (waited {waited_ms} ms)")]
    InUse { path: PathBuf, waited_ms: u64 },
    #[error("home {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("home key {0} is damaged: expected 64 hex digits")]
    BadKey(PathBuf),
    #[error(
        "store {0} holds no kernel (it is empty: truncated or replaced?); nothing was changed: restore it from a backup, or move the home away and `vat init` a new one"
    )]
    EmptyStore(PathBuf),
    #[error(
        "store {path} is not a kernel store of schema {expected} (its kernel.schema is {found:?}); nothing was changed"
    )]
    WrongSchema {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error(transparent)]
    Store(#[from] swingstore::StoreError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An open, locked home. The locks are held until this is dropped.
#[derive(Debug)]
pub struct Home {
    path: PathBuf,
    key: SigningKey,
    _lock: File,
    /// The home folder itself, locked too: deleting the `lock` file under a
    /// running kernel does not let a second one in.
    _folder_lock: File,
    /// Where this process serves the HTTP face, once it does.
    face_address: std::sync::OnceLock<std::net::SocketAddr>,
}

/// What `vat init` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Created { did: String },
    AlreadyExists { did: String },
}

/// The `did:key` of an ed25519 public key (multicodec 0xed, base58btc).
pub fn did_key(key: &SigningKey) -> String {
    did_key::did_of(key)
}

fn lock(path: &Path, wait_ms: u64) -> Result<File, HomeError> {
    let lock_path = path.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    wait_for_lock(file, &lock_path, path, wait_ms)
}

/// Locks the home folder itself (an OS lock on the directory).
fn lock_folder(path: &Path, wait_ms: u64) -> Result<File, HomeError> {
    let folder = File::open(path).map_err(io_error(path))?;
    wait_for_lock(folder, path, path, wait_ms)
}

/// Takes `file`'s exclusive lock, waiting up to `wait_ms` for its holder.
fn wait_for_lock(
    file: File,
    lock_path: &Path,
    home: &Path,
    wait_ms: u64,
) -> Result<File, HomeError> {
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if started.elapsed() >= Duration::from_millis(wait_ms) {
                    return Err(HomeError::InUse {
                        path: home.to_owned(),
                        waited_ms: wait_ms,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(lock_path)(e)),
        }
    }
}

fn read_key(path: &Path) -> Result<SigningKey, HomeError> {
    let key_path = path.join(KEY_FILE);
    let bytes = std::fs::read(&key_path).map_err(io_error(&key_path))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(bytes.trim_ascii(), &mut seed)
        .map_err(|_| HomeError::BadKey(key_path.clone()))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn write_key(path: &Path) -> Result<SigningKey, HomeError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io_error(path)(std::io::Error::other(e.to_string())))?;
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let key_path = path.join(KEY_FILE);
    let temp_path = path.join(format!("{KEY_FILE}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp_path).map_err(io_error(&temp_path))?;
    file.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temp_path))?;
    std::fs::rename(&temp_path, &key_path).map_err(io_error(&key_path))?;
    Ok(SigningKey::from_bytes(&seed))
}

impl Home {
    /// Creates a home at `path` (store and key). An existing home is left unchanged.
    pub fn init(path: &Path) -> Result<InitOutcome, HomeError> {
        let exists = || path.join(KEY_FILE).exists() && path.join(STORE_FILE).exists();
        // An existing home is reported without its lock, which a daemon may hold.
        if exists() {
            return Ok(InitOutcome::AlreadyExists {
                did: did_key(&read_key(path)?),
            });
        }
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        let _lock = lock(path, LOCK_WAIT_MS_DEFAULT)?;
        if exists() {
            return Ok(InitOutcome::AlreadyExists {
                did: did_key(&read_key(path)?),
            });
        }
        let key = write_key(path)?;
        let mut store = SwingStore::open(&path.join(STORE_FILE), Durability::Full)?;
        kernel::mark_schema(&mut store)?;
        store.commit()?;
        Ok(InitOutcome::Created { did: did_key(&key) })
    }

    /// Opens and locks an existing home, waiting up to `lock_wait_ms` for another process.
    pub fn open(path: &Path, lock_wait_ms: u64) -> Result<Home, HomeError> {
        if !path.join(STORE_FILE).is_file() || !path.join(KEY_FILE).is_file() {
            return Err(HomeError::Missing(path.to_owned()));
        }
        let lock = lock(path, lock_wait_ms)?;
        let folder_lock = lock_folder(path, lock_wait_ms)?;
        let key = read_key(path)?;
        Ok(Home {
            path: path.to_owned(),
            key,
            _lock: lock,
            _folder_lock: folder_lock,
            face_address: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this process serves the HTTP face, if it does.
    pub fn face_address(&self) -> Option<std::net::SocketAddr> {
        self.face_address.get().copied()
    }

    /// Records where the face serves, and writes its inspector's URL (with
    /// its token) to `HOME/http.url`, readable by the home's owner only:
    /// the token is the authority.
    pub fn write_http_url(
        &self,
        address: std::net::SocketAddr,
        url: &str,
    ) -> Result<(), HomeError> {
        let _ = self.face_address.set(address);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(HTTP_URL_FILE);
        let io = |source| HomeError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(format!("{url}\n").as_bytes()).map_err(io)
    }

    fn log_path(&self, vat: &kernel::EndpointId) -> PathBuf {
        self.path.join(LOGS_DIR).join(format!("{vat}.log"))
    }

    /// Appends what the vats logged to `HOME/logs/<vat>.log`; a file past
    /// [`LOG_FILE_BYTES_MAX`] becomes `<vat>.log.1` (replacing the older).
    pub fn append_logs(&self, kernel: &mut Kernel) -> std::io::Result<()> {
        use std::io::Write;
        let lines = kernel.take_log_lines();
        if lines.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(self.path.join(LOGS_DIR))?;
        let mut by_vat: std::collections::BTreeMap<_, Vec<String>> = Default::default();
        for (vat, line) in lines {
            by_vat.entry(vat).or_default().push(line);
        }
        for (vat, lines) in by_vat {
            let path = self.log_path(&vat);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_FILE_BYTES_MAX) {
                std::fs::rename(&path, path.with_extension("log.1"))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            for line in lines {
                writeln!(file, "{}", line.replace('\n', " "))?;
            }
        }
        Ok(())
    }

    /// The last `lines` lines vat `vat` logged (from its rotated file too).
    pub fn log_tail(&self, vat: &kernel::EndpointId, lines: usize) -> std::io::Result<Vec<String>> {
        let path = self.log_path(vat);
        let mut all = Vec::new();
        for file in [path.with_extension("log.1"), path] {
            match std::fs::read_to_string(&file) {
                Ok(text) => all.extend(text.lines().map(str::to_owned)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let skip = all.len().saturating_sub(lines);
        Ok(all.split_off(skip))
    }

    /// The kernel's identity.
    pub fn did(&self) -> String {
        did_key(&self.key)
    }

    /// Signs `message` with the kernel's key (ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }

    /// A signer with the kernel's key, for threads that outlive a borrow of the home.
    pub fn signer(&self) -> impl Fn(&[u8]) -> [u8; 64] + Send + 'static {
        use ed25519_dalek::Signer;
        let key = self.key.clone();
        move |message| key.sign(message).to_bytes()
    }

    /// A kernel over this home's store. The home (and its lock) must outlive it.
    pub fn kernel(&self, policy: CommitPolicy) -> Result<Kernel, HomeError> {
        let store_path = self.path.join(STORE_FILE);
        // SQLite takes an empty file for a new database: an emptied store
        // would open as a new kernel, silently. It is refused unopened.
        let size = std::fs::metadata(&store_path)
            .map_err(io_error(&store_path))?
            .len();
        if size == 0 {
            return Err(HomeError::EmptyStore(store_path));
        }
        let mut store = SwingStore::open(&store_path, Durability::Full)?;
        match kernel::schema_of(&mut store)? {
            kernel::Schema::Current => {}
            kernel::Schema::Other(found) => {
                return Err(HomeError::WrongSchema {
                    path: store_path,
                    found,
                    expected: kernel::STORE_SCHEMA_VERSION,
                });
            }
        }
        let mut kernel = Kernel::new(store, policy)?;
        kernel.set_module_cache(self.path.join(MODULES_DIR));
        // A home's kernel may hold peers and devices: their engines are
        // attached first.
        captp_engine::attach(&mut kernel);
        devices::attach(&mut kernel);
        // What fell due while no kernel ran fires now, once.
        devices::timer::fire_due(&mut kernel, devices::timer::now_ms())?;
        // Connections to peers died with the process that had them.
        captp_engine::Peers::remove_stale_peers(&mut kernel)?;
        kernel.commit()?;
        Ok(kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_keeps_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let InitOutcome::Created { did } = Home::init(&home).unwrap() else {
            panic!("first init creates")
        };
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        assert_eq!(
            Home::init(&home).unwrap(),
            InitOutcome::AlreadyExists { did }
        );
    }

    #[test]
    fn a_second_opener_waits_then_reports_the_home_in_use() {
        let dir = tempfile::tempdir().unwrap();
        Home::init(dir.path()).unwrap();
        let _first = Home::open(dir.path(), 0).unwrap();
        let err = Home::open(dir.path(), 50).unwrap_err();
        assert!(
            matches!(err, HomeError::InUse { waited_ms: 50, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_key_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        Home::init(dir.path()).unwrap();
        for damaged in ["é".repeat(32), "zz".repeat(32), "ab".into(), String::new()] {
            std::fs::write(dir.path().join(KEY_FILE), &damaged).unwrap();
            let err = Home::open(dir.path(), 0).unwrap_err();
            assert!(matches!(err, HomeError::BadKey(_)), "{damaged:?}: {err}");
        }
    }

    #[test]
    fn an_emptied_or_foreign_store_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        Home::init(dir.path()).unwrap();
        let store = dir.path().join(STORE_FILE);
        // Truncated to nothing: refused before SQLite sees it.
        std::fs::write(&store, b"").unwrap();
        let home = Home::open(dir.path(), 0).unwrap();
        let err = home.kernel(CommitPolicy::EVERY_CRANK).unwrap_err();
        assert!(matches!(err, HomeError::EmptyStore(_)), "{err}");
        assert_eq!(std::fs::metadata(&store).unwrap().len(), 0);
        // Another program's store (of another schema): refused too.
        std::fs::remove_file(&store).unwrap();
        let mut other = SwingStore::open(&store, Durability::Full).unwrap();
        other.begin_crank().unwrap();
        other.set("kernel.schema", "99").unwrap();
        other.end_crank().unwrap();
        other.commit().unwrap();
        drop(other);
        let err = home.kernel(CommitPolicy::EVERY_CRANK).unwrap_err();
        assert!(
            matches!(&err, HomeError::WrongSchema { found, .. } if found == "99"),
            "{err}"
        );
    }

    #[test]
    fn deleting_the_lock_file_does_not_let_a_second_opener_in() {
        let dir = tempfile::tempdir().unwrap();
        Home::init(dir.path()).unwrap();
        let _first = Home::open(dir.path(), 0).unwrap();
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        let err = Home::open(dir.path(), 50).unwrap_err();
        assert!(matches!(err, HomeError::InUse { .. }), "{err}");
    }

    #[test]
    fn opening_a_missing_home_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        assert!(matches!(
            Home::open(&missing, 0),
            Err(HomeError::Missing(_))
        ));
        assert!(!missing.exists());
    }
}
