//! Starting and stopping a coordinator: the gRPC server and, optionally, the legacy
//! port, sharing one store. Used by the standalone binary and embedded by the dispatcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::legacy::{self, LegacyLimits};
use crate::service::Service;
use crate::store::{Store, WaitLimits};

/// Where and how a coordinator serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// LAVA legacy protocol address; `None`: not served.
    pub legacy_listen: Option<SocketAddr>,
    /// The token dispatcher calls must carry.
    pub admin_token: String,
    pub wait: WaitLimits,
    pub legacy: LegacyLimits,
    /// Server certificate and key (PEM) for TLS; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// How often the server pings idle HTTP/2 connections, so a node whose machine
    /// vanished (no FIN) is noticed and its presence ends.
    pub keepalive: Duration,
    /// Where groups are kept so they survive a restart; `None`: in memory only.
    pub state_dir: Option<PathBuf>,
    /// After a restart, how long a node that was attached has to attach again before it
    /// is failed.
    pub reattach_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn new(listen: SocketAddr, admin_token: impl Into<String>) -> Self {
        Self {
            listen,
            legacy_listen: None,
            admin_token: admin_token.into(),
            wait: WaitLimits::default(),
            legacy: LegacyLimits::default(),
            tls: None,
            keepalive: Duration::from_secs(5),
            state_dir: None,
            reattach_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("state directory: {0}")]
    State(#[from] crate::journal::JournalError),
}

/// A running coordinator. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub legacy_addr: Option<SocketAddr>,
    store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    legacy: Option<JoinHandle<()>>,
}

impl Running {
    /// The store, for an embedding dispatcher's in-process calls.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Stops accepting, ends open calls and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        self.store.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(legacy) = self.legacy.take() {
            legacy.abort();
        }
        match tokio::time::timeout(Duration::from_secs(5), &mut self.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(%err, "gRPC server ended with an error"),
            Ok(Err(err)) => tracing::warn!(%err, "gRPC server task failed"),
            Err(_) => self.grpc.abort(),
        }
    }
}

/// Binds and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let mut store = match &config.state_dir {
        Some(dir) => Store::open(&config.admin_token, config.wait, dir)?,
        None => Store::new(&config.admin_token, config.wait),
    };
    store.legacy_bounds = config.legacy.groups;
    let store = Arc::new(store);
    store.await_presence(config.reattach_grace);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (legacy, legacy_addr) = match config.legacy_listen {
        None => (None, None),
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            let task = tokio::spawn(legacy::serve(listener, store.clone(), config.legacy));
            (Some(task), Some(bound))
        }
    };
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        let cert = std::fs::read(&tls.cert)
            .map_err(|e| StartError::Tls(format!("{}: {e}", tls.cert.display())))?;
        let key = std::fs::read(&tls.key)
            .map_err(|e| StartError::Tls(format!("{}: {e}", tls.key.display())))?;
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let service = CoordinatorServer::new(Service::new(store.clone()));
    let grpc = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    tracing::info!(%grpc_addr, ?legacy_addr, "coordinator serving");
    Ok(Running {
        grpc_addr,
        legacy_addr,
        store,
        stop: Some(stop),
        grpc,
        legacy,
    })
}
