//! A private PostgreSQL server for the local profile: when nothing answers at a `database.url` on this
//! machine, run one from the PostgreSQL programs installed here (`initdb`, `pg_ctl`, `postgres`).
//!
//! Layout of the private directory (`database.private_dir`):
//! - `data/`: the cluster (`initdb` once, kept between runs), listening on 127.0.0.1 at a free port,
//!   trust authentication for user `postgres`, no Unix socket; its log is `data/server.log`.
//! - `start.lock`: held exclusively while a process checks, creates or starts (or stops) the server.
//! - `users.lock`: held shared by every process using the server. A process that stops using it stops
//!   the server only when it can take this lock exclusively, i.e. no other process (a `serve` in one
//!   terminal, `ebg-notify flags` in another) still uses it. A server left running by a killed process
//!   is simply reused by the next one, which then stops it.
//!
//! PostgreSQL refuses to run as root; as root the programs run as the `postgres` system user (the
//! Debian package creates it), which then owns `data/`.
//!
//! Everything here blocks (it runs programs); async callers use `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Settings written into the cluster's `postgresql.conf` after `initdb`.
const SERVER_SETTINGS: &str = "
# Written by ebg-notify: a private server for this machine's ebg-notify (and its tests) only.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
# Test suites open many pools at once.
max_connections = 300
";

/// Where the PostgreSQL programs come from when `database.postgres_bin_path` is empty (after PATH).
const DEBIAN_BIN_GLOB_ROOT: &str = "/usr/lib/postgresql";

/// Why no private server could be had. Each message is one line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDbError {
    #[error(
        "no PostgreSQL server answers at {target} and no PostgreSQL programs (initdb, pg_ctl) were found in {searched}: install PostgreSQL (apt-get install postgresql) or set EBG_DATABASE__URL to a running server"
    )]
    NoPrograms { target: String, searched: String },
    #[error(
        "no PostgreSQL server answers at {target}, and a private one cannot run as root without a `postgres` user: install PostgreSQL (apt-get install postgresql creates the user) or set EBG_DATABASE__URL"
    )]
    NoUser { target: String },
    #[error(
        "no PostgreSQL server answers at {target}, and there is no data directory for a private one: set EBG_DATABASE__PRIVATE_DIR or EBG_DATABASE__URL"
    )]
    NoDataDir { target: String },
    #[error("private PostgreSQL server in {dir}: {what}")]
    Failed { dir: String, what: String },
}

/// Where the private server lives and which programs run it.
#[derive(Clone, Debug)]
pub struct PrivateServerOptions {
    /// The private directory (see the module docs for its layout).
    pub dir: PathBuf,
    /// `:`-separated directories holding `initdb` and `pg_ctl`; empty searches PATH, then
    /// `/usr/lib/postgresql/*/bin` (newest version first).
    pub bin_path: String,
    /// `host:port` of the server that did not answer, for messages.
    pub target: String,
}

/// A running private server that this process uses. Dropping it (or [`PrivateServer::stop`]) stops the
/// server unless another process still uses it.
#[derive(Debug)]
pub struct PrivateServer {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    started: bool,
    users: Option<File>,
}

impl PrivateServer {
    /// Starts the server (creating the cluster on first use), or joins it if another process runs it.
    pub fn start(options: &PrivateServerOptions) -> Result<Self, PrivateDbError> {
        let bin = find_programs(&options.bin_path)
            .map_err(|searched| PrivateDbError::NoPrograms { target: options.target.clone(), searched })?;
        let run_as = run_as().ok_or_else(|| PrivateDbError::NoUser { target: options.target.clone() })?;
        let dir = options.dir.clone();
        let failed = |what: String| PrivateDbError::Failed { dir: dir.display().to_string(), what };
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create it: {e}")))?;
        // As root the server runs as `postgres`, which must be able to pass through to data/.
        let mode = if run_as.is_some() { 0o711 } else { 0o700 };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| failed(format!("cannot set its permissions: {e}")))?;

        let start_lock = lock(&dir.join("start.lock"), Lock::Exclusive).map_err(|e| failed(e.to_string()))?;
        let users = lock(&dir.join("users.lock"), Lock::Shared).map_err(|e| failed(e.to_string()))?;
        let mut server = Self { dir: dir.clone(), bin, run_as, port: 0, started: false, users: Some(users) };
        let data = server.data_dir();
        if !data.join("PG_VERSION").exists() {
            server.init_cluster().map_err(failed)?;
        }
        match server.running_port() {
            Some(port) => server.port = port,
            None => {
                server.port = free_port().map_err(|e| failed(format!("no free port: {e}")))?;
                server.start_cluster().map_err(failed)?;
                server.started = true;
            }
        }
        drop(start_lock);
        Ok(server)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when this call started the server (false: it was already running).
    pub fn started(&self) -> bool {
        self.started
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops using the server; stops the server itself if no other process uses it.
    pub fn stop(mut self) {
        self.release();
    }

    fn release(&mut self) {
        let Some(users) = self.users.take() else { return };
        let Ok(start_lock) = lock(&self.dir.join("start.lock"), Lock::Exclusive) else { return };
        // Converting our shared lock to exclusive succeeds only when nobody else holds it. No pid file:
        // the server never started (a failed start), so there is nothing to stop.
        let running = self.data_dir().join("postmaster.pid").exists();
        if running && flock(&users, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            let data = self.data_dir();
            let stopped = self.run("pg_ctl", |c| {
                c.arg("stop").arg("-D").arg(&data).args(["-m", "fast", "-w", "-t", "60"]);
            });
            match stopped {
                Ok(_) => tracing::info!(dir = %self.dir.display(), "stopped the private PostgreSQL server"),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not stop the private PostgreSQL server")
                }
            }
        }
        drop(users);
        drop(start_lock);
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn init_cluster(&self) -> Result<(), String> {
        let data = self.data_dir();
        // A half-made cluster from an interrupted initdb is useless; start over.
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .map_err(|e| format!("cannot remove the unfinished {}: {e}", data.display()))?;
        }
        std::fs::create_dir(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to postgres: {e}", data.display()))?;
        }
        self.run("initdb", |c| {
            c.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"]);
        })?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| format!("cannot read {}: {e}", conf.display()))?;
        text.push_str(SERVER_SETTINGS);
        std::fs::write(&conf, text).map_err(|e| format!("cannot write {}: {e}", conf.display()))
    }

    fn start_cluster(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = data.join("server.log");
        let started = self.run("pg_ctl", |c| {
            c.arg("start").arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60", "-o"]);
            c.arg(format!("-p {}", self.port));
            // Its own process group: Ctrl-C in the terminal reaches ebg-notify, which drains and then
            // stops the server, instead of killing the database under requests in flight.
            c.process_group(0);
        });
        started.map(|_| ()).map_err(|e| format!("{e}; last lines of {}: {}", log.display(), tail(&log, 5)))
    }

    /// The port of a server already running on this cluster (postmaster.pid line 4), if any.
    fn running_port(&self) -> Option<u16> {
        let data = self.data_dir();
        self.run("pg_ctl", |c| {
            c.arg("status").arg("-D").arg(&data);
        })
        .ok()?;
        let pid = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        pid.lines().nth(3)?.trim().parse().ok()
    }

    /// Runs one PostgreSQL program (as `postgres` when we are root); its output is the error on failure.
    fn run(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<Output, String> {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.dir).stdin(Stdio::null()).env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        args(&mut command);
        let output = command.output().map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            Ok(output)
        } else {
            let text = String::from_utf8_lossy(&output.stderr).trim().replace('\n', " ");
            Err(format!("{program} failed ({}): {text}", output.status))
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.release();
    }
}

/// The private directory when none is configured: under the user's data directory, or
/// `/var/lib/ebg-notify/postgres` for root (whose home the `postgres` user cannot enter).
pub fn default_dir() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from("/var/lib/ebg-notify/postgres"));
    }
    dirs::data_dir().map(|d| d.join("ebg-notify").join("postgres"))
}

/// The first directory holding both `initdb` and `pg_ctl`; on failure, the places searched.
pub fn find_programs(bin_path: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if bin_path.trim().is_empty() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).chain(debian_bin_dirs()).collect()
    } else {
        bin_path.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect()
    };
    candidates.iter().find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()).cloned().ok_or_else(|| {
        if bin_path.trim().is_empty() {
            format!("PATH or {DEBIAN_BIN_GLOB_ROOT}/*/bin")
        } else {
            format!("database.postgres_bin_path `{bin_path}`")
        }
    })
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_BIN_GLOB_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `None` inside `Some` when we may run PostgreSQL as ourselves; the `postgres` user when we are root;
/// `None` when we are root and there is no such user.
fn run_as() -> Option<Option<(u32, u32)>> {
    if !is_root() {
        return Some(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == "postgres")
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
            .map(Some)
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// flock(2): the lock the `flock` command takes too, released by the kernel when the process exits.
/// (`File::lock` needs Rust 1.89; the crate supports 1.85.)
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; flock has no other preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

enum Lock {
    Shared,
    Exclusive,
}

/// Opens and locks `path`. Another process may remove the whole directory while holding `start.lock`
/// (the test harness's reaper does), so a lock on a file that is no longer at `path` is retried.
fn lock(path: &Path, kind: Lock) -> std::io::Result<File> {
    loop {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        flock(&file, if matches!(kind, Lock::Shared) { libc::LOCK_SH } else { libc::LOCK_EX })?;
        let same = std::fs::metadata(path).is_ok_and(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0));
        if same {
            return Ok(file);
        }
    }
}
