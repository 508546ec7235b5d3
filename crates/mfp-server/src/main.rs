//! `mfp-server`: the Mirror Frame Protocol server. See docs/server.md and docs/agents.md.
#![forbid(unsafe_code)]

mod adapter;
mod admin;
mod agents;
mod config;
mod federation;
mod inbox;
mod keygen;
mod mcp;
mod operator;
mod operator_cli;
mod rpc;
mod server;
mod storage_admin;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Mirror Frame Protocol server: a runtime on SQLite storage hosting agents
/// (builtin, subprocess over JSON-RPC, webhook), with health and metrics.
#[derive(Debug, Parser)]
#[command(name = "mfp-server", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// pymfp's form: `mfp-server --config FILE` is `mfp-server run --config FILE`.
    #[arg(short, long, env = "MFP_CONFIG", global = false)]
    config: Option<PathBuf>,
    /// Log level (DEBUG, INFO, WARNING, ERROR); overrides the configuration.
    #[arg(long, env = "MFP_LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the server.
    Run {
        /// The YAML configuration file.
        #[arg(short, long, env = "MFP_CONFIG")]
        config: PathBuf,
        /// Log level (DEBUG, INFO, WARNING, ERROR); overrides the configuration.
        #[arg(long, env = "MFP_LOG_LEVEL")]
        log_level: Option<String>,
        /// Once listening, write the bound addresses here as JSON
        /// (`{"admin": "127.0.0.1:PORT", "http": …}`); useful with port 0.
        #[arg(long, env = "MFP_PORT_FILE")]
        port_file: Option<PathBuf>,
    },
    /// Checks a configuration file: exit 0 when valid, otherwise every error as
    /// file:line:column and exit 1. Warnings go to stderr either way.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
    /// Generates a storage master key file (`--out FILE`: 64 hex digits, mode 0600), or a
    /// runtime identity key for federation (`--identity FILE`: mode 0600, prints the public
    /// half for peers to pin; `--encrypt` with `--master-key FILE` or `--master-key-env VAR`
    /// encrypts it with the storage master key). Never overwrites a file.
    Keygen {
        /// Where to write a storage master key.
        #[arg(long, short, conflicts_with = "identity", required_unless_present = "identity")]
        out: Option<PathBuf>,
        /// Where to write a runtime identity key (federation).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Encrypt the identity key with the storage master key (`--master-key FILE` or
        /// `--master-key-env VAR`: the one the server's `storage.master_key_file` or
        /// `master_key_env` names).
        #[arg(long, requires = "identity")]
        encrypt: bool,
        /// The storage master key file (with `--encrypt`).
        #[arg(long, requires = "encrypt", conflicts_with = "master_key_env")]
        master_key: Option<PathBuf>,
        /// The environment variable holding the storage master key (with `--encrypt`).
        #[arg(long, requires = "encrypt")]
        master_key_env: Option<String>,
    },
    /// Prints the public half of a runtime identity key (`mfp-x25519:<hex>`), what peers pin
    /// as their `public_key`. Never prints the secret. An encrypted key file needs the
    /// storage master key (`--master-key FILE` or `--master-key-env VAR`); `--encrypt-to
    /// FILE` writes an encrypted copy of the key (how a plain file is converted).
    Identity {
        /// The identity key file (`mfp-server keygen --identity`).
        #[arg(long, short)]
        key: PathBuf,
        /// The storage master key file.
        #[arg(long, conflicts_with = "master_key_env")]
        master_key: Option<PathBuf>,
        /// The environment variable holding the storage master key.
        #[arg(long)]
        master_key_env: Option<String>,
        /// Write the key, encrypted with the storage master key, to this new file.
        #[arg(long)]
        encrypt_to: Option<PathBuf>,
        /// With `--encrypt-to`: encrypt under this master key file instead (after a
        /// rotation of the storage master key; `--master-key` opens the old file).
        #[arg(long, requires = "encrypt_to")]
        new_master_key: Option<PathBuf>,
    },
    /// Serves one mcp agent over stdin and stdout: what an MCP host launches. Runs the
    /// runtime of the configuration itself (every agent, no listeners); do not run it while a
    /// server with the same database runs (the storage lock refuses that). Logs go to stderr.
    Mcp {
        /// The YAML configuration file.
        #[arg(short, long, env = "MFP_CONFIG")]
        config: PathBuf,
        /// The mcp agent to serve.
        #[arg(short, long)]
        agent: String,
        /// Log level (DEBUG, INFO, WARNING, ERROR); overrides the configuration.
        #[arg(long, env = "MFP_LOG_LEVEL")]
        log_level: Option<String>,
    },
    /// Storage administration (check, rotate-key, import-pymfp); run it while the server
    /// is stopped.
    #[command(subcommand)]
    Storage(storage_admin::StorageCmd),
    /// The federation of a running server: `status` (peers, links, channels), and
    /// `suspend`, `resume`, `reset`, `rotate` of a channel with a native peer. Asks the
    /// server's admin listener with the `admin.token` of its configuration.
    Federation(operator_cli::FederationArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Run { config, log_level, port_file }) => {
            run(&config, log_level.as_deref(), server::Mode::Serve { port_file })
        }
        Some(Cmd::Mcp { config, agent, log_level }) => {
            run(&config, log_level.as_deref(), server::Mode::Stdio { agent })
        }
        None => match cli.config {
            Some(config) => run(&config, cli.log_level.as_deref(), server::Mode::Serve { port_file: None }),
            None => {
                eprintln!("error: no configuration: use `mfp-server run --config FILE` (see --help)");
                ExitCode::from(2)
            }
        },
        Some(Cmd::CheckConfig { file }) => match config::load(&file) {
            Ok(v) => {
                for w in &v.warnings {
                    eprintln!("{}: warning: {w}", file.display());
                }
                for p in &v.peers {
                    if let config::PeerKind::Pymfp { deployment_id, instance_id, .. } = &p.kind {
                        eprintln!(
                            "{}: warning: peer {deployment_id}/{instance_id} is a pymfp compat peer: UNAUTHENTICATED, and unsafe when both sides send at once (see docs/interop.md)",
                            file.display(),
                        );
                    }
                }
                println!(
                    "{}: OK ({} agents, {} channels, {} peers)",
                    file.display(),
                    v.agents.len(),
                    v.channels.len(),
                    v.peers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Federation(args)) => match operator_cli::run(&args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Storage(cmd)) => match storage_admin::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Keygen { out: Some(out), identity: None, .. }) => match keygen::keygen(&out) {
            Ok(()) => {
                println!("wrote a storage master key to {} (mode 0600); keep a copy somewhere safe", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Keygen { identity: Some(path), encrypt, master_key, master_key_env, .. }) => match keygen::master_key(
            master_key.as_deref(),
            master_key_env.as_deref(),
        )
        .and_then(|m| match (encrypt, m) {
            (true, None) => Err("--encrypt needs the storage master key: --master-key FILE or --master-key-env VAR".into()),
            (_, m) => keygen::identity_keygen(&path, m.as_ref()).map(|p| (p, m.is_some())),
        }) {
            Ok((public, encrypted)) => {
                let form = if encrypted { "encrypted with the storage master key, " } else { "" };
                eprintln!(
                    "wrote a runtime identity key to {} ({form}mode 0600); set federation.identity_key to it, and give peers this public key to pin:",
                    path.display()
                );
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Keygen { out: None, identity: None, .. }) => {
            eprintln!("error: keygen needs --out FILE (storage master key) or --identity FILE (runtime identity key)");
            ExitCode::from(2)
        }
        Some(Cmd::Identity { key, master_key, master_key_env, encrypt_to, new_master_key }) => match keygen::master_key(
            master_key.as_deref(),
            master_key_env.as_deref(),
        )
        .and_then(|m| match (&encrypt_to, m) {
            (Some(to), Some(m)) => keygen::new_master_key(new_master_key.as_deref())
                .and_then(|new| keygen::identity_encrypt(&key, to, &m, new.as_ref()))
                .inspect(|_| {
                eprintln!(
                    "wrote the identity key of {}, encrypted with the storage master key, to {} (mode 0600); point federation.identity_key at it, then remove the old file",
                    key.display(),
                    to.display()
                );
            }),
            (Some(_), None) => {
                Err("--encrypt-to needs the storage master key: --master-key FILE or --master-key-env VAR".into())
            }
            (None, m) => keygen::identity_public(&key, m.as_ref()),
        }) {
            Ok(public) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(file: &std::path::Path, log_level: Option<&str>, mode: server::Mode) -> ExitCode {
    let cfg = match config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = match log_level {
        Some(l) => match config::level_filter(l) {
            Some(f) => f,
            None => {
                eprintln!("error: --log-level must be DEBUG, INFO, WARNING or ERROR");
                return ExitCode::from(2);
            }
        },
        None => cfg.log_filter.clone(),
    };
    init_logging(cfg.log_format, &filter);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(server::run(cfg, mode));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: config::LogFormat, filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}
