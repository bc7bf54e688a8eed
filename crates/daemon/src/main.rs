//! `hvd`, the hv daemon: serves the REST/JSON API on a Unix socket and hands every request to
//! the engine. This binary is thin: argument parsing, logging, the socket, signals, routes.

mod access_routes;
mod authz;
mod config;
mod metrics;
mod openapi;
mod routes;
mod service;
mod tls;
mod web;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};

/// The hv daemon: owns VMs and serves the hv API.
#[derive(Parser, Debug)]
#[command(name = "hvd", version)]
struct Args {
    /// Read settings from this TOML file (default: /etc/hv/hvd.toml if it exists); flags and
    /// environment variables take precedence over it.
    #[arg(long, env = "HV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print the settings hvd would run with, and exit (0: valid).
    #[arg(long)]
    check_config: bool,
    /// Write the man page hvd.8 into DIR and exit (used to build the Debian package).
    #[arg(long, value_name = "DIR", hide = true)]
    man_page: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter such as
    /// `info,engine=debug`.
    #[arg(long, env = "HV_LOG", value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// How log lines look on stderr.
    #[arg(long, env = "HV_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: config::LogFormat,
    /// Unix socket to serve the API on (mode 0600).
    #[arg(long, env = "HV_SOCKET", default_value = "/run/hv/hvd.sock")]
    socket: PathBuf,
    /// Where hv keeps its database, logs and runtime sockets (mode 0700).
    #[arg(long, env = "HV_STATE_DIR", default_value = "/var/lib/hv")]
    state_dir: PathBuf,
    /// The QEMU system emulator to run.
    #[arg(long, env = "HV_QEMU", default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Cap of each log file: a VM's console.log, qemu.log and qmp.log, a network's dnsmasq.log
    /// (SIZE: 8M, 512K or bytes). See ARCHITECTURE.md for when each is checked.
    #[arg(long, env = "HV_LOG_CAP", default_value = "8M")]
    log_cap: model::Size,
    /// The QEMU of VM ID runs as uid and gid BASE + ID (never root); pick a range no account
    /// or user namespace uses.
    #[arg(long, env = "HV_QEMU_UID_BASE", default_value_t = engine::DEFAULT_QEMU_UID_BASE,
          value_parser = clap::value_parser!(u32).range(1..=0x7fff_0000))]
    qemu_uid_base: u32,
    /// Members of this group may use the Unix socket as administrators, like root (the socket
    /// is then mode 0660 and owned by the group).
    #[arg(long)]
    admin_group: Option<String>,
    /// Also serve the API over HTTPS on ADDR:PORT (repeatable). Callers authenticate with
    /// `Authorization: Bearer TOKEN` (hv token create).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddr>,
    /// The server certificate chain (PEM) for --listen; default: one hvd mints with its own CA
    /// at first start (in STATE_DIR/tls).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Control of a VM's console is released after this many seconds without input from its
    /// holder (1 to 86400).
    #[arg(long, env = "HV_CONSOLE_IDLE", value_name = "SECONDS",
          default_value_t = engine::DEFAULT_CONSOLE_IDLE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    console_idle: u64,
    /// Also serve `GET /metrics` (only) over plain HTTP on ADDR:PORT, for a local Prometheus,
    /// without credentials: to peers in --metrics-allow only.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Peers (ADDR or ADDR/PREFIX, repeatable) that may scrape --metrics-listen; default:
    /// loopback only (127.0.0.0/8 and ::1).
    #[arg(long, value_name = "CIDR", requires = "metrics_listen")]
    metrics_allow: Vec<metrics::Cidr>,
}

/// The gid of a group named in /etc/group.
fn group_gid(name: &str) -> Result<u32> {
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (n, _, gid) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| gid.parse().ok()).flatten()
        })
        .next()
        .with_context(|| format!("there is no group {name:?} (see /etc/group); create it or pick another --admin-group"))
}

/// Whether a process's uid, gid or supplementary groups make it an administrator.
fn is_admin(cred: &tokio::net::unix::UCred, admin_gid: Option<u32>) -> bool {
    if cred.uid() == 0 {
        return true;
    }
    let Some(admin) = admin_gid else {
        return false;
    };
    if cred.gid() == admin {
        return true;
    }
    let Some(pid) = cred.pid() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|g| g.parse() == Ok(admin)))
        })
        .unwrap_or(false)
}

/// One hvd per state dir.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    let path = dir.join("hvd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on an fd we own, with constant flags.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another hvd is already using state dir {} (stop it first, or use another --state-dir)",
            dir.display()
        );
    }
    Ok(f)
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    if path.as_os_str().len() > 107 {
        bail!("socket path {} is longer than the 107 bytes Unix sockets allow; use a shorter --socket", path.display());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "an hvd is already serving {}; stop it first, or use another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(l)
}

/// How long a stopping hvd waits for running operations.
const OPERATIONS_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

async fn run(args: Args) -> Result<()> {
    // Everything hvd (and the tools it runs, such as qemu-img) creates is private: VMs' QEMUs
    // run as other uids and must reach only what is granted to them.
    // SAFETY: umask(2) takes a mode and cannot fail.
    unsafe { libc::umask(0o077) };
    let _lock = lock_state_dir(&args.state_dir)?;
    let admin_gid = args.admin_group.as_deref().map(group_gid).transpose()?;
    let listener = bind_socket(&args.socket)?;
    if let Some(gid) = admin_gid {
        std::os::unix::fs::chown(&args.socket, Some(0), Some(gid))
            .with_context(|| format!("cannot give {} to the admin group", args.socket.display()))?;
        std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot set the mode of {}", args.socket.display()))?;
    }
    let cert = tls::load(
        &args.state_dir,
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        &args.listen,
    )?;
    let mut tcp = Vec::new();
    for addr in &args.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another server using it?"))?;
        tracing::info!(listen = %l.local_addr()?, fingerprint = %cert.info.fingerprint, "serving HTTPS");
        tcp.push(l);
    }
    let mut cfg = engine::Config::new(args.state_dir.clone());
    cfg.qemu_binary = args.qemu.clone();
    cfg.log_cap = args.log_cap.0.max(4096);
    cfg.qemu_uid_base = args.qemu_uid_base;
    let engine = engine::Engine::open(cfg)
        .await
        .context("cannot open the engine")?;
    tracing::info!(socket = %args.socket.display(), state_dir = %args.state_dir.display(), "hvd ready");
    let access = std::sync::Arc::new(
        engine::Access::open(&engine.config().db_path())
            .context("cannot open the user database")?,
    );
    access.publish_to(engine.events().clone());
    let guard = authz::Guard {
        engine: engine.clone(),
        access: access.clone(),
    };
    let seats = engine::Seats::new(
        &engine,
        access.clone(),
        std::time::Duration::from_secs(args.console_idle),
    );
    let metrics = metrics::Metrics::new(engine.clone());
    if let Some(addr) = args.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        let allow = if args.metrics_allow.is_empty() {
            metrics::Cidr::loopback()
        } else {
            args.metrics_allow.clone()
        };
        tracing::info!(%addr, "serving /metrics over plain HTTP to the allowed peers");
        tokio::spawn(metrics::serve_plain(l, metrics.clone(), allow));
    }
    let app = routes::router(engine.clone())
        .merge(routes::consoles::router(routes::consoles::ConsoleState {
            engine: engine.clone(),
            seats: seats.clone(),
        }))
        .merge(access_routes::router(access_routes::AccessState {
            access,
            cert: std::sync::Arc::new(cert.info.clone()),
            logins: Default::default(),
        }))
        .merge(web::router())
        .merge(metrics::router(metrics.clone()))
        // `POST .../keys` asks the console seats whether its caller may type.
        .layer(axum::Extension(seats))
        .layer(axum::middleware::from_fn_with_state(guard, authz::guard))
        // Outermost: counts refused requests too.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ));
    let tls = Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(cert.config.clone()),
        listeners: tcp,
    };
    let auto = engine.clone();
    tokio::spawn(async move { auto.autostart().await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve(listener, admin_gid, tls, app, stop_rx);
    tokio::pin!(server);
    service::notify_ready(&format!("serving {}", args.socket.display()));
    tokio::select! {
        () = &mut server => {},
        _ = async {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        } => {
            tracing::info!("stopping hvd; running VMs keep running");
            service::notify_stopping();
            let _ = stop_tx.send(());
            // Long polls and console followers must not hold hvd up.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut server).await;
            // Operations are hvd's, not their connections': waits are cancelled, the rest
            // finish (bounded) so that nothing is left half-done.
            let left = engine.operations().drain(OPERATIONS_DRAIN).await;
            if left > 0 {
                tracing::warn!(left, "operations still running as hvd stops");
            }
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// The HTTPS side: an acceptor and its listeners.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    listeners: Vec<tokio::net::TcpListener>,
}

/// How long a TLS client may take to finish its handshake, and then each request's headers.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);
/// Open HTTPS connections at most; more wait in the kernel's accept queue.
const MAX_TLS_CONNECTIONS: usize = 512;

/// A TLS connection ready to serve, with its place among [`MAX_TLS_CONNECTIONS`].
type TlsConn = (
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// Accepts TCP connections and hands over the ones whose TLS handshake succeeds.
fn accept_tls(tls: Tls, out: tokio::sync::mpsc::Sender<TlsConn>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    for listener in tls.listeners {
        let slots = slots.clone();
        let acceptor = tls.acceptor.clone();
        let out = out.clone();
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, addr) = tokio::select! {
                    c = listener.accept() => match c {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("cannot accept a connection: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = out.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = out.send((stream, addr, slot)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
    }
}

/// Serves HTTP/1.1 connections (Unix socket and TLS) until `stop` fires, then waits for the
/// open ones to finish. Each request carries its connection's [`authz::Peer`].
///
/// hyper is driven directly rather than through `axum::serve` so that an upgraded Unix
/// connection is still a `TokioIo<UnixStream>` the volume data routes can take over (see
/// `routes::volume_data`), and so that request bodies are read in large pieces.
async fn serve(
    listener: tokio::net::UnixListener,
    admin_gid: Option<u32>,
    tls: Tls,
    app: axum::Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Upload bodies arrive in reads of up to this much (hyper's default is about 400 KiB).
    http.max_buf_size(4 << 20);
    // Remote clients must send their headers in time, and not too many of them.
    let mut https = http.clone();
    https
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(TLS_HANDSHAKE)
        .max_headers(64);
    let (tls_tx, mut tls_rx) = tokio::sync::mpsc::channel(64);
    accept_tls(tls, tls_tx);
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((io, _)) => {
                    let peer = match io.peer_cred() {
                        Ok(cred) => authz::Peer::Unix { uid: cred.uid(), admin: is_admin(&cred, admin_gid) },
                        Err(e) => {
                            tracing::warn!("cannot tell who connected: {e}");
                            continue;
                        }
                    };
                    spawn_connection(&mut conns, &http, io, peer, &app, &stopping, None);
                }
                Err(e) => {
                    // Out of fds, most likely: back off instead of spinning.
                    tracing::error!("cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some((io, addr, slot)) = tls_rx.recv() => {
                spawn_connection(&mut conns, &https, io, authz::Peer::Tls { addr }, &app, &stopping, Some(slot));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {},
            _ = &mut stop => break,
        }
    }
    drop(listener);
    drop(tls_rx);
    let _ = stopping_tx.send(true);
    while conns.join_next().await.is_some() {}
}

fn spawn_connection<I>(
    conns: &mut tokio::task::JoinSet<()>,
    http: &hyper::server::conn::http1::Builder,
    io: I,
    peer: authz::Peer,
    app: &axum::Router,
    stopping: &tokio::sync::watch::Receiver<bool>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            hyper::service::Service::call(&svc, req)
        });
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut stopping = stopping.clone();
    conns.spawn(async move {
        let _slot = slot;
        let mut conn = std::pin::pin!(conn);
        let r = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = r {
            tracing::debug!("connection ended: {e}");
        }
    });
}

/// Flags and environment, then the config file under them; `Err` is a message for stderr.
fn settings() -> Result<Args> {
    let m = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    if let Some(dir) = &args.man_page {
        clap_mangen::Man::new(Args::command())
            .section("8")
            .generate_to(dir)
            .with_context(|| format!("cannot write hvd.8 into {}", dir.display()))?;
        std::process::exit(0);
    }
    let default_exists = Path::new(config::DEFAULT_PATH).exists();
    if let Some(path) = config::choose(args.config.as_deref(), default_exists) {
        let file = config::load(&path)?;
        config::apply(&mut args, &m, file);
        args.config = Some(path);
    }
    if tracing_subscriber::EnvFilter::try_new(&args.log_level).is_err() {
        bail!(
            "--log-level {:?} is not a level (error, warn, info, debug, trace) or filter",
            args.log_level
        );
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        bail!("the TLS certificate and key go together: give both --tls-cert and --tls-key");
    }
    if let Some(group) = &args.admin_group {
        group_gid(group)?;
    }
    Ok(args)
}

fn main() {
    let args = match settings() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if args.check_config {
        match &args.config {
            Some(p) => println!(
                "# hvd settings (from {}, flags and environment)",
                p.display()
            ),
            None => println!("# hvd settings (no config file; flags and environment)"),
        }
        print!("{}", config::effective(&args));
        std::process::exit(0);
    }
    service::init_logging(&args.log_level, args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Long waits (shutdown, console followers) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
}
